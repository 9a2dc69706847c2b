//! `queen certs`: write a development CA and certificates for a mutual-TLS fleet.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::command::RunCommand;

/// `queen certs`.
#[derive(Debug, Clone, Args)]
pub struct CertsArgs {
    /// Directory to write into.
    #[arg(long, default_value = "certs")]
    pub out: PathBuf,
    /// Names the queen's certificate is valid for (DNS names or IPs); repeatable.
    #[arg(long = "queen-name", default_values = ["localhost", "127.0.0.1"])]
    pub queen_names: Vec<String>,
    /// A hive's name (DNS name or IP the queen dials); repeatable.
    #[arg(long = "hive-name", default_values = ["localhost"])]
    pub hives: Vec<String>,
}

impl RunCommand for CertsArgs {
    async fn run(self) -> Result<ExitCode> {
        for file in rbee_shared::certs::generate(&self.out, &self.queen_names, &self.hives)
            .map_err(anyhow::Error::msg)?
        {
            rbee_shared::outln!("wrote {}", file.display())?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
