//! `queen serve`: its flags, merged with the config file and the defaults into one
//! validated [`QueenConfig`]. Precedence: flag or env var, then the config file, then
//! the built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ipnet::IpNet;
use rbee_shared::SampleInterval;

use super::{FileConfig, QueenConfig};
use crate::QueenError;
use crate::admission::{AdmissionSettings, AllowList};
use crate::fleet::FleetSettings;
use crate::fleet::address::normalize_address;
use crate::link::{HiveTls, LinkSettings};
use crate::scheduler::SchedulerSettings;

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7833";

/// `queen serve` flags. Unset flags fall back to the config file, then to defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (listen, hives, allow-list, timings, [health] thresholds).
    #[arg(long, env = "QUEEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7833].
    #[arg(long, env = "QUEEN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// A hive to manage, e.g. http://10.0.0.5:7835; repeatable (env: comma-separated).
    #[arg(long = "hive", env = "QUEEN_HIVES", value_name = "ADDR", value_delimiter = ',')]
    pub hives: Vec<String>,
    /// Also start a hive in this process (this machine's GPUs, or --local-hive-demo) and manage it.
    /// It keeps models in HIVE_MODELS_DIR and downloads from what HIVE_DOWNLOAD_ALLOW opens, as
    /// `hive serve` does.
    #[arg(long, env = "QUEEN_LOCAL_HIVE")]
    pub local_hive: bool,
    /// With --local-hive: use the hive's built-in simulated GPUs instead of NVML.
    #[arg(long, env = "QUEEN_LOCAL_HIVE_DEMO", requires = "local_hive")]
    pub local_hive_demo: bool,
    /// Networks that hives added with `queen add` (AddHive) or announced may be in (CIDR);
    /// repeatable [default: 127.0.0.0/8, ::1/128]. Hives from --hive and the config file are exempt.
    #[arg(long = "allow", env = "QUEEN_ALLOW", value_name = "CIDR", value_delimiter = ',')]
    pub allow: Vec<IpNet>,
    /// Sample interval asked of every hive [default: 1s; 100ms..=60s].
    #[arg(long, env = "QUEEN_SAMPLE_INTERVAL")]
    pub sample_interval: Option<SampleInterval>,
    /// A hive silent for this many sample intervals is stale [default: 3].
    #[arg(long, env = "QUEEN_STALE_AFTER_MISSED")]
    pub stale_after_missed: Option<u32>,
    /// A hive silent this long is lost and redialed [default: 10s].
    #[arg(long, env = "QUEEN_LOST_TIMEOUT", value_parser = humantime::parse_duration)]
    pub lost_timeout: Option<Duration>,
    /// HTTP/2 keepalive ping interval and timeout, to find half-open connections [default: 5s].
    #[arg(long, env = "QUEEN_KEEPALIVE", value_parser = humantime::parse_duration)]
    pub keepalive: Option<Duration>,
    /// Longest reconnect backoff [default: 30s].
    #[arg(long, env = "QUEEN_BACKOFF_MAX", value_parser = humantime::parse_duration)]
    pub backoff_max: Option<Duration>,
    /// Placement policy (Rhai), watched for edits [default: the built-in least-loaded policy].
    #[arg(long, env = "QUEEN_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// When the policy fails (error, limit, time budget), answer with the built-in default instead of an error.
    #[arg(long, env = "QUEEN_POLICY_FALLBACK")]
    pub policy_fallback: bool,
    /// Wall-time budget of one policy call [default: 50ms].
    #[arg(long, env = "QUEEN_POLICY_BUDGET", value_parser = humantime::parse_duration)]
    pub policy_budget: Option<Duration>,
    /// Drop reservations on a hive lost for longer than this [default: 60s].
    #[arg(long, env = "QUEEN_RESERVATION_LOST_GRACE", value_parser = humantime::parse_duration)]
    pub reservation_lost_grace: Option<Duration>,
    /// Rank placements exactly while the fleet has at most N hives; above, the ranking natives
    /// score the best-placed max(100, 5%) hives that fit and may miss the global best
    /// (docs/scheduling.md). Set it above the fleet's size for exact ranking [default: 1000].
    #[arg(long, env = "QUEEN_PLACE_EXACT_UP_TO", value_name = "N")]
    pub place_exact_up_to: Option<usize>,
    /// Most WatchFleet streams open at once; more get RESOURCE_EXHAUSTED [default: 128].
    #[arg(long, env = "QUEEN_MAX_WATCHERS", value_name = "N")]
    pub max_watchers: Option<usize>,
    /// Most reservations held per hive; Place answers RESOURCE_EXHAUSTED past it [default: 1024].
    #[arg(long, env = "QUEEN_MAX_RESERVATIONS_PER_HIVE", value_name = "N")]
    pub max_reservations_per_hive: Option<usize>,
    /// Most reservations held in all; Place answers RESOURCE_EXHAUSTED past it [default: 65536].
    #[arg(long, env = "QUEEN_MAX_RESERVATIONS", value_name = "N")]
    pub max_reservations: Option<usize>,
    /// TLS certificate (PEM) the queen serves with; also its client identity towards hives.
    #[arg(long, env = "QUEEN_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "QUEEN_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA that signs hive certificates: hives are dialed over mutual TLS (https://).
    #[arg(long, env = "QUEEN_HIVE_CA", value_name = "FILE", requires = "tls_cert")]
    pub hive_ca: Option<PathBuf>,
    /// File with the read token (or set QUEEN_READ_TOKEN to the token itself).
    #[arg(long, env = "QUEEN_READ_TOKEN_FILE", value_name = "FILE")]
    pub read_token_file: Option<PathBuf>,
    /// File with the write token (or set QUEEN_WRITE_TOKEN to the token itself).
    #[arg(long, env = "QUEEN_WRITE_TOKEN_FILE", value_name = "FILE")]
    pub write_token_file: Option<PathBuf>,
    /// Allow a non-loopback listen address without TLS and tokens. Logs a warning at every start.
    #[arg(long, env = "QUEEN_INSECURE")]
    pub insecure: bool,
    /// Directory of the state store (reservations, run-time hives, the accepted policy)
    /// [default: $XDG_STATE_HOME/rbee/queen, else ~/.local/state/rbee/queen].
    #[arg(long, env = "QUEEN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// If the state store is broken, move it aside (kept as queen.redb.broken-TIME) and start with an empty one; a sound store is kept.
    #[arg(long, env = "QUEEN_RESET_STATE")]
    pub reset_state: bool,
    /// Serve Prometheus metrics of the fleet at http://ADDR/metrics [default: 127.0.0.1:7834; when the
    /// default port is taken the queen runs without metrics and says so]. Needs the read or write token
    /// when tokens are set; beyond loopback tokens are required (or --insecure).
    #[arg(long, env = "QUEEN_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Do not serve /metrics at all.
    #[arg(long, env = "QUEEN_NO_METRICS", conflicts_with = "metrics_listen")]
    pub no_metrics: bool,
    /// Keep the state in etcd v3 instead of the state directory, shared by several queens of which one leads: etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "QUEEN_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// With --store etcd://: the leader lease's TTL (whole seconds, at least 2); a follower leads within TTL + 1 s of the leader's death [default: 5s].
    #[arg(long, env = "QUEEN_LEADER_TTL", value_parser = humantime::parse_duration)]
    pub leader_ttl: Option<Duration>,
    /// With --store etcd://: the URL clients reach this queen at; followers name it to writers [default: http(s)://LISTEN, with this host's name when listening on all addresses].
    #[arg(long, env = "QUEEN_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,
    /// With --store etcd://: the etcd key prefix of this group of queens [default: /rbee/queen/].
    #[arg(long, env = "QUEEN_ETCD_PREFIX", value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
    /// TLS to etcd.
    #[command(flatten)]
    pub etcd_tls: super::EtcdTlsArgs,
}

/// The default metrics address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:7834";

/// The default state directory: `$XDG_STATE_HOME/rbee/queen`, else
/// `$HOME/.local/state/rbee/queen`; `None` when neither variable is set.
pub fn default_state_dir() -> Option<PathBuf> {
    let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty()).map(PathBuf::from);
    nonempty("XDG_STATE_HOME")
        .or_else(|| nonempty("HOME").map(|h| h.join(".local/state")))
        .map(|base| base.join("rbee/queen"))
}

impl ServeArgs {
    /// Merges flags, the config file and defaults, and validates. Returns the listen
    /// address and the configuration.
    pub fn into_config(self) -> Result<(SocketAddr, QueenConfig), QueenError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let d = FleetSettings::default();
        let fleet = FleetSettings {
            sample_interval: self
                .sample_interval
                .map(Duration::from)
                .or(file.sample_interval)
                .unwrap_or(d.sample_interval),
            stale_after_missed: self
                .stale_after_missed
                .or(file.stale_after_missed)
                .unwrap_or(d.stale_after_missed),
            lost_timeout: self.lost_timeout.or(file.lost_timeout).unwrap_or(d.lost_timeout),
            history: file.history.unwrap_or(d.history),
            stats_window: file.stats_window.unwrap_or(d.stats_window),
            thresholds: file.health.clone(),
            ..d
        };
        let l = LinkSettings::default();
        let mut link = LinkSettings {
            keepalive: self.keepalive.or(file.keepalive).unwrap_or(l.keepalive),
            backoff_max: self.backoff_max.or(file.backoff_max).unwrap_or(l.backoff_max),
            ..l
        };
        link.validate()?;
        let admission = AdmissionSettings {
            allow: if !self.allow.is_empty() {
                AllowList::new(self.allow.clone())
            } else {
                file.allow.clone().map(AllowList::new).unwrap_or_default()
            },
            max_watchers: self.max_watchers.unwrap_or(crate::admission::DEFAULT_MAX_WATCHERS),
            ..AdmissionSettings::default()
        };
        fleet.validate()?;
        let mut hives = Vec::new();
        for raw in self.hives.iter().chain(file.hive.iter().map(|h| &h.address)) {
            let address =
                normalize_address(raw).map_err(|e| QueenError::Config(format!("hive {raw:?}: {e}")))?;
            if !hives.contains(&address) {
                hives.push(address);
            }
        }
        let local_hive = crate::local_hive::configure(
            self.local_hive || file.local_hive.unwrap_or(false),
            self.local_hive_demo,
        )?;
        let listen =
            self.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let defaults = SchedulerSettings::default();
        let mut limits = defaults.limits;
        limits.budget = self.policy_budget.or(file.policy_budget).unwrap_or(limits.budget);
        if limits.budget.is_zero() || limits.budget > Duration::from_secs(10) {
            return Err(QueenError::Config("policy_budget must be in (0, 10s]".into()));
        }
        let reservations = crate::scheduler::book::BookLimits {
            per_hive: self
                .max_reservations_per_hive
                .or(file.max_reservations_per_hive)
                .unwrap_or(defaults.reservations.per_hive),
            total: self.max_reservations.or(file.max_reservations).unwrap_or(defaults.reservations.total),
        };
        if reservations.per_hive == 0 || reservations.per_hive > reservations.total {
            return Err(QueenError::Config(
                "max_reservations_per_hive must be in 1..=max_reservations".into(),
            ));
        }
        let scheduler = SchedulerSettings {
            reservations,
            policy_file: self.policy.clone().or(file.policy.clone()),
            fallback_to_default: self.policy_fallback || file.policy_fallback.unwrap_or(false),
            limits,
            lost_grace: self
                .reservation_lost_grace
                .or(file.reservation_lost_grace)
                .unwrap_or(defaults.lost_grace),
            place_exact_up_to: self
                .place_exact_up_to
                .or(file.place_exact_up_to)
                .unwrap_or(defaults.place_exact_up_to),
            ..defaults
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(rbee_shared::tls::server_config(cert, key, None)?),
            _ => None,
        };
        if let (Some(ca), Some(cert), Some(key)) = (&self.hive_ca, &self.tls_cert, &self.tls_key) {
            link.hive_tls = Some(HiveTls::from_pem_files(ca, Some((cert, key)))?);
        }
        let tokens = crate::api::auth::Tokens::load(
            self.read_token_file.as_deref(),
            self.write_token_file.as_deref(),
        )?;
        if !listen.ip().is_loopback() && (tls.is_none() || !tokens.enabled()) {
            if !self.insecure {
                return Err(QueenError::Config(format!(
                    "refusing to listen on {listen} without TLS and tokens: give --tls-cert/--tls-key and \
                     --read-token-file/--write-token-file (or QUEEN_READ_TOKEN/QUEEN_WRITE_TOKEN), bind a \
                     loopback address, or pass --insecure"
                )));
            }
            tracing::warn!(%listen, tls = tls.is_some(), tokens = tokens.enabled(),
                "INSECURE: listening on a non-loopback address without TLS and tokens; anyone who can reach it \
                 can read the fleet, reserve VRAM and add hives");
        }
        let metrics = self.metrics_endpoint(&tokens)?;
        let state_dir =
            self.state_dir.clone().or(file.state_dir.clone()).or_else(default_state_dir).ok_or_else(
                || {
                    QueenError::Config(
                        "no state directory: give --state-dir (neither XDG_STATE_HOME nor HOME is set)"
                            .into(),
                    )
                },
            )?;
        Ok((
            listen,
            QueenConfig {
                fleet,
                link,
                admission,
                hives,
                local_hive,
                scheduler,
                tls,
                tokens,
                state_dir: Some(state_dir),
                reset_state: self.reset_state,
                metrics_best_effort: self.metrics_listen.is_none(),
                metrics,
                etcd: self.etcd()?,
            },
        ))
    }

    /// The `/metrics` endpoint (`None` with --no-metrics), checked against the exposure
    /// rule: beyond loopback the API tokens are required, unless --insecure.
    fn metrics_endpoint(
        &self,
        tokens: &crate::api::auth::Tokens,
    ) -> Result<Option<rbee_shared::metrics_http::MetricsEndpoint>, QueenError> {
        if self.no_metrics {
            return Ok(None);
        }
        let listen =
            self.metrics_listen.unwrap_or_else(|| DEFAULT_METRICS_LISTEN.parse().expect("valid default"));
        let access = tokens.metrics_access();
        rbee_shared::metrics_http::check_exposure(listen, &access, self.insecure, "--metrics-listen")
            .map_err(|e| QueenError::Config(e.to_string()))?;
        if !listen.ip().is_loopback() && !access.enabled() {
            tracing::warn!(%listen, "INSECURE: serving /metrics beyond loopback without a token");
        }
        Ok(Some(rbee_shared::metrics_http::MetricsEndpoint { listen, listener: None, access }))
    }
}

impl ServeArgs {
    /// The etcd settings, when `--store etcd://...` is given (the advertised address may
    /// be left empty: `run` derives it from the bound listener).
    fn etcd(&self) -> Result<Option<crate::store::EtcdSettings>, QueenError> {
        let Some(url) = &self.store else {
            if self.leader_ttl.is_some()
                || self.advertise.is_some()
                || self.etcd_prefix.is_some()
                || self.etcd_tls.given()
            {
                return Err(QueenError::Config(
                    "--leader-ttl, --advertise, --etcd-prefix and --etcd-ca/--etcd-cert/--etcd-key need \
                     --store etcd://HOST:PORT"
                        .into(),
                ));
            }
            return Ok(None);
        };
        let tls = self.etcd_tls.load()?;
        let endpoints = crate::store::EtcdSettings::parse_endpoints(url, tls.is_some())
            .map_err(|e| QueenError::Config(e.to_string()))?;
        let lease_ttl = self.leader_ttl.unwrap_or(Duration::from_secs(5));
        if lease_ttl < Duration::from_secs(2)
            || lease_ttl.subsec_nanos() != 0
            || lease_ttl > Duration::from_secs(300)
        {
            return Err(QueenError::Config("--leader-ttl must be whole seconds in 2s..=300s".into()));
        }
        let prefix = self.etcd_prefix.clone().unwrap_or_else(|| "/rbee/queen/".into());
        if !prefix.ends_with('/') {
            return Err(QueenError::Config("--etcd-prefix must end with '/'".into()));
        }
        let advertise = match &self.advertise {
            Some(a) => {
                normalize_address(a).map_err(|e| QueenError::Config(format!("--advertise {a:?}: {e}")))?
            }
            None => String::new(),
        };
        Ok(Some(crate::store::EtcdSettings { endpoints, prefix, advertise, lease_ttl, tls }))
    }
}

/// The local hive's id: `local-HOSTNAME` (the hostname as an id fragment), or `local`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::fleet::Thresholds;

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queen.toml");
        std::fs::write(
            &path,
            "lost_timeout = \"20s\"\nsample_interval = \"2s\"\n[[hive]]\naddress = \"10.0.0.5:7835\"\n[health]\ngpu_temp_unhealthy_c = 95.0\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            sample_interval: Some(SampleInterval::from_millis(500).unwrap()),
            hives: vec!["http://127.0.0.1:9".into()],
            ..Default::default()
        };
        let (listen, cfg) = args.into_config().unwrap();
        assert_eq!(listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(cfg.fleet.sample_interval, Duration::from_millis(500));
        assert_eq!(cfg.fleet.lost_timeout, Duration::from_secs(20));
        assert_eq!(cfg.fleet.thresholds.gpu_temp_unhealthy_c, 95.0);
        assert_eq!(cfg.hives, ["http://127.0.0.1:9", "http://10.0.0.5:7835"]);
    }

    #[test]
    fn the_documented_example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/queen.example.toml");
        let args = ServeArgs { config: Some(path.into()), ..Default::default() };
        let (listen, cfg) = args.into_config().unwrap();
        assert_eq!(listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(cfg.fleet.thresholds, Thresholds::default());
        assert_eq!(cfg.hives, ["http://127.0.0.1:7835"]);
    }

    #[test]
    fn bad_configs_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queen.toml");
        std::fs::write(&path, "lost_timout = \"20s\"\n").unwrap();
        let err =
            ServeArgs { config: Some(path), ..Default::default() }.into_config().unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
        let err = ServeArgs { config: Some("/nonexistent.toml".into()), ..Default::default() }
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent.toml"), "{err}");
        let err = ServeArgs { lost_timeout: Some(Duration::from_secs(1)), ..Default::default() }
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("lost_timeout"), "{err}");
    }

    #[test]
    fn the_etcd_flags_are_checked_once_at_start() {
        let etcd = |store: &str, ttl: u64| ServeArgs {
            store: Some(store.into()),
            leader_ttl: Some(Duration::from_secs(ttl)),
            state_dir: Some("/tmp/unused".into()),
            ..Default::default()
        };
        let (_, cfg) = etcd("etcd://127.0.0.1:2379,127.0.0.2:2379", 5).into_config().unwrap();
        let settings = cfg.etcd.unwrap();
        assert_eq!(settings.endpoints, ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]);
        assert_eq!(settings.lease_ttl, Duration::from_secs(5));
        assert_eq!(settings.prefix, "/rbee/queen/");
        assert_eq!(settings.advertise, "", "derived from the bound listener at start");
        for (store, ttl, what) in [("http://h:2379", 5, "etcd://"), ("etcd://h:2379", 1, "--leader-ttl")] {
            let err = etcd(store, ttl).into_config().unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
        let alone = ServeArgs { leader_ttl: Some(Duration::from_secs(5)), ..Default::default() };
        assert!(alone.into_config().unwrap_err().to_string().contains("need --store"));
    }
}
