//! The `queen` command line: the subcommand enum ([`args`]), each subcommand a type that
//! runs itself ([`command::RunCommand`]), and the client subcommands
//! (`hives`, `hive`, `watch`, `add`, `remove`, `place`, `release`, `renew`, `reservations`,
//! `policy check|status`, `migrate`, `fetch`, `models`, `downloads`, `preload`, `evict`, `cancel-fetch`, `rm-model`, and `top`, the live view), which talk to a running queen over the same gRPC API that
//! scheduler clients use.
//!
//! A new subcommand is one file — its clap `Args` type and its `RunCommand` impl — plus
//! one line in [`args::Command`]: the `commands!` macro that declares the enum also
//! writes its one dispatch.

pub mod args;
mod certs;
mod client;
pub mod command;
mod fetch_follow;
mod fetch_interrupt;
pub mod flags;
mod fleet;
mod json;
mod migrate;
mod model_removal;
mod models;
mod preload;
pub mod render;
mod render_processes;
mod render_topology;
mod renew;
mod scheduler;
mod serve;
pub mod top;

pub use args::{Cli, Command};
pub use command::RunCommand;
pub use json::{json, json_line};
pub use model_removal::ModelRemovalArgs;
pub use models::fetch_request;
pub use scheduler::PolicyCommand;

/// An error's chain on one line, each cause once (what `main` prints after "error: ").
pub fn error_chain(e: &anyhow::Error) -> String {
    rbee_shared::report::chain_text(e.chain())
}
