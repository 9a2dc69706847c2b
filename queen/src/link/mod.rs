//! The per-hive pipeline: one link per managed hive dials it, runs `Discover`, holds its
//! `MetricsStream`, applies what arrives ([`ingest`]), keeps recent samples
//! ([`window`]), judges health ([`health`]) and publishes each new view to the fleet.
//! With mutual TLS it holds each hive to the ids its certificate carries ([`identity`]).
//! Imports the fleet and `rbee_shared`, nothing above.

pub mod command;
mod dial;
mod error;
pub mod health;
pub mod identity;
pub mod ingest;
mod manager;
mod settings;
pub mod window;

use std::sync::Arc;

pub use dial::{DialGuard, HiveTls};
pub use error::{CertError, DialError, GuardError, HiveTlsError, IngestError, LinkError};
pub use manager::MAX_HIVE_MESSAGE_BYTES;
pub use settings::LinkSettings;

use crate::fleet::{NewHive, Watcher};

/// Starts a link for each hive the fleet adds.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// How links dial and keep their hives.
    settings: Arc<LinkSettings>,
}

impl Links {
    /// Links that dial with `settings`.
    pub fn new(settings: LinkSettings) -> Self {
        Self { settings: Arc::new(settings) }
    }
}

impl Watcher for Links {
    fn start(&self, hive: NewHive) {
        tokio::spawn(manager::manage(hive, self.settings.clone()));
    }
}
