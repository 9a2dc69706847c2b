//! The `queen` binary: parse the command line, set up logging, then serve or act as a client.
//!
//! An error ends the process with its chain on one line (`error: outer: cause`) and exit
//! status 1, never a backtrace: `RUST_BACKTRACE` is for bugs, and these are not. Output
//! goes through `rbee_shared::stdout`: a reader that closed the pipe (`queen watch | head -1`)
//! ends the command quietly with exit 0.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rbee_queen::cli::{Cli, Command, PolicyCommand};

/// Exit status for "asked and answered no" (a rejected placement, a failing policy check).
const ANSWERED_NO: u8 = 3;

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
    let yes_or_no = |yes: bool| if yes { ExitCode::SUCCESS } else { ExitCode::from(ANSWERED_NO) };
    match cli.command {
        Command::Serve(args) => {
            let (listen, config) = args.into_config()?;
            // redb can crash the process on some damaged files: a child reads it first.
            if let (Some(dir), None) = (&config.state_dir, &config.etcd) {
                let exe = std::env::current_exe().context("cannot find the queen binary")?;
                rbee_queen::store::check_in_child(dir, &exe, config.reset_state)?;
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            rbee_queen::run(config, listener, rbee_shared::shutdown::shutdown_signal()).await?;
        }
        Command::Hives(args) => rbee_queen::cli::hives(args).await?,
        Command::Hive(args) => rbee_queen::cli::hive(args).await?,
        Command::Watch(args) => rbee_queen::cli::watch(args).await?,
        Command::Add(args) => rbee_queen::cli::add(args).await?,
        Command::Remove(args) => rbee_queen::cli::remove(args).await?,
        Command::Place(args) => return Ok(yes_or_no(rbee_queen::cli::place(args).await?)),
        Command::Release(args) => rbee_queen::cli::release(args).await?,
        Command::Renew(args) => rbee_queen::cli::renew(args).await?,
        Command::Reservations(args) => rbee_queen::cli::reservations(args).await?,
        Command::Policy(PolicyCommand::Check(args)) => {
            return Ok(yes_or_no(rbee_queen::cli::policy_check(args).await?));
        }
        Command::Policy(PolicyCommand::Status(args)) => rbee_queen::cli::policy_status(args).await?,
        Command::Top(args) => rbee_queen::cli::top::run(args).await?,
        Command::Completions(args) => {
            use clap::CommandFactory;
            rbee_shared::cli_docs::completions(Cli::command(), "queen", args.shell)?;
        }
        Command::Man(args) => {
            use clap::CommandFactory;
            rbee_shared::cli_docs::man(Cli::command(), args.dir.as_deref())?;
        }
        Command::Migrate(args) => rbee_queen::cli::migrate(args).await?,
        Command::Fetch(args) => return rbee_queen::cli::fetch(args).await,
        Command::Models(args) => rbee_queen::cli::models(args).await?,
        Command::Downloads(args) => rbee_queen::cli::downloads(args).await?,
        Command::Preload(args) => rbee_queen::cli::preload(args).await?,
        Command::Evict(args) => rbee_queen::cli::evict(args).await?,
        Command::CancelFetch(args) => rbee_queen::cli::cancel_fetch(args).await?,
        Command::RmModel(args) => rbee_queen::cli::rm_model(args).await?,
        Command::Certs(args) => {
            for file in rbee_shared::certs::generate(&args.out, &args.queen_names, &args.hives)
                .map_err(anyhow::Error::msg)?
            {
                rbee_shared::outln!("wrote {}", file.display())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
