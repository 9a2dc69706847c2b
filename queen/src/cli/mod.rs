//! The `queen` command line: its arguments ([`args`]), and the client subcommands
//! (`hives`, `hive`, `watch`, `add`, `remove`, `place`, `release`, `reservations`,
//! `policy check|status`, `migrate`, `fetch`, `models`, `downloads`, `preload`, `evict`, `cancel-fetch`, `rm-model`, and `top`, the live view), which talk to a running queen over the same gRPC API that
//! scheduler clients use.

pub mod args;
mod client;
mod fetch_interrupt;
mod fleet;
mod json;
mod migrate;
mod model_removal;
mod models;
mod preload;
pub mod render;
mod render_processes;
mod scheduler;
pub mod top;

pub use args::{Cli, Command, PolicyCommand};
pub use fleet::{add, hive, hives, remove, watch};
pub use json::{json, json_line};
pub use migrate::migrate;
pub use model_removal::{ModelRemovalArgs, cancel_fetch, rm_model};
pub use models::{downloads, fetch, fetch_request, models};
pub use preload::{evict, preload};
/// An error's chain on one line, each cause once (what `main` prints after "error: ").
pub fn error_chain(e: &anyhow::Error) -> String {
    rbee_shared::report::chain_text(e.chain())
}

pub use scheduler::{place, policy_check, policy_status, release, renew, reservations};
