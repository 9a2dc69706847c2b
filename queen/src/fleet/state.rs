//! Where a hive stands: its connection state, how the queen learned of it, and
//! counters of what happened on its connections.

use serde::Serialize;

/// The connection state of a hive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// Known, not yet dialed.
    Pending,
    /// Dialing, discovering or opening the stream for the first time.
    Connecting,
    /// Streaming, data fresh.
    Online,
    /// Stream open but silent for 3 intervals or more.
    Stale,
    /// Connection ended or silent past the lost timeout; retrying, and still lost
    /// while a retry dials, until the stream is open again.
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
