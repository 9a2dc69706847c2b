//! The per-hive pipeline: one link per managed hive dials it, runs `Discover`, holds its
//! `MetricsStream`, applies what arrives ([`ingest`]), keeps recent samples
//! ([`window`]), judges health ([`health`], with NVLink pairs that went down from
//! `nvlink_baseline`) and publishes each new view to the fleet.
//! With mutual TLS it holds each hive to the ids its certificate carries ([`identity`]).
//! Imports the fleet and `rbee_shared`, nothing above.

pub mod command;
mod dial;
mod error;
mod guard;
pub mod health;
pub mod identity;
pub mod ingest;
pub mod ingest_compact;
mod manager;
pub mod nvlink_baseline;
pub mod recycle;
mod settings;
mod tls;
pub mod window;

use std::sync::Arc;

pub use dial::MAX_HIVE_MESSAGE_BYTES;
pub use error::{DialError, GuardError, HiveTlsError, IngestError, LinkError};
pub use guard::DialGuard;
pub use identity::CertError;
pub use settings::LinkSettings;
pub use tls::HiveTls;

use crate::fleet::{NewHive, Watcher};

/// Starts a link for each hive the fleet adds.
#[derive(Debug, Clone)]
pub struct Links {
    /// How links dial and keep their hives.
    settings: Arc<LinkSettings>,
    /// Dials (connect, Discover, open the stream) in flight at once, all links together:
    /// thousands of hives dialed at once (a cold start) would otherwise time each other
    /// out and retry in a herd.
    dials: Arc<tokio::sync::Semaphore>,
    /// The runtime links run on (`server::run` gives them one of their own, at a lower
    /// priority than the API's); `None`: the runtime of whoever adds the hive.
    runtime: Option<tokio::runtime::Handle>,
}

/// Most dials in flight at once (see [`Links`]).
pub const MAX_CONCURRENT_DIALS: usize = 128;

impl Default for Links {
    fn default() -> Self {
        Self::new(LinkSettings::default())
    }
}

impl Links {
    /// Links that dial with `settings`.
    pub fn new(settings: LinkSettings) -> Self {
        Self {
            settings: Arc::new(settings),
            dials: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_DIALS)),
            runtime: None,
        }
    }

    /// These links, run on `runtime` (also for a hive added from another runtime, e.g.
    /// by an API call).
    pub fn on(mut self, runtime: Option<tokio::runtime::Handle>) -> Self {
        self.runtime = runtime;
        self
    }
}

impl Watcher for Links {
    fn start(&self, hive: NewHive) {
        let link = manager::manage(hive, self.settings.clone(), self.dials.clone());
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(link)),
            None => drop(tokio::spawn(link)),
        }
    }
}
