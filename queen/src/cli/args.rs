//! The queen's command line: the subcommand enum, one line per subcommand, and the
//! subcommands about the command line itself (`completions`, `man`). Each other
//! subcommand is a type in its own area's file (`fleet`, `scheduler`, `models`, ...)
//! with its flags and its [`RunCommand`] impl. Every flag also reads an environment
//! variable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use super::certs::CertsArgs;
use super::command::{RunCommand, commands};
use super::fleet::{AddArgs, HiveArgs, HivesArgs, RemoveArgs, WatchArgs};
use super::migrate::MigrateArgs;
use super::model_removal::{CancelFetchArgs, RmModelArgs};
use super::models::{DownloadsArgs, FetchArgs, ModelsArgs};
use super::preload::{EvictArgs, PreloadArgs};
use super::renew::RenewArgs;
use super::scheduler::{PlaceArgs, PolicyCommand, ReleaseArgs, ReservationsArgs};
use super::top::TopArgs;
pub use crate::config::ServeArgs;

/// rbee queen: discovers hives and holds a live fleet view (state, health, freshness).
#[derive(Debug, Parser)]
#[command(name = "queen", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

commands! {
/// The queen's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve rbee.v1.Fleet: discover hives, hold their streams, judge their health.
    Serve(Box<ServeArgs>),
    /// List hives as a table (--json for scripts).
    Hives(HivesArgs),
    /// Show one hive in detail, by hive id or address.
    Hive(HiveArgs),
    /// Print a line per fleet change until interrupted.
    Watch(WatchArgs),
    /// Ask the queen to manage a hive at an address.
    Add(AddArgs),
    /// Ask the queen to stop managing a hive (hive id or address).
    Remove(RemoveArgs),
    /// Place a model with the queen's policy and reserve its memory (exit code 3 when rejected).
    Place(PlaceArgs),
    /// Release a reservation.
    Release(ReleaseArgs),
    /// Extend an active reservation: it expires --ttl from now (at most 1h per call).
    Renew(RenewArgs),
    /// List reservations.
    Reservations(ReservationsArgs),
    /// Work with placement policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Write a development CA and certificates for a mutual-TLS fleet.
    Certs(CertsArgs),
    /// A live full-screen view of the fleet (follows WatchFleet; q quits).
    Top(TopArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page (roff) of queen to stdout, or write every page (queen(1),
    /// queen-serve(1), ...) into --dir.
    Man(ManArgs),
    /// Copy a stopped queen's state directory into etcd, to move it to --store etcd://.
    Migrate(MigrateArgs),
    /// Have a hive download a model and follow it with a progress bar (exit 0 when ready).
    Fetch(FetchArgs),
    /// List the models on every hive: state and size (--json for scripts).
    Models(ModelsArgs),
    /// List running (and just finished) model downloads on every hive (--json for scripts).
    Downloads(DownloadsArgs),
    /// Have hives read a model into RAM (page cache) and keep it warm within their budget.
    Preload(PreloadArgs),
    /// Have hives drop a model from RAM (page cache).
    Evict(EvictArgs),
    /// Cancel a model download on hives (the partial files are removed).
    CancelFetch(CancelFetchArgs),
    /// Delete a model and its files from hives (cancelling its download if one runs).
    RmModel(RmModelArgs),
}
}

/// `queen man [--dir DIR]`.
#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write queen.1 and one page per subcommand (queen-serve.1, queen-policy-check.1, ...)
    /// into this directory instead of printing queen(1).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `queen completions SHELL`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

impl RunCommand for CompletionsArgs {
    async fn run(self) -> anyhow::Result<ExitCode> {
        rbee_shared::cli_docs::completions(Cli::command(), "queen", self.shell)?;
        Ok(ExitCode::SUCCESS)
    }
}

impl RunCommand for ManArgs {
    async fn run(self) -> anyhow::Result<ExitCode> {
        rbee_shared::cli_docs::man(Cli::command(), self.dir.as_deref())?;
        Ok(ExitCode::SUCCESS)
    }
}
