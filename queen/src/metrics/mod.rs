//! Prometheus metrics of the whole fleet at `queen serve --metrics-listen` (`/metrics`).
//!
//! - [`recorder`]: counters kept where events happen (placement outcomes and latency). A
//!   leaf: the scheduler records into it.
//! - [`collector`]: the families gathered at scrape time from the fleet's snapshots and
//!   the scheduler's books (nothing duplicated).
//!
//! The per-hive and per-GPU machine families are `rbee_hive::metrics`' (the hive's own
//! endpoint exports the same ones). The HTTP endpoint and its token check are
//! `rbee_shared::metrics_http`'s.
//!
//! **Extension point**: another part of the queen (models, downloads) exports its own
//! families by implementing `prometheus_client::collector::Collector` and adding it in
//! [`registry`] (one line), reading its own state at scrape time.

pub mod collector;
pub mod recorder;

use std::sync::Arc;

use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::scheduler::{HiveSource, Scheduler};

/// The registry `/metrics` renders: the fleet collector (and any added collector).
pub fn registry(fleet: Arc<dyn HiveSource>, scheduler: Arc<Scheduler>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector::FleetCollector { fleet, scheduler }));
    registry
}

/// Adds the fleet's sample publish delay (`rbee_queen_sample_publish_delay_seconds`):
/// how old each sample was when the queen published it to its fleet view.
pub fn register_publish_delay(registry: &mut Registry, delay: Histogram) {
    registry.register_with_unit(
        "rbee_queen_sample_publish_delay",
        "How old each sample was when the queen published it: the queen's clock at publish minus the hive's taken_at (clock skew included).",
        prometheus_client::registry::Unit::Seconds,
        delay,
    );
}

/// The Prometheus text of `registry`.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?;
    Ok(text)
}

/// What the `/metrics` endpoint renders on each scrape.
pub fn render(registry: Arc<Registry>) -> rbee_shared::metrics_http::Render {
    Arc::new(move || {
        let registry = registry.clone();
        Box::pin(async move { encode(&registry).map_err(|e| format!("encoding failed: {e}")) })
    })
}
