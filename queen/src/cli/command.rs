//! What a subcommand is: a clap `Args` type that runs itself ([`RunCommand`]). The
//! command enum names each one on one line (`commands!`), which also writes its one
//! dispatch, so a new subcommand is its file plus that line.

use std::future::Future;
use std::process::ExitCode;

/// Exit status for "asked and answered no" (a rejected placement, a failing policy check).
pub const ANSWERED_NO: u8 = 3;

/// A subcommand: its flags (the clap `Args` type that implements this) and what it does.
pub trait RunCommand {
    /// Runs it; the process's exit status when it did not fail.
    fn run(self) -> impl Future<Output = anyhow::Result<ExitCode>>;
}

impl<T: RunCommand> RunCommand for Box<T> {
    fn run(self) -> impl Future<Output = anyhow::Result<ExitCode>> {
        (*self).run()
    }
}

/// Success for yes, [`ANSWERED_NO`] for no.
pub fn yes_or_no(yes: bool) -> ExitCode {
    if yes { ExitCode::SUCCESS } else { ExitCode::from(ANSWERED_NO) }
}

/// Success, for a command whose only answer is what it printed.
pub fn done(result: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    result.map(|()| ExitCode::SUCCESS)
}

/// Declares a subcommand enum, one `Variant(Type)` line per subcommand (doc comments
/// and clap attributes pass through), and its [`RunCommand`] impl that runs the
/// variant's type.
macro_rules! commands {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident($ty:ty), )*
        }
    ) => {
        $(#[$meta])*
        pub enum $name {
            $( $(#[$vmeta])* $variant($ty), )*
        }

        impl $crate::cli::command::RunCommand for $name {
            async fn run(self) -> anyhow::Result<std::process::ExitCode> {
                match self {
                    $( Self::$variant(command) => $crate::cli::command::RunCommand::run(command).await, )*
                }
            }
        }
    };
}
pub(crate) use commands;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};

    use clap::{Args, Parser, Subcommand};

    use super::*;

    /// Which test command ran last.
    static RAN: AtomicU8 = AtomicU8::new(0);

    /// A command that records that it ran.
    #[derive(Debug, Args)]
    pub struct First {
        /// A flag.
        #[arg(long)]
        no: bool,
    }

    impl RunCommand for First {
        async fn run(self) -> anyhow::Result<ExitCode> {
            RAN.store(1, Ordering::SeqCst);
            Ok(yes_or_no(!self.no))
        }
    }

    /// Another.
    #[derive(Debug, Args)]
    pub struct Second {}

    impl RunCommand for Second {
        async fn run(self) -> anyhow::Result<ExitCode> {
            RAN.store(2, Ordering::SeqCst);
            Ok(ExitCode::SUCCESS)
        }
    }

    commands! {
    /// Two commands, one line each.
    #[derive(Debug, Subcommand)]
    pub enum TwoCommands {
        /// The first.
        First(First),
        /// The second, boxed.
        Second(Box<Second>),
    }
    }

    /// The command line of the test commands.
    #[derive(Debug, Parser)]
    struct TestCli {
        /// Which.
        #[command(subcommand)]
        command: TwoCommands,
    }

    #[tokio::test]
    async fn one_line_per_command_parses_and_runs_that_command() {
        let cli = TestCli::try_parse_from(["t", "second"]).unwrap();
        cli.command.run().await.unwrap();
        assert_eq!(RAN.load(Ordering::SeqCst), 2);
        let cli = TestCli::try_parse_from(["t", "first", "--no"]).unwrap();
        let code = cli.command.run().await.unwrap();
        assert_eq!(RAN.load(Ordering::SeqCst), 1);
        assert_eq!(format!("{code:?}"), format!("{:?}", ExitCode::from(ANSWERED_NO)));
    }
}
