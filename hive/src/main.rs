//! The `hive` binary: parse the command line, set up logging, bind, run. Output goes
//! through `rbee_shared::stdout`: a reader that closed the pipe (`hive probe | head -1`)
//! ends the command quietly with exit 0.

use anyhow::Context;
use clap::Parser;
use rbee_hive::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `serve` is a 1 Hz agent: its async work runs on `--worker-threads` threads (one by
    // default: the main thread, with no work-stealing scheduler to wake), not one per
    // core. Blocking work has its own pool either way. The fleet simulator serves
    // thousands of hives and keeps one worker per core.
    let runtime = match &cli.command {
        Command::Serve(args) if args.worker_threads == 1 => tokio::runtime::Builder::new_current_thread(),
        Command::Serve(args) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(args.worker_threads);
            b
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    let result = runtime.context("cannot start the async runtime").and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if rbee_shared::stdout::is_broken_pipe(e.chain()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error chain only: an ordinary error is no crash, whatever RUST_BACKTRACE says.
            eprintln!("error: {}", rbee_shared::report::chain_text(e.chain()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    rbee_shared::telemetry::init_tracing("info");
    match cli.command {
        Command::Serve(args) => {
            let (listen, config) = args.into_config()?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            rbee_hive::run(config, listener, rbee_shared::shutdown::shutdown_signal()).await?;
        }
        Command::Completions(args) => {
            use clap::CommandFactory;
            rbee_shared::cli_docs::completions(Cli::command(), "hive", args.shell)?;
        }
        Command::Man(args) => {
            use clap::CommandFactory;
            rbee_shared::cli_docs::man(Cli::command(), args.dir.as_deref())?;
        }
        Command::Swarm(args) => {
            rbee_hive::swarm::args::run(*args, rbee_shared::shutdown::shutdown_signal()).await?;
        }
        Command::Probe(args) => {
            let (gpu, max) = (args.gpu.choice()?, args.gpu.max_gpu_processes);
            let report = tokio::task::spawn_blocking(move || rbee_hive::probe::probe(gpu, max)).await??;
            if args.json {
                rbee_shared::outln!("{}", rbee_hive::probe::to_json(&report)?)?;
            } else {
                rbee_shared::out!("{}", rbee_hive::probe::render(&report))?;
            }
        }
    }
    Ok(())
}
