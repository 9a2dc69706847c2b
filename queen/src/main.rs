//! The `queen` binary: parse the command line, set up logging, then serve or act as a client.
//!
//! An error ends the process with its chain on one line (`error: outer: cause`) and exit
//! status 1, never a backtrace: `RUST_BACKTRACE` is for bugs, and these are not. Output
//! goes through `rbee_shared::stdout`: a reader that closed the pipe (`queen watch | head -1`)
//! ends the command quietly with exit 0.

use std::process::ExitCode;

use clap::Parser;
use rbee_queen::cli::{Cli, Command, RunCommand};

#[tokio::main]
async fn main() -> ExitCode {
    // A child started to check a state directory before the queen opens it.
    if let Some(dir) = std::env::var_os(rbee_queen::store::CHECK_STATE_ENV) {
        return match rbee_queen::store::check(std::path::Path::new(&dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) if rbee_shared::stdout::is_broken_pipe(e.chain()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", rbee_shared::report::chain_text(e.chain()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let serving = matches!(cli.command, Command::Serve(_));
    rbee_shared::telemetry::init_tracing(if serving { "info" } else { "warn" });
    cli.command.run().await
}
