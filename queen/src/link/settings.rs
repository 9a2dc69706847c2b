//! How the queen dials and keeps hives: timeouts, keepalive, reconnect backoff, TLS.

use std::time::Duration;

use crate::QueenError;

/// How each hive's link dials and keeps its connection.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Dial and Discover timeout.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive interval and timeout.
    pub keepalive: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Mutual TLS for dialing hives (`https://` addresses); plaintext then only to loopback.
    pub hive_tls: Option<super::tls::HiveTls>,
    /// The allow-list, checked at every dial of a hive added over the API or announced.
    pub dial_guard: Option<super::guard::DialGuard>,
}

impl Default for LinkSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            keepalive: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            hive_tls: None,
            dial_guard: None,
        }
    }
}

impl LinkSettings {
    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), QueenError> {
        let day = Duration::from_secs(86_400);
        if self.keepalive > day || self.backoff_max > day || self.connect_timeout > day {
            return Err(QueenError::Config("keepalive and backoff_max must be at most 1 day".into()));
        }
        if self.keepalive < Duration::from_millis(100) || self.backoff_max < self.backoff_min {
            return Err(QueenError::Config("keepalive must be >= 100ms and backoff_max >= 500ms".into()));
        }
        Ok(())
    }
}
