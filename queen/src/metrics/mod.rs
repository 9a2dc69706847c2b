//! Prometheus metrics of the whole fleet at `queen serve --metrics-listen` (`/metrics`).
//!
//! - [`recorder`]: counters kept where events happen (placement outcomes and latency). A
//!   leaf: the scheduler records into it.
//! - [`collector`]: the families gathered at scrape time from the fleet's snapshots and
//!   the scheduler's books (nothing duplicated).
//!
//! The per-hive and per-GPU machine families are `rbee_shared::machine_metrics`' (the hive's own
//! endpoint exports the same ones). Every series here carries `source="queen"` (the
//! hive's own carry `source="hive"`), so that queries selecting `source="queen"` count
//! each GPU once however many endpoints Prometheus scrapes. The HTTP endpoint and its
//! token check are `rbee_shared::metrics_http`'s.
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

/// The `source` value of every series the queen exports.
pub const SOURCE_QUEEN: &str = "queen";

/// The registry `/metrics` renders: the fleet collector (and any added collector), every
/// series labelled `source="queen"`.
pub fn registry(fleet: Arc<dyn HiveSource>, scheduler: Arc<Scheduler>) -> Registry {
    let mut registry = rbee_shared::machine_metrics::registry_for(SOURCE_QUEEN);
    registry.register_collector(Box::new(collector::FleetCollector { fleet, scheduler }));
    registry
}

/// Adds the fleet's sample publish delay (`rbee_queen_sample_publish_delay_seconds`):
/// how old each sample was when the queen published it to its fleet view.
pub fn register_publish_delay(registry: &mut Registry, delay: Histogram) {
    registry.register_with_unit(
        "rbee_queen_sample_publish_delay",
        // prometheus-client ends a registered metric's HELP with a period itself.
        "How old each sample was when the queen published it: the queen's clock at publish minus the hive's taken_at (clock skew included)",
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

/// What the `/metrics` endpoint renders on each scrape: on a blocking thread, since the
/// text of a large fleet takes a while (about 160 series per hive) and an async worker
/// busy with it serves nothing else meanwhile (the API shares its runtime: at 10,000
/// hives a Place behind a scrape took 2.5-3.1 s, 53 ms at most once rendered here).
pub fn render(registry: Arc<Registry>) -> rbee_shared::metrics_http::Render {
    Arc::new(move || {
        let registry = registry.clone();
        Box::pin(async move { Ok(tokio::task::spawn_blocking(move || encode(&registry)).await??) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{SchedulerSettings, StaticHives, synthetic};

    /// The text of a queen's registry over a synthetic idle fleet (no reservation).
    fn idle_fleet_text() -> String {
        let fleet = Arc::new(StaticHives(synthetic::fleet(2, 2)));
        let scheduler = Scheduler::new(fleet.clone(), SchedulerSettings::default()).unwrap();
        let mut registry = registry(fleet.clone(), scheduler);
        register_publish_delay(&mut registry, Histogram::new([0.001, 0.01]));
        encode(&registry).unwrap()
    }

    #[test]
    fn no_help_text_ends_with_two_periods() {
        let text = idle_fleet_text();
        let helps: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP ")).collect();
        assert!(helps.len() > 20, "{text}");
        for help in helps {
            assert!(!help.ends_with(".."), "{help}");
        }
    }

    #[test]
    fn every_series_names_its_source() {
        let text = idle_fleet_text();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            assert!(line.contains("source=\"queen\""), "{line}");
        }
    }

    /// Gauges that can be zero read 0 on an idle fleet instead of disappearing, so that
    /// dashboards show 0 rather than "No data".
    #[test]
    fn reservation_gauges_read_zero_on_an_idle_fleet() {
        let text = idle_fleet_text();
        let has = |prefix: &str, hive: &str, extra: &str| {
            text.lines().any(|l| {
                l.starts_with(prefix)
                    && l.contains(&format!("hive=\"{hive}\""))
                    && l.contains(extra)
                    && l.ends_with(" 0")
            })
        };
        for hive in ["hive-00000", "hive-00001"] {
            for state in ["active", "settled"] {
                assert!(
                    has("rbee_reservations{", hive, &format!("state=\"{state}\"")),
                    "{hive} {state}:\n{text}"
                );
            }
            for gpu in ["0", "1", "cpu"] {
                let extra = format!("gpu=\"{gpu}\"");
                assert!(has("rbee_device_memory_reserved_bytes{", hive, &extra), "{hive} gpu {gpu}:\n{text}");
            }
        }
    }
    /// The placeable gauge is the figure admission uses: the driver's reserve is not
    /// placeable (80 GiB, 12 GiB used, 1 GiB kept by the driver, 30 GiB reserved: 37 GiB).
    #[test]
    fn the_placeable_gauge_is_what_admission_would_grant() {
        const GIB: u64 = 1 << 30;
        let mut h = crate::fleet::HiveSnapshot::clone(&synthetic::hive(
            "gauge",
            1,
            80,
            12,
            0.0,
            crate::fleet::ConnState::Online,
            &[],
        ));
        let mut sample = rbee_shared::Sample::clone(h.latest.as_deref().unwrap());
        sample.gpus[0].vram_reserved_bytes = Some(GIB);
        h.latest = Some(Arc::new(sample));
        let h = Arc::new(h.with_placement());
        let fleet = Arc::new(StaticHives(vec![h.clone()]));
        let scheduler = Scheduler::new(fleet.clone(), SchedulerSettings::default()).unwrap();
        let req = crate::scheduler::request::PlaceRequest::gpu(30 * GIB);
        assert!(matches!(scheduler.place_blocking(&req).unwrap(), crate::scheduler::Outcome::Placed(_)));
        let figure = scheduler.figures(&h)[0].placeable;
        assert_eq!(figure, Some(37 * GIB));
        let text = encode(&registry(fleet, scheduler)).unwrap();
        let line = text.lines().find(|l| l.starts_with("rbee_gpu_memory_placeable_bytes{")).unwrap();
        assert!(line.ends_with(&format!(" {}", 37 * GIB)), "{line}");
    }
}
