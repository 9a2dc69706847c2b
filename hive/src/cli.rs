//! The `hive` command line: the command tree the binary parses. Each command's flags are
//! in [`crate::config`] (serve, probe) or its own module ([`crate::swarm::args`]); this
//! file sits above them, so that the configuration never imports the commands built on it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ProbeArgs, ServeArgs};

/// rbee hive: knows this machine's GPUs, CPU and RAM and streams live telemetry to the queen.
#[derive(Debug, Parser)]
#[command(name = "hive", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The hive's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the rbee.v1.Hive gRPC API (Discover, MetricsStream), health and reflection.
    Serve(Box<ServeArgs>),
    /// Print this machine's capabilities and one live sample, then exit.
    Probe(ProbeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page (roff) of hive to stdout, or write every page (hive(1),
    /// hive-serve(1), ...) into --dir.
    Man(ManArgs),
    /// Serve many simulated hives from this process (the fleet simulator, for scale tests and benchmarks).
    Swarm(Box<crate::swarm::SwarmArgs>),
}

/// `hive man [--dir DIR]`.
#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write hive.1 and one page per subcommand (hive-serve.1, hive-probe.1, ...) into
    /// this directory instead of printing hive(1).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `hive completions SHELL`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_runs_one_worker_thread_unless_told_and_refuses_zero() {
        use clap::Parser;
        let serve = |args: &[&str]| Cli::try_parse_from([&["hive", "serve"], args].concat());
        match serve(&[]).unwrap().command {
            Command::Serve(a) => assert_eq!(a.worker_threads, 1),
            _ => unreachable!(),
        }
        match serve(&["--worker-threads", "4"]).unwrap().command {
            Command::Serve(a) => assert_eq!(a.worker_threads, 4),
            _ => unreachable!(),
        }
        let e = serve(&["--worker-threads", "0"]).unwrap_err().to_string();
        assert!(e.contains("--worker-threads") && e.contains("0"), "{e}");
    }

    #[test]
    fn download_allow_takes_networks_and_names_and_refuses_the_rest() {
        use clap::Parser;
        let serve = |args: &[&str]| Cli::try_parse_from([&["hive", "serve"], args].concat());
        match serve(&["--download-allow", "10.20.0.0/16,mirror.corp,127.0.0.1"]).unwrap().command {
            Command::Serve(a) => {
                let shown: Vec<String> = a.download_allow.iter().map(ToString::to_string).collect();
                assert_eq!(shown, ["10.20.0.0/16", "mirror.corp", "127.0.0.1/32"]);
            }
            _ => unreachable!(),
        }
        match serve(&[]).unwrap().command {
            Command::Serve(a) => assert!(a.download_allow.is_empty(), "public addresses only by default"),
            _ => unreachable!(),
        }
        let e = serve(&["--download-allow", "10.0.0.0/40"]).unwrap_err().to_string();
        assert!(e.contains("--download-allow"), "{e}");
    }

    #[test]
    fn models_are_served_to_peers_unless_turned_off() {
        use clap::Parser;
        let serve = |args: &[&str]| match Cli::try_parse_from([&["hive", "serve"], args].concat()) {
            Ok(Cli { command: Command::Serve(a) }) => Ok(a),
            Ok(_) => unreachable!(),
            Err(e) => Err(e.to_string()),
        };
        let a = serve(&[]).unwrap();
        assert!(a.serve_models);
        assert_eq!((a.peer_upload_limit, a.max_peer_uploads), (None, 4));
        assert!(serve(&["--serve-models"]).unwrap().serve_models);
        assert!(!serve(&["--serve-models=false"]).unwrap().serve_models);
        let a = serve(&["--peer-upload-limit", "100M", "--max-peer-uploads", "64"]).unwrap();
        assert_eq!((a.peer_upload_limit, a.max_peer_uploads), (Some(100_000_000), 64));
        for bad in [["--max-peer-uploads", "0"], ["--max-peer-uploads", "65"], ["--peer-upload-limit", "0"]] {
            let e = serve(&bad).unwrap_err();
            assert!(e.contains(bad[0]), "{e}");
        }
    }

    #[test]
    fn peer_tls_flags_go_together_and_a_bad_file_stops_the_start_naming_the_flag() {
        use clap::Parser;
        let serve = |args: &[&str]| Cli::try_parse_from([&["hive", "serve"], args].concat());
        let e = serve(&["--peer-tls-cert", "c.pem", "--peer-tls-key", "k.pem"]).unwrap_err().to_string();
        assert!(e.contains("--peer-ca"), "{e}");
        let e = serve(&["--peer-tls-key", "k.pem"]).unwrap_err().to_string();
        assert!(e.contains("--peer-tls-cert"), "{e}");
        // --peer-ca alone could dial no hive: they serve only callers with a certificate.
        let e = serve(&["--peer-ca", "ca.pem"]).unwrap_err().to_string();
        assert!(e.contains("--peer-tls-cert") && e.contains("--peer-tls-key"), "{e}");
        let full =
            ["--peer-ca", "/nonexistent/hive-ca.pem", "--peer-tls-cert", "c.pem", "--peer-tls-key", "k.pem"];
        let Command::Serve(args) = serve(&full).unwrap().command else { unreachable!() };
        let e = args.into_config().unwrap_err().to_string();
        assert!(e.contains("--peer-ca") && e.contains("/nonexistent/hive-ca.pem"), "{e}");
        let Command::Serve(args) = serve(&["--peer-allow", "10.0.0.0/8,192.168.7.0/24"]).unwrap().command
        else {
            unreachable!()
        };
        assert_eq!(args.peer_allow.len(), 2);
        let e = serve(&["--peer-allow", "gpu-2.lan"]).unwrap_err().to_string();
        assert!(e.contains("--peer-allow") && e.contains("not names"), "{e}");
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
