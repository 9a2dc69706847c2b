//! rbee queen: discovers hives and holds the live fleet view — which hives exist, what
//! they have, how loaded and healthy they are, and how fresh that knowledge is — and
//! places work on it.
//!
//! The layers, lowest first. A layer imports only the ones above it in this list
//! (and `rbee_shared`); [`run`] wires them together.
//!
//! - [`error`]: the crate's one error type. It wraps the typed errors of the layers
//!   below the API (and names nothing else of theirs); its one mapping to a gRPC status
//!   is in [`api::status`].
//! - [`fleet`]: the registry of hives and their published views, states, health
//!   levels, settings and change events. Knows nothing of networks.
//! - [`link`]: the per-hive pipeline — dial, `Discover`, hold the `MetricsStream`,
//!   ingest, window, health — which keeps each hive's view in the fleet current.
//! - [`admission`]: which addresses the queen will dial, and how often hives may announce.
//! - [`store`]: the hard state kept durably (reservations, run-time hives, policy).
//! - [`scheduler`]: placement with Rhai policies, and the reservation books.
//! - [`metrics`]: Prometheus `/metrics`, gathered at scrape time from the fleet and the
//!   scheduler (its `recorder` is a leaf the scheduler records placements into).
//! - [`ha`]: with etcd, the election of one leading queen; loads and mirrors the books.
//! - [`api`]: the gRPC services (Fleet, Scheduler, WatchFleet), auth, wire conversion and
//!   the error-to-status mapping.
//! - [`config`]: `queen serve`'s flags and config file, merged into a [`QueenConfig`].
//! - [`cli`]: the command line and the client subcommands.
//!
//! Beside [`run`] in the wiring: [`local_hive`], the embedded hive (`--local-hive`), the
//! only code that links the hive crate, behind the `local-hive` cargo feature (on by
//! default; `cargo build -p rbee-queen --no-default-features` builds a queen without it).
//!
//! No two files import each other, directly or through others (`tests/no_import_cycles.rs`
//! at the workspace root checks it for every crate and states the rule precisely).

pub mod admission;
pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod fleet;
pub mod ha;
pub mod link;
pub mod local_hive;
pub mod metrics;
pub mod scheduler;
mod server;
pub mod store;

pub use config::QueenConfig;
pub use error::QueenError;
pub use server::{LINKS_NICE, LINKS_THREAD_NAME, run};
