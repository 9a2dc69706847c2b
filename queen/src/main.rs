//! The `queen` binary: parse the command line, set up logging, then serve or act as a client.
//!
//! An error ends the process with its chain on one line (`error: outer: cause`) and exit
//! status 1, never a backtrace: `RUST_BACKTRACE` is for bugs, and these are not.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rbee_queen::cli::{Cli, Command, PolicyCommand};

/// Exit status for "asked and answered no" (a rejected placement, a failing policy check).
const ANSWERED_NO: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
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
        Command::Reservations(args) => rbee_queen::cli::reservations(args).await?,
        Command::Policy(PolicyCommand::Check(args)) => {
            return Ok(yes_or_no(rbee_queen::cli::policy_check(args).await?));
        }
        Command::Policy(PolicyCommand::Status(queen)) => rbee_queen::cli::policy_status(queen).await?,
        Command::Top(args) => rbee_queen::cli::top::run(args).await?,
        Command::Completions(args) => {
            use clap::CommandFactory;
            clap_complete::generate(args.shell, &mut Cli::command(), "queen", &mut std::io::stdout());
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
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
                println!("wrote {}", file.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
