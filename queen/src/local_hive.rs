//! The embedded hive (`queen serve --local-hive`): a hive run in this process on a
//! loopback port and managed like any other. It is the only part of the queen that links
//! the hive crate, and only with the `local-hive` cargo feature (on by default). Built
//! without it, [`LocalHiveConfig`] has no values and `--local-hive` is refused with
//! [`UNAVAILABLE`]; everything else of the queen is the same.
//!
//! Part of the wiring, beside [`crate::run`]: [`configure`] is called by `config`,
//! [`start`] by the server.

#[cfg(not(feature = "local-hive"))]
pub use absent::{LocalHiveConfig, configure, start};
#[cfg(feature = "local-hive")]
pub use embedded::{LocalHiveConfig, configure, start};

/// Why `--local-hive` is refused by a queen built without the `local-hive` feature.
pub const UNAVAILABLE: &str = "--local-hive (or local_hive in the config file): this queen was built without \
     the `local-hive` cargo feature, so it cannot run a hive in-process. Rebuild with it (it is on by \
     default: drop --no-default-features), or run `hive serve` on this machine and manage it with --hive";

/// Reservations kept for the local hive follow it to its new address: it listens on a new
/// port at every start, so those with its hive id on an address no other kept or
/// configured hive has are moved to `address`. Returns how many moved.
#[cfg_attr(not(feature = "local-hive"), allow(dead_code))]
fn follow(kept: &mut crate::store::Restored, configured: &[String], hive_id: &str, address: &str) -> usize {
    let others: Vec<&str> =
        kept.hives.iter().map(|h| h.address.as_str()).chain(configured.iter().map(String::as_str)).collect();
    let mut moved = 0;
    for r in &mut kept.reservations {
        if r.hive_id == hive_id && r.address != address && !others.contains(&r.address.as_str()) {
            r.address = address.to_owned();
            moved += 1;
        }
    }
    moved
}

#[cfg(feature = "local-hive")]
mod embedded {
    use std::sync::Arc;

    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    use crate::QueenError;
    use crate::fleet::{Fleet, Origin};
    use crate::store::Restored;

    /// How the embedded hive runs: the hive's own config.
    pub type LocalHiveConfig = rbee_hive::HiveConfig;

    /// The embedded hive's config when `wanted` (`demo`: the hive's built-in simulated
    /// GPUs instead of NVML). It takes its download rule and models directory where
    /// `hive serve` would (`HIVE_DOWNLOAD_ALLOW`, `HIVE_MODELS_DIR`); a bad
    /// `HIVE_DOWNLOAD_ALLOW` is refused even when no local hive is wanted.
    pub fn configure(wanted: bool, demo: bool) -> Result<Option<LocalHiveConfig>, QueenError> {
        let local_allow = match std::env::var("HIVE_DOWNLOAD_ALLOW") {
            Ok(list) => rbee_hive::models::egress::parse_allow_list(&list)
                .map_err(|e| QueenError::Config(format!("HIVE_DOWNLOAD_ALLOW: {e}")))?,
            Err(std::env::VarError::NotPresent) => Vec::new(),
            Err(e) => return Err(QueenError::Config(format!("HIVE_DOWNLOAD_ALLOW: {e}"))),
        };
        if !wanted {
            return Ok(None);
        }
        rbee_hive::models::egress::log_allowed(&local_allow);
        let gpu = if demo {
            let scenario =
                rbee_hive::source::simulated::Scenario::parse(rbee_hive::source::simulated::DEMO_SCENARIO)
                    .expect("the built-in demo scenario is valid");
            rbee_hive::monitor::GpuChoice::Simulated(scenario)
        } else {
            rbee_hive::monitor::GpuChoice::Nvml { lib: None }
        };
        let mut hive = rbee_hive::HiveConfig::new(hostname_id(), gpu);
        let dir = std::env::var_os("HIVE_MODELS_DIR").filter(|d| !d.is_empty()).map(std::path::PathBuf::from);
        hive.models = Some(rbee_hive::models::ModelsConfig {
            optional: dir.is_none(),
            egress: rbee_hive::models::egress::EgressRule::new(local_allow),
            ..rbee_hive::models::ModelsConfig::new(dir.unwrap_or_else(rbee_hive::models::default_models_dir))
        });
        Ok(Some(hive))
    }

    /// The local hive's id: `local-<hostname>` (or `local`).
    fn hostname_id() -> String {
        use rbee_shared::hostname::{local_hostname, normalize_hostname};
        let host = normalize_hostname(&local_hostname(), 48);
        if host.is_empty() { "local".into() } else { format!("local-{host}") }
    }

    /// Starts the hive in this process on a loopback port, adds it to the fleet, and
    /// moves the reservations kept for it to its new address (`configured`: the hives
    /// configured to be managed). Returns its task, which ends when `cancel` fires.
    pub async fn start(
        fleet: &Arc<Fleet>,
        config: LocalHiveConfig,
        kept: &mut Restored,
        configured: &[String],
        cancel: CancellationToken,
    ) -> Result<JoinHandle<()>, QueenError> {
        let hive_id = config.hive_id.clone();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| QueenError::Config(format!("cannot bind the local hive: {e}")))?;
        let address =
            format!("http://{}", listener.local_addr().map_err(|e| QueenError::Config(e.to_string()))?);
        let task = tokio::spawn(async move {
            if let Err(e) = rbee_hive::run(config, listener, cancel.cancelled_owned()).await {
                tracing::error!(error = %e, "the local hive stopped with an error");
            }
        });
        let (hive, _) = fleet.add(&address, Origin::Local)?;
        tracing::info!(%address, "started a local hive in this process");
        let moved = super::follow(kept, configured, &hive_id, &hive.address);
        if moved > 0 {
            tracing::info!(reservations = moved, address = %hive.address,
                "kept reservations follow the local hive to its new address");
        }
        Ok(task)
    }
}

#[cfg(not(feature = "local-hive"))]
mod absent {
    use std::sync::Arc;

    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    use crate::QueenError;
    use crate::fleet::Fleet;
    use crate::store::Restored;

    /// Built without the `local-hive` feature there is no embedded hive: no value exists.
    #[derive(Debug, Clone)]
    pub enum LocalHiveConfig {}

    /// Refuses a wanted local hive with [`super::UNAVAILABLE`].
    pub fn configure(wanted: bool, _demo: bool) -> Result<Option<LocalHiveConfig>, QueenError> {
        if wanted { Err(QueenError::Config(super::UNAVAILABLE.into())) } else { Ok(None) }
    }

    /// Never called: no [`LocalHiveConfig`] exists.
    pub async fn start(
        _fleet: &Arc<Fleet>,
        config: LocalHiveConfig,
        _kept: &mut Restored,
        _configured: &[String],
        _cancel: CancellationToken,
    ) -> Result<JoinHandle<()>, QueenError> {
        match config {}
    }
}
