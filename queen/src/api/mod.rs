//! The API edge: the `rbee.v1.Fleet` and `rbee.v1.Scheduler` gRPC services, the
//! `WatchFleet` stream, bearer-token auth, the leader gate for writes, and the one place where the queen's domain
//! types become wire types ([`convert`]), wire requests become the scheduler's
//! (`place_request.rs`), and the queen's error becomes a gRPC status in one mapping
//! ([`status`]). Handlers validate, convert, call the layer below and convert back.

pub mod auth;
pub mod convert;
pub mod fanout;
mod fetch_call;
mod fleet;
pub mod journal;
pub mod leader;
pub mod model_removal;
pub mod models;
pub mod peers;
mod place_request;
pub mod preload;
mod scheduler;
pub mod status;
mod targets;
mod watch;

pub use fleet::FleetService;
pub use scheduler::SchedulerService;
pub use watch::Watchers;
