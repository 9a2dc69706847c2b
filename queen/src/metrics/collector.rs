//! The queen's collector: every family is read at scrape time from the fleet's
//! snapshots and the scheduler's books and counters; nothing is copied or kept here.
//! A gauge that can be zero (reservations, reserved bytes) is written as 0 for every
//! known hive and device, never left out.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use rbee_shared::machine_metrics::{Labels, MachineView, counters, encode_machines, gauges, infos, label};

use super::recorder::PlaceResult;
use crate::fleet::{ConnState, Health, HiveSnapshot};
use crate::scheduler::book::ReservationState;
use crate::scheduler::figures::gpu_figures;
use crate::scheduler::view::CPU_DEVICE;
use crate::scheduler::{HiveSource, Scheduler};

/// Every connection state, for the state set.
const STATES: [ConnState; 5] =
    [ConnState::Pending, ConnState::Connecting, ConnState::Online, ConnState::Stale, ConnState::Lost];

/// Every hive health level, for the health set.
const HEALTHS: [Health; 3] = [Health::Healthy, Health::Degraded, Health::Unhealthy];

/// The fleet and the scheduler, gathered on every scrape.
pub struct FleetCollector {
    /// The hives (the live fleet; a fixed set in benchmarks).
    pub fleet: Arc<dyn HiveSource>,
    /// The books and placement counters.
    pub scheduler: Arc<Scheduler>,
}

impl fmt::Debug for FleetCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetCollector").finish_non_exhaustive()
    }
}

/// The `hive` label of a snapshot: its id, else (before discovery) its address.
pub fn hive_name(h: &HiveSnapshot) -> &str {
    rbee_shared::identity::display_name(h.hive_id(), &h.address)
}

impl Collector for FleetCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let hives = self.fleet.hives();
        let machines: Vec<MachineView<'_>> = hives
            .iter()
            .map(|h| MachineView {
                hive: hive_name(h),
                identity: h.identity.as_deref(),
                caps: h.caps.as_ref().map(|c| &c.caps),
                sample: h.latest.as_deref(),
            })
            .collect();
        encode_hives(&mut enc, &hives)?;
        encode_machines(&mut enc, &machines)?;
        encode_nvlinks(&mut enc, &hives)?;
        self.encode_books(&mut enc, &hives)?;
        self.encode_scheduler(&mut enc)
    }
}

/// The queen's own view of each hive: address, state, health, freshness, counters.
fn encode_hives(enc: &mut DescriptorEncoder, hives: &[Arc<HiveSnapshot>]) -> fmt::Result {
    let hive = |h: &HiveSnapshot| vec![label("hive", hive_name(h))];
    infos(
        enc,
        "rbee_hive_managed",
        "A hive the queen manages: its address and how the queen learned of it (value 1).",
        hives.iter().map(|h| {
            vec![label("hive", hive_name(h)), label("address", &*h.address), label("origin", origin(h))]
        }),
    )?;
    gauges(
        enc,
        "rbee_hive_state",
        "The hive's connection state: 1 for the current state, 0 for the others.",
        None,
        hives.iter().flat_map(|h| {
            STATES.iter().map(move |s| {
                (vec![label("hive", hive_name(h)), label("state", s.as_str())], u64::from(h.state == *s))
            })
        }),
    )?;
    gauges(
        enc,
        "rbee_hive_health",
        "The hive's health level: 1 for the current level, 0 for the others.",
        None,
        hives.iter().flat_map(|h| {
            HEALTHS.iter().map(move |l| {
                (
                    vec![label("hive", hive_name(h)), label("health", l.as_str())],
                    u64::from(h.health.health == *l),
                )
            })
        }),
    )?;
    gauges(
        enc,
        "rbee_hive_sample_age",
        "How old the newest sample is, on the queen's clock.",
        Some(Unit::Seconds),
        hives.iter().filter_map(|h| Some((hive(h), h.sample_age()?.as_secs_f64()))),
    )?;
    gauges(
        enc,
        "rbee_hive_clock_skew",
        "The hive's clock minus the queen's when its newest message arrived (network delay included).",
        Some(Unit::Seconds),
        hives.iter().filter_map(|h| Some((hive(h), h.clock_skew_ms? as f64 / 1000.0))),
    )?;
    let counter = |enc: &mut DescriptorEncoder, name: &str, help: &str, get: fn(&HiveSnapshot) -> u64| {
        counters(enc, name, help, None, hives.iter().map(|h| (hive(h), get(h))))
    };
    counter(enc, "rbee_hive_samples", "Samples applied since the queen began managing the hive.", |h| {
        h.samples_applied
    })?;
    counter(enc, "rbee_hive_reconnects", "Reconnect attempts after a connection ended.", |h| {
        h.counters.reconnects
    })?;
    counter(enc, "rbee_hive_gaps", "Diffs with a wrong base, or sequence jumps.", |h| h.counters.gaps)?;
    counter(enc, "rbee_hive_resyncs", "Resyncs the queen asked for.", |h| h.counters.resyncs)?;
    counter(enc, "rbee_hive_restarts", "New hive epochs (restarts) seen.", |h| h.counters.restarts)?;
    counter(enc, "rbee_hive_invalid_messages", "Messages refused by validation.", |h| {
        h.counters.invalid_messages
    })
}

/// One series per GPU and NVLink-connected peer (each direction), with its active
/// link count: `rbee_gpu_nvlink_peer_info{hive,gpu,uuid,peer,peer_uuid,links}`. Pairs
/// without NVLink, or whose links are not reported, have none.
fn encode_nvlinks(enc: &mut DescriptorEncoder, hives: &[Arc<HiveSnapshot>]) -> fmt::Result {
    let rows = hives.iter().flat_map(|h| {
        let gpus = h.caps.as_ref().map(|c| &c.caps.gpus);
        gpus.into_iter().flat_map(move |gpus| {
            gpus.values().flat_map(move |g| {
                g.topology.links.iter().filter(|l| l.is_nvlink()).map(move |l| {
                    let peer = gpus.get(&l.peer).map_or_else(String::new, |p| p.index.to_string());
                    vec![
                        label("hive", hive_name(h)),
                        label("gpu", g.index.to_string()),
                        label("uuid", &*g.id),
                        label("peer", peer),
                        label("peer_uuid", &*l.peer),
                        label("links", l.nvlinks.unwrap_or(0).to_string()),
                    ]
                })
            })
        })
    });
    infos(
        enc,
        "rbee_gpu_nvlink_peer",
        "A GPU's NVLink-connected peer on its hive, with the active link count (value 1).",
        rows,
    )
}

fn origin(h: &HiveSnapshot) -> &'static str {
    use crate::fleet::Origin;
    match h.origin {
        Origin::Static => "static",
        Origin::Api => "api",
        Origin::Announced => "announced",
        Origin::Local => "local",
    }
}

impl FleetCollector {
    /// Free for placement and reserved, per GPU; reservations per hive.
    fn encode_books(&self, enc: &mut DescriptorEncoder, hives: &[Arc<HiveSnapshot>]) -> fmt::Result {
        let (placeable, reserved, counts) = self.scheduler.with_book(|book| {
            let mut placeable: Vec<(Labels, u64)> = Vec::new();
            for h in hives {
                for f in gpu_figures(book, h) {
                    let Some(free) = f.placeable else { continue };
                    let labels = vec![
                        label("hive", hive_name(h)),
                        label("gpu", f.index.to_string()),
                        label("uuid", &*f.device_id),
                    ];
                    placeable.push((labels, free));
                }
            }
            // Every known device and hive reads 0 until something is reserved on it, so an
            // idle fleet shows zeros rather than no series ("No data" on a dashboard).
            let mut reserved: std::collections::BTreeMap<(String, String, String), u64> = Default::default();
            let mut counts: std::collections::BTreeMap<(String, &'static str), u64> = Default::default();
            for h in hives {
                let name = hive_name(h).to_owned();
                for state in ["active", "settled"] {
                    counts.insert((name.clone(), state), 0);
                }
                let Some(caps) = &h.caps else { continue };
                let devices = caps.caps.gpus.keys().map(String::as_str).chain([CPU_DEVICE]);
                for device in devices {
                    reserved.insert((name.clone(), device.to_owned(), h.address.clone()), 0);
                }
            }
            for r in book.list() {
                let name = rbee_shared::identity::display_name(&r.hive_id, &r.address).to_owned();
                let state = match r.state {
                    ReservationState::Active => "active",
                    ReservationState::Settled => "settled",
                    ReservationState::Released => "released",
                };
                *counts.entry((name.clone(), state)).or_default() += 1;
                // Every GPU of a gang where it still counts.
                for device in r.devices().filter(|d| book.counts_on(&r, d)) {
                    *reserved.entry((name.clone(), device.to_owned(), r.address.clone())).or_default() +=
                        r.bytes;
                }
            }
            (placeable, reserved, counts)
        });
        gauges(
            enc,
            "rbee_gpu_memory_placeable",
            "VRAM free for placement: usable (total less the driver's reserve) minus the larger of observed use and active reservations.",
            Some(Unit::Bytes),
            placeable,
        )?;
        let index_of = |address: &str, device: &str| {
            hives
                .iter()
                .find(|h| h.address == address)
                .and_then(|h| h.caps.as_ref()?.caps.gpus.get(device).map(|g| g.index.to_string()))
        };
        gauges(
            enc,
            "rbee_device_memory_reserved",
            "Bytes held by active reservations, per device (a GPU, or a hive's CPU RAM with gpu=\"cpu\").",
            Some(Unit::Bytes),
            reserved.into_iter().map(|((hive, device, address), bytes)| {
                let gpu = if device == CPU_DEVICE {
                    CPU_DEVICE.to_owned()
                } else {
                    index_of(&address, &device).unwrap_or_default()
                };
                (vec![label("hive", hive), label("gpu", gpu), label("uuid", device)], bytes)
            }),
        )?;
        gauges(
            enc,
            "rbee_reservations",
            "Reservations held, per hive and state (active: counted against free memory; settled: loaded).",
            None,
            counts
                .into_iter()
                .map(|((hive, state), n)| (vec![label("hive", hive), label("state", state)], n)),
        )
    }

    /// Placement outcomes and latency, policy failures.
    fn encode_scheduler(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let stats = self.scheduler.place_stats();
        counters(
            enc,
            "rbee_place_requests",
            "Place calls answered, by outcome (placed, rejected, error).",
            None,
            PlaceResult::ALL.iter().map(|r| (vec![label("outcome", r.as_str())], stats.count(*r))),
        )?;
        let m = enc.encode_descriptor(
            "rbee_place_duration",
            "Wall time of a Place call: policy run and commit.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        stats.latency().encode(m)?;
        counters(
            enc,
            "rbee_place_gang_size",
            "Placements made, by their number of GPUs (the gang size; 1 for a plain placement).",
            None,
            stats.sizes().map(|(n, count)| (vec![label("gpus", n.to_string())], count)),
        )?;
        let status = self.scheduler.status();
        let one = |v: u64| [(Labels::new(), v)];
        counters(
            enc,
            "rbee_policy_failures",
            "Policy calls that failed (error, budget, bad answer).",
            None,
            one(status.failures),
        )?;
        counters(
            enc,
            "rbee_policy_fallbacks",
            "Calls answered by the built-in default after the policy failed.",
            None,
            one(status.fallbacks),
        )?;
        counters(
            enc,
            "rbee_policy_reload_failures",
            "Edits of the policy file that were refused.",
            None,
            one(status.reload_failures),
        )?;
        gauges(
            enc,
            "rbee_reservations_on_missing_hives",
            "Reservations kept, and counted, on hives not in the fleet until the lost grace ends.",
            None,
            [(Labels::new(), status.kept_on_missing_hives as f64)],
        )?;
        gauges(
            enc,
            "rbee_policy_loaded_timestamp",
            "When the policy in use was loaded, Unix time.",
            Some(Unit::Seconds),
            [(vec![label("policy", status.source)], status.loaded_at_unix_ms as f64 / 1000.0)],
        )
    }
}
