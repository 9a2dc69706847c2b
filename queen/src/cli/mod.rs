//! The `queen` command line: its arguments ([`args`]), and the client subcommands
//! (`hives`, `hive`, `watch`, `add`, `remove`, `place`, `release`, `reservations`,
//! `policy check|status`, `fetch`, `models`, `downloads`, `preload`, `evict`), which talk to a running queen over the same gRPC API that
//! scheduler clients use.

pub mod args;
mod client;
mod fleet;
mod models;
mod preload;
pub mod render;
mod scheduler;

pub use args::{Cli, Command, PolicyCommand};
pub use fleet::{add, hive, hives, remove, watch};
pub use models::{downloads, fetch, fetch_request, models};
pub use preload::{evict, preload};
pub use scheduler::{place, policy_check, policy_status, release, reservations};
