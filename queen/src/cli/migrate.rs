//! `queen migrate`: copy what a stopped queen kept in its state directory into etcd,
//! so that queens started with `--store etcd://...` continue with its reservations,
//! run-time hives and policy fact.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Args;

use super::command::{RunCommand, done};
use crate::store::{EtcdSettings, EtcdStore, StateStore};

/// `queen migrate`.
pub async fn migrate(args: MigrateArgs) -> Result<()> {
    let tls = args.etcd_tls.load()?;
    let endpoints = EtcdSettings::parse_endpoints(&args.store, tls.is_some()).map_err(|e| anyhow!(e))?;
    if !args.etcd_prefix.ends_with('/') {
        return Err(anyhow!("--etcd-prefix must end with '/'"));
    }
    let file = args.state_dir.join(crate::store::STATE_FILE);
    if !file.is_file() {
        return Err(anyhow!(
            "no state store at {}: give the --state-dir of the stopped queen",
            file.display()
        ));
    }
    let kept = StateStore::open(&args.state_dir).and_then(|s| s.load()).map_err(|e| match e {
        crate::store::StoreError::Open { path, reason } | crate::store::StoreError::Io { path, reason } => anyhow!(
            "the state store {} cannot be read: {reason}; queen migrate copies only a sound store (restore a \
             backup first)",
            path.display()
        ),
        e => anyhow!("reading the state directory {}: {e}", args.state_dir.display()),
    })?;
    let settings = EtcdSettings {
        endpoints,
        prefix: args.etcd_prefix.clone(),
        advertise: String::new(),
        lease_ttl: Duration::from_secs(5),
        tls,
    };
    let etcd = EtcdStore::connect(settings).await?;
    let copied = etcd.import(&kept).await.context("copying into etcd")?;
    rbee_shared::outln!(
        "copied {copied} reservations, {} hives and {} policy fact from {} to {} under {}",
        kept.hives.len(),
        usize::from(kept.policy.is_some()),
        args.state_dir.display(),
        args.store,
        args.etcd_prefix
    )?;
    Ok(())
}

/// `queen migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The state directory to copy (its queen must be stopped).
    #[arg(long, env = "QUEEN_STATE_DIR", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Where to copy it: etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "QUEEN_STORE", value_name = "URL")]
    pub store: String,
    /// The etcd key prefix the queens will use.
    #[arg(long, env = "QUEEN_ETCD_PREFIX", value_name = "PREFIX", default_value = "/rbee/queen/")]
    pub etcd_prefix: String,
    /// TLS to etcd.
    #[command(flatten)]
    pub etcd_tls: crate::config::EtcdTlsArgs,
}

impl RunCommand for MigrateArgs {
    async fn run(self) -> Result<ExitCode> {
        done(migrate(self).await)
    }
}
