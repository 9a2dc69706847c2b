//! How the client subcommands show what the queen answers: tables, detail, event
//! lines, placements. Pure functions over wire types.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rbee_proto::v1 as pb;
use rbee_shared::bytesize::format_bytes;

use crate::api::convert::{conn_state_from_wire, health_from_wire};
use crate::fleet::{ConnState, Health, join_by_id};

fn state_name(v: &pb::HiveView) -> &'static str {
    hive_state_name(v.state())
}

/// The name users read for a wire hive state: the domain's ([`ConnState::as_str`]);
/// `?` for one the queen never sends.
pub fn hive_state_name(s: pb::HiveState) -> &'static str {
    conn_state_from_wire(s as i32).map_or("?", ConnState::as_str)
}

/// The name users read for a wire health: the domain's ([`Health::as_str`]); `?` for
/// one the queen never sends.
pub fn health_name(h: pb::Health) -> &'static str {
    health_from_wire(h as i32).map_or("?", Health::as_str)
}

/// One GPU of a hive view from the queen: its description, newest reading and health
/// entry.
#[derive(Debug, Clone, Copy)]
pub struct WireGpu<'a> {
    /// The description (id, index, name, VRAM).
    pub device: &'a pb::GpuDevice,
    /// The newest reading, if the sample has one.
    pub live: Option<&'a pb::GpuSample>,
    /// The health entry, if the report lists the GPU.
    pub health: Option<&'a pb::DeviceHealth>,
}

/// The GPUs of a hive view, in the capabilities' order, each joined with its reading and
/// health entry by the queen's one matching rule ([`crate::fleet::join_by_id`]): the
/// CLI's only join of these parts (`queen hive` and `queen top` both read it).
pub fn wire_gpus<'a>(
    caps: &'a pb::Capabilities,
    sample: Option<&'a pb::Sample>,
    devices: &'a [pb::DeviceHealth],
) -> Vec<WireGpu<'a>> {
    caps.gpus
        .iter()
        .enumerate()
        .map(|(i, g)| WireGpu {
            device: g,
            live: sample.and_then(|s| join_by_id(&s.gpus, i, &g.id, |x| &x.id).map(|j| &s.gpus[j])),
            health: join_by_id(devices, i, &g.id, |d| &d.device_id).map(|j| &devices[j]),
        })
        .collect()
}

fn age(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
}

/// Adds up byte counts a hive reported; a total past `u64::MAX` stays at `u64::MAX`
/// instead of wrapping (a peer's numbers are not trusted to be sane).
fn saturating_total(bytes: impl IntoIterator<Item = u64>) -> u64 {
    bytes.into_iter().fold(0, u64::saturating_add)
}

/// VRAM used and total over a hive's GPUs, saturating.
fn vram(v: &pb::HiveView) -> (u64, u64) {
    let total =
        v.capabilities.as_ref().map_or(0, |c| saturating_total(c.gpus.iter().map(|g| g.vram_total_bytes)));
    let used = v
        .latest_sample
        .as_ref()
        .map_or(0, |s| saturating_total(s.gpus.iter().filter_map(|g| g.vram_used_bytes)));
    (used, total)
}

/// Renders hives as a table.
pub fn render_table(hives: &[pb::HiveView]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<10} {:<9} {:>6} {:>5} {:>22} {:>4} {:>22}  {:<24} REASONS",
        "HIVE", "STATE", "HEALTH", "AGE", "CPU", "RAM USED/TOTAL", "GPUS", "VRAM USED/TOTAL", "ADDRESS"
    );
    for v in hives {
        let s = v.latest_sample.as_ref();
        let cpu = s.and_then(|s| s.cpu_percent).map_or_else(|| "-".into(), |p| format!("{p:.0}%"));
        let ram = s.map_or_else(
            || "-".into(),
            |s| format!("{}/{}", format_bytes(s.ram_used_bytes), format_bytes(s.ram_total_bytes)),
        );
        let (used, total) = vram(v);
        let gpus = v.capabilities.as_ref().map_or(0, |c| c.gpus.len());
        let _ = writeln!(
            out,
            "{:<24} {:<10} {:<9} {:>6} {:>5} {:>22} {:>4} {:>22}  {:<24} {}",
            if v.hive_id.is_empty() { "(not discovered)" } else { &v.hive_id },
            state_name(v),
            health_name(v.health()),
            age(v.sample_age_ms),
            cpu,
            ram,
            gpus,
            if total == 0 { "-".into() } else { format!("{}/{}", format_bytes(used), format_bytes(total)) },
            v.address,
            v.health_reasons.join("; "),
        );
    }
    out
}

/// `1 hive`, `2 hives`, `0 hives`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// A short duration as people read it: `39 ms` under a second, `1.5 s`, `12 s`, `3 min 20 s`.
pub fn duration_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..10_000 => format!("{:.1} s", ms as f64 / 1000.0),
        10_000..120_000 => format!("{} s", (ms + 500) / 1000),
        _ => {
            let s = (ms + 500) / 1000;
            format!("{} min {} s", s / 60, s % 60)
        }
    }
}

pub(super) fn since(unix_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let ago = SystemTime::now().duration_since(t).unwrap_or_default();
    format!("{} ({:.0} s ago)", humantime::format_rfc3339_seconds(t), ago.as_secs_f64())
}

/// Renders one hive in detail.
pub fn render_detail(v: &pb::HiveView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "hive      {}", if v.hive_id.is_empty() { "(not discovered)" } else { &v.hive_id });
    let _ = writeln!(out, "address   {}", v.address);
    let _ = writeln!(out, "state     {} since {}", state_name(v), since(v.state_since_unix_ms));
    let _ = writeln!(out, "health    {}", health_name(v.health()));
    for r in &v.health_reasons {
        let _ = writeln!(out, "          - {r}");
    }
    if let Some(e) = &v.last_error {
        let _ = writeln!(out, "last error {e}");
    }
    if let Some(i) = &v.identity {
        let _ = writeln!(
            out,
            "host      {} (hive {}, protocol {}, epoch {})",
            i.hostname, i.version, i.protocol_version, i.epoch
        );
        let source = rbee_shared::convert::device_source_from_wire(i.gpu_source);
        let _ = writeln!(out, "gpu source {}", source.map_or("?", rbee_shared::DeviceSourceKind::as_str));
    }
    if let Some(c) = &v.capabilities {
        let cpu = c.cpu.as_ref();
        let _ = writeln!(
            out,
            "caps      v{}: {} ({} logical cores), RAM {}, labels {:?}",
            c.version,
            cpu.map_or("", |c| c.model.as_str()),
            cpu.map_or(0, |c| c.logical_cores),
            format_bytes(c.ram_total_bytes),
            c.labels
        );
        for WireGpu { device: g, live, health } in wire_gpus(c, v.latest_sample.as_ref(), &v.devices) {
            let _ = writeln!(
                out,
                "  gpu{:<3} {:<28} vram {}/{} util {} temp {} {}  {}",
                g.index,
                g.name,
                live.and_then(|l| l.vram_used_bytes).map_or("-".into(), format_bytes),
                format_bytes(g.vram_total_bytes),
                live.and_then(|l| l.gpu_util_percent).map_or("-".into(), |u| format!("{u:.0}%")),
                live.and_then(|l| l.temperature_c).map_or("-".into(), |t| format!("{t:.0}C")),
                health.map_or("", |h| health_name(h.health())),
                g.id,
            );
            if let Some(h) = health {
                let _ = writeln!(
                    out,
                    "         reserved {} placeable {}",
                    format_bytes(h.reserved_bytes),
                    h.placeable_bytes.map_or("-".into(), format_bytes),
                );
            }
            super::render_processes::render_gpu_processes(&mut out, live);
        }
        super::render_topology::render_topology(&mut out, &c.gpus);
    }
    if let Some(s) = &v.latest_sample {
        let _ = writeln!(
            out,
            "sample    age {}: cpu {} ram {}/{}",
            age(v.sample_age_ms),
            s.cpu_percent.map_or("-".into(), |p| format!("{p:.1}%")),
            format_bytes(s.ram_used_bytes),
            format_bytes(s.ram_total_bytes)
        );
    }
    if let Some(st) = &v.stats {
        let f = |x: Option<f32>| x.map_or("-".into(), |x| format!("{x:.1}%"));
        let _ = writeln!(
            out,
            "window    {} s, {} samples: cpu mean {} max {}, ram mean {} max {}",
            st.window_ms / 1000,
            st.samples,
            f(st.cpu_mean_percent),
            f(st.cpu_max_percent),
            f(st.ram_used_mean_percent),
            f(st.ram_used_max_percent)
        );
    }
    if let Some(c) = &v.counters {
        let _ = writeln!(
            out,
            "counters  reconnects {} gaps {} resyncs {} restarts {} invalid {}",
            c.reconnects, c.gaps, c.resyncs, c.restarts, c.invalid_messages
        );
    }
    out
}

/// One line for a fleet event.
pub fn render_event(e: &pb::FleetEvent) -> String {
    use pb::fleet_event::Event;
    let t = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(e.queen_time_unix_ms));
    let name = rbee_shared::identity::display_name;
    let body = match &e.event {
        None => "(empty)".to_owned(),
        Some(Event::Snapshot(s)) => {
            let mut line = format!(
                "snapshot: {}{}{}{}",
                count(s.hives.len(), "hive"),
                if s.coalesced { " (coalesced)" } else { "" },
                if s.reset { " (reset: events since the last one seen are gone)" } else { "" },
                if s.more { " (more parts follow)" } else { "" }
            );
            for h in &s.hives {
                let _ = write!(
                    line,
                    "\n    {} {} {}",
                    name(&h.hive_id, &h.address),
                    state_name(h),
                    health_name(h.health())
                );
            }
            line
        }
        Some(Event::HiveAdded(h)) => format!("added {}", h.address),
        Some(Event::HiveRemoved(r)) => format!("removed {}", name(&r.hive_id, &r.address)),
        Some(Event::StateChanged(c)) => {
            let (from, to) = (hive_state_name(c.from()), hive_state_name(c.to()));
            format!("{} {from} -> {to}: {}", name(&c.hive_id, &c.address), c.reason)
        }
        Some(Event::HealthChanged(c)) => format!(
            "{} health {} -> {} {}",
            name(&c.hive_id, &c.address),
            health_name(c.from()),
            health_name(c.to()),
            c.reasons.join("; ")
        ),
        Some(Event::CapabilitiesChanged(c)) => format!(
            "{} capabilities v{}{}: {}",
            name(&c.hive_id, &c.address),
            c.capabilities.as_ref().map_or(0, |c| c.version),
            if c.restarted { " (hive restarted, new epoch)" } else { "" },
            count(c.capabilities.as_ref().map_or(0, |c| c.gpus.len()), "GPU")
        ),
        Some(Event::ReservationDropped(r)) => format!(
            "{} reservation {} on {} dropped: {}",
            name(&r.hive_id, &r.address),
            r.reservation_id,
            r.device_id,
            r.reason
        ),
        Some(Event::Sample(s)) => {
            let sample = s.sample.as_ref();
            format!(
                "{} sample cpu {} ram {} gpus {} (age {})",
                name(&s.hive_id, &s.address),
                sample.and_then(|s| s.cpu_percent).map_or("-".into(), |p| format!("{p:.0}%")),
                sample.map_or("-".into(), |s| format_bytes(s.ram_used_bytes)),
                sample.map_or(0, |s| s.gpus.len()),
                duration_ms(s.sample_age_ms)
            )
        }
    };
    format!("{t} #{} {body}", e.seq)
}

/// Renders a placement answer.
pub fn render_place(r: &pb::PlaceResponse) -> String {
    use pb::place_response::Result as R;
    match &r.result {
        Some(R::Placement(p)) => {
            let mut out = format!(
                "placed on {}/{} ({}): {} {}, {} free after",
                p.hive_id,
                p.device_id,
                p.address,
                format_bytes(p.reserved_bytes),
                if p.reservation_id.is_empty() { "would be reserved (dry run)" } else { "reserved" },
                format_bytes(p.free_after_bytes),
            );
            if p.devices.len() > 1 {
                let _ = write!(
                    out,
                    "\ngang of {} GPUs ({}), {} on each:",
                    p.devices.len(),
                    if p.topology.is_empty() { "any" } else { p.topology.as_str() },
                    format_bytes(p.reserved_bytes)
                );
                for d in &p.devices {
                    let index = d.index.map_or("-".to_owned(), |i| i.to_string());
                    let _ = write!(
                        out,
                        "\n  GPU {index} {}: {} free after",
                        d.device_id,
                        format_bytes(d.free_after_bytes)
                    );
                }
            }
            if !p.reservation_id.is_empty() {
                let left = p.expires_at_unix_ms.saturating_sub(rbee_shared::time::now_unix_ms()) / 1000;
                let _ = write!(
                    out,
                    "\nreservation {} (expires in {left} s unless the model shows up)",
                    p.reservation_id
                );
            }
            if !p.reservation_token.is_empty() {
                // The placing caller's own secret: the worker carries it to settle this
                // reservation (nobody else can list it).
                let _ = write!(out, "\nstart the worker with RBEE_RESERVATION_TOKEN={}", p.reservation_token);
            }
            for note in &p.notes {
                let _ = write!(out, "\nnote: {note}");
            }
            let weights = match p.weights() {
                pb::WeightsLocation::Ram => "in RAM",
                pb::WeightsLocation::Disk => "on disk",
                pb::WeightsLocation::Absent => "absent",
                pb::WeightsLocation::Unspecified => "",
            };
            if !weights.is_empty() {
                let _ = write!(out, "\nweights {weights}");
                if let Some(ms) = p.estimated_load_ms {
                    let _ = write!(out, ", estimated load {}", duration_ms(ms));
                }
                if p.prefetching {
                    let _ = write!(out, "; prefetching");
                }
            }
            let _ = write!(
                out,
                "\npolicy {}{}",
                p.policy,
                if p.fallback { " (fallback: the configured policy failed)" } else { "" }
            );
            out + "\n"
        }
        Some(R::Rejection(rej)) => {
            let mut out = format!("rejected: {}\n", rej.reason);
            for r in &rej.hive_reasons {
                let _ = writeln!(out, "  - {r}");
            }
            out
        }
        None => "(empty answer)\n".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One name per state: every table (`queen hives`, `queen hive`, `queen top`) names a
    /// wire state by the domain's `as_str`, and a state the queen never sends is `?`
    /// everywhere (`queen top` used to print "unspecified" where the tables print "?").
    #[test]
    fn wire_states_are_named_by_the_domain() {
        use crate::cli::top::view;
        for s in [
            ConnState::Pending,
            ConnState::Connecting,
            ConnState::Online,
            ConnState::Stale,
            ConnState::Lost,
            ConnState::Removed,
        ] {
            let wire = pb::HiveState::from(s);
            assert_eq!(hive_state_name(wire), s.as_str());
            assert_eq!(view::state_name(wire), s.as_str());
        }
        for h in [Health::Healthy, Health::Pending, Health::Degraded, Health::Unhealthy] {
            assert_eq!(health_name(pb::Health::from(h)), h.as_str());
            assert_eq!(view::health_name(pb::Health::from(h)), h.as_str());
        }
        assert_eq!(hive_state_name(pb::HiveState::Unspecified), "?");
        assert_eq!(view::state_name(pb::HiveState::Unspecified), "?");
        assert_eq!(health_name(pb::Health::Unspecified), "?");
        assert_eq!(view::health_name(pb::Health::Unspecified), "?");
        // Event lines too (they used to print the wire enums' Debug names, "Online").
        let changed = pb::FleetEvent {
            event: Some(pb::fleet_event::Event::StateChanged(pb::HiveStateChanged {
                address: "http://127.0.0.1:1".into(),
                from: pb::HiveState::Connecting as i32,
                to: pb::HiveState::Online as i32,
                reason: "streaming".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        for k in [rbee_shared::DeviceSourceKind::Nvml, rbee_shared::DeviceSourceKind::Simulated] {
            let identity = pb::HiveIdentity::from(&rbee_shared::HiveIdentity {
                hive_id: "h".into(),
                epoch: "e".into(),
                hostname: String::new(),
                advertised_address: String::new(),
                version: String::new(),
                protocol_version: 1,
                labels: Default::default(),
                gpu_source: k,
                started_at_unix_ms: 0,
            });
            let v = pb::HiveView { identity: Some(identity), ..Default::default() };
            let text = render_detail(&v);
            assert!(text.contains(&format!("gpu source {}\n", k.as_str())), "{text}");
        }
        let line = render_event(&changed);
        assert!(line.contains("http://127.0.0.1:1 connecting -> online: streaming"), "{line}");
    }

    #[test]
    fn a_placement_tells_the_caller_how_to_start_its_worker() {
        let placed = |id: &str, token: &str| pb::PlaceResponse {
            result: Some(pb::place_response::Result::Placement(pb::Placement {
                reservation_id: id.into(),
                reservation_token: token.into(),
                ..Default::default()
            })),
        };
        let text = render_place(&placed("r-1", "0123456789abcdef0123456789abcdef"));
        assert!(text.contains("RBEE_RESERVATION_TOKEN=0123456789abcdef0123456789abcdef"), "{text}");
        assert!(!render_place(&placed("", "")).contains("RBEE_RESERVATION_TOKEN"), "a dry run has none");
    }

    /// A hive that reports 64 GPUs of 2^64-1 bytes, all of it used.
    fn absurd_hive() -> pb::HiveView {
        let gpus = (0..64)
            .map(|i| pb::GpuDevice {
                id: format!("GPU-{i}"),
                vram_total_bytes: u64::MAX,
                ..Default::default()
            })
            .collect();
        let samples = (0..64)
            .map(|i| pb::GpuSample {
                id: format!("GPU-{i}"),
                vram_used_bytes: Some(u64::MAX),
                ..Default::default()
            })
            .collect();
        pb::HiveView {
            hive_id: "huge".into(),
            address: "http://10.0.0.1:7835".into(),
            capabilities: Some(pb::Capabilities { gpus, ..Default::default() }),
            latest_sample: Some(pb::Sample { gpus: samples, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn vram_totals_saturate_instead_of_wrapping() {
        let v = absurd_hive();
        assert_eq!(vram(&v), (u64::MAX, u64::MAX));
        let table = render_table(std::slice::from_ref(&v));
        let full = format!("{}/{}", format_bytes(u64::MAX), format_bytes(u64::MAX));
        assert!(table.contains(&full), "{table}");
        assert!(render_detail(&v).contains("gpu"), "the detail view renders too");
    }

    #[test]
    fn counts_and_durations_read_as_english() {
        assert_eq!(count(1, "hive"), "1 hive");
        assert_eq!(count(0, "hive"), "0 hives");
        assert_eq!(count(2, "GPU"), "2 GPUs");
        assert_eq!(duration_ms(39), "39 ms");
        assert_eq!(duration_ms(1_500), "1.5 s");
        assert_eq!(duration_ms(42_000), "42 s");
        assert_eq!(duration_ms(200_000), "3 min 20 s");
    }

    #[test]
    fn a_short_load_estimate_is_not_rounded_to_zero() {
        let r = pb::PlaceResponse {
            result: Some(pb::place_response::Result::Placement(pb::Placement {
                weights: pb::WeightsLocation::Ram as i32,
                estimated_load_ms: Some(39),
                ..Default::default()
            })),
        };
        let text = render_place(&r);
        assert!(text.contains("estimated load 39 ms"), "{text}");
    }

    #[test]
    fn the_detail_has_no_stray_space_before_a_comma() {
        let v = pb::HiveView {
            identity: Some(pb::HiveIdentity { version: "0.1.0".into(), ..Default::default() }),
            ..Default::default()
        };
        let text = render_detail(&v);
        assert!(text.contains("(hive 0.1.0, protocol"), "{text}");
    }

    #[test]
    fn a_snapshot_of_one_hive_says_hive() {
        let e = pb::FleetEvent {
            event: Some(pb::fleet_event::Event::Snapshot(pb::FleetSnapshot {
                hives: vec![pb::HiveView::default()],
                coalesced: false,
                more: false,
                reset: false,
            })),
            ..Default::default()
        };
        assert!(
            render_event(&e).contains("snapshot: 1 hive\n") || render_event(&e).ends_with("snapshot: 1 hive")
        );
    }

    #[test]
    fn ordinary_totals_add_up() {
        assert_eq!(saturating_total([1, 2, 3]), 6);
        assert_eq!(saturating_total([u64::MAX - 1, 1]), u64::MAX);
        assert_eq!(saturating_total([u64::MAX, 1]), u64::MAX);
        assert_eq!(saturating_total([]), 0);
    }
}
