//! What the queen knows about one hive at one moment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_shared::{HiveIdentity, Sample, VersionedCapabilities};
use serde::Serialize;

use crate::health::{Health, HealthReport};
use crate::window::WindowStats;

/// The connection state of a hive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// Known, not yet dialed.
    Pending,
    /// Dialing, discovering or opening the stream.
    Connecting,
    /// Streaming, data fresh.
    Online,
    /// Stream open but silent for 3 intervals or more.
    Stale,
    /// Connection ended or silent past the lost timeout; retrying.
    Lost,
    /// Removed; no longer managed.
    Removed,
}

impl ConnState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Connecting => "connecting",
            Self::Online => "online",
            Self::Stale => "stale",
            Self::Lost => "lost",
            Self::Removed => "removed",
        }
    }
}

/// How the queen learned about a hive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `--hive` or the config file.
    Static,
    /// The AddHive RPC.
    Api,
    /// The Announce RPC.
    Announced,
    /// `--local-hive`.
    Local,
}

/// Counters of what happened on a hive's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Counters {
    /// Reconnect attempts after a connection ended.
    pub reconnects: u64,
    /// Diffs with a wrong base, or sequence jumps.
    pub gaps: u64,
    /// Resyncs requested.
    pub resyncs: u64,
    /// New epochs (hive restarts) seen.
    pub restarts: u64,
    /// Messages refused by validation.
    pub invalid_messages: u64,
}

/// One hive, as published by its connection manager.
#[derive(Debug, Clone)]
pub struct HiveSnapshot {
    /// The address the queen dials.
    pub address: String,
    /// How the queen learned about it.
    pub origin: Origin,
    /// Connection state.
    pub state: ConnState,
    /// When it entered `state`, ms since the Unix epoch.
    pub state_since_unix_ms: u64,
    /// Identity, once discovered.
    pub identity: Option<Arc<HiveIdentity>>,
    /// Capabilities, once discovered.
    pub caps: Option<Arc<VersionedCapabilities>>,
    /// The newest sample.
    pub latest: Option<Arc<Sample>>,
    /// When the queen received it (for its age).
    pub latest_received: Option<Instant>,
    /// Health and reasons.
    pub health: HealthReport,
    /// Windowed statistics.
    pub stats: WindowStats,
    /// Why the last connection ended or failed.
    pub last_error: Option<String>,
    /// Connection counters.
    pub counters: Counters,
    /// The sample interval asked of the hive.
    pub sample_interval: Duration,
}

impl HiveSnapshot {
    /// A hive that is known but not yet dialed.
    pub fn pending(address: String, origin: Origin, sample_interval: Duration) -> Self {
        Self {
            address,
            origin,
            state: ConnState::Pending,
            state_since_unix_ms: rbee_shared::time::now_unix_ms(),
            identity: None,
            caps: None,
            latest: None,
            latest_received: None,
            health: HealthReport {
                health: Health::Unhealthy,
                reasons: vec!["not connected yet".into()],
                devices: vec![],
            },
            stats: WindowStats::default(),
            last_error: None,
            counters: Counters::default(),
            sample_interval,
        }
    }

    /// The hive id, empty before discovery.
    pub fn hive_id(&self) -> &str {
        self.identity.as_ref().map_or("", |i| i.hive_id.as_str())
    }

    /// How old the newest sample is now.
    pub fn sample_age(&self) -> Option<Duration> {
        self.latest_received.map(|t| t.elapsed())
    }

    /// True when `key` is this hive's id or address.
    pub fn matches(&self, key: &str) -> bool {
        self.address == key || (!key.is_empty() && self.hive_id() == key)
    }
}
