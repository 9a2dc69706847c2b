//! `queen serve`: check the state directory, bind, and run the queen until a signal.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::command::RunCommand;
use crate::config::ServeArgs;

impl RunCommand for ServeArgs {
    async fn run(self) -> Result<ExitCode> {
        let (listen, config) = self.into_config()?;
        // redb can crash the process on some damaged files: a child reads it first.
        if let (Some(dir), None) = (&config.state_dir, &config.etcd) {
            let exe = std::env::current_exe().context("cannot find the queen binary")?;
            crate::store::check_in_child(dir, &exe, config.reset_state)?;
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        crate::run(config, listener, rbee_shared::shutdown::shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    }
}
