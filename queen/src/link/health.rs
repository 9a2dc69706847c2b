//! Health per hive and per device: `healthy`, `degraded` or `unhealthy`, each with
//! human-readable reasons. Pure functions over a view of the hive; thresholds are
//! configurable.
//!
//! What a hive says about time is checked against the queen's clock, never trusted to
//! be sane: a sample stamped more than `health.max_clock_skew` away from when it arrived,
//! or an uptime longer than the time since 1970, is a degraded reason; the arithmetic
//! on such figures saturates (a `u64::MAX` stamp never overflows).
//!
//! NVLink links that go down are compared against what the hive reported before
//! ([`super::nvlink_baseline::NvlinkBaseline`]): a pair with fewer links than the most it had is a degraded
//! reason ("GPU-x: NVLink to GPU-y down (12 -> 0 links)") until the links come back.
//! Placement of single GPUs does not judge it; gangs read the links themselves.

use std::time::Duration;

use rbee_shared::{Sample, VersionedCapabilities};

use crate::fleet::{ConnState, CpuBusy, DeviceHealth, Health, HealthReport, Thresholds, join_by_id};

/// What health is judged on.
#[derive(Clone, Copy)]
pub struct HealthInput<'a> {
    /// The connection state.
    pub state: ConnState,
    /// Time since the last message, when connected.
    pub silence: Option<Duration>,
    /// Why the connection ended, when lost.
    pub last_error: Option<&'a str>,
    /// A validation failure in the hive's data, until a good snapshot replaces it.
    pub invalid: Option<&'a str>,
    /// The newest sample.
    pub sample: Option<&'a Sample>,
    /// The capabilities.
    pub caps: Option<&'a VersionedCapabilities>,
    /// CPU mean over the health window.
    pub cpu_window_mean: Option<f32>,
    /// The queen's wall clock (unix ms) when the newest sample arrived.
    pub received_unix_ms: Option<u64>,
    /// True for a GPU the hive added after the newest sample was measured: it has no
    /// reading yet, and is `pending` rather than missing.
    pub pending: &'a dyn Fn(&str) -> bool,
    /// NVLink pairs with fewer links than before
    /// ([`super::nvlink_baseline::NvlinkBaseline::update`]).
    pub links_down: &'a [String],
}

fn push(report: &mut HealthReport, level: Health, reason: String) {
    report.placement = report.placement.max(level);
    notice(report, level, reason);
}

/// A reason shown at `level` that placement does not judge (see
/// [`HealthReport::placement`]).
fn notice(report: &mut HealthReport, level: Health, reason: String) {
    report.health = report.health.max(level);
    report.reasons.push(reason);
}

/// XID codes after which a GPU cannot be trusted with work until someone acts: 48
/// (double-bit ECC error), 79 (fell off the bus), 92 (high single-bit ECC rate), 94
/// and 95 (contained and uncontained ECC errors), 119 and 120 (GSP errors). Other
/// critical XIDs degrade it.
pub const FATAL_XIDS: &[u64] = &[48, 79, 92, 94, 95, 119, 120];

/// `hive_ms - queen_ms`, saturated to the range of `i64` (a hostile stamp of `u64::MAX`
/// gives `i64::MAX`, not an overflow).
pub fn skew_ms(hive_ms: u64, queen_ms: u64) -> i64 {
    let d = i128::from(hive_ms) - i128::from(queen_ms);
    i64::try_from(d).unwrap_or(if d > 0 { i64::MAX } else { i64::MIN })
}

/// Reasons why a sample's clock cannot be believed: its `taken_at` too far from the
/// queen's clock when it arrived (`received_ms`), or an uptime longer than the time
/// since 1970 by the queen's clock.
fn implausible_times(s: &Sample, received_ms: u64, t: &Thresholds) -> Vec<String> {
    let mut out = Vec::new();
    let skew = skew_ms(s.taken_at_unix_ms, received_ms);
    let max = i64::try_from(t.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
    if skew.unsigned_abs() > max.unsigned_abs() {
        let side = if skew > 0 { "ahead of" } else { "behind" };
        out.push(format!(
            "sample time {} s {side} the queen's clock (limit {} s, health.max_clock_skew)",
            skew.unsigned_abs() / 1000,
            t.max_clock_skew.as_secs()
        ));
    }
    if let Some(up) = s.uptime_s
        && up > received_ms / 1000
    {
        out.push(format!("implausible uptime {up} s: longer than the queen's clock since 1970"));
    }
    out
}

fn percent(used: u64, total: u64) -> Option<f32> {
    (total > 0).then(|| (used as f64 / total as f64 * 100.0) as f32)
}

/// A GPU's short name in reasons ("gpu3"), formatted only into a reason that is made.
struct GpuName(u32);

impl std::fmt::Display for GpuName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gpu{}", self.0)
    }
}

/// Judges a hive.
pub fn evaluate(input: &HealthInput<'_>, t: &Thresholds) -> HealthReport {
    let mut r = HealthReport::default();
    evaluate_into(input, t, &mut r);
    r
}

/// [`evaluate`] written over `r`, reusing its allocations (the device list, the device
/// id strings): a link refills the report it published before last
/// ([`super::recycle`]), so a healthy hive's sample costs no allocation here.
pub fn evaluate_into(input: &HealthInput<'_>, t: &Thresholds, r: &mut HealthReport) {
    let mut devices = std::mem::take(&mut r.devices);
    r.health = Health::Healthy;
    r.placement = Health::Healthy;
    r.cpu_busy = None;
    r.reasons.clear();
    let used = judge(input, t, r, &mut devices);
    devices.truncate(used);
    r.devices = devices;
}

/// The rules, into a cleared `r`; device entries go into `devices` from the start,
/// reusing the ones there. Returns how many devices were judged.
fn judge(
    input: &HealthInput<'_>,
    t: &Thresholds,
    r: &mut HealthReport,
    devices: &mut Vec<DeviceHealth>,
) -> usize {
    let mut used = 0;
    match input.state {
        ConnState::Online => {}
        ConnState::Stale => {
            let s = input.silence.map_or(0.0, |d| d.as_secs_f64());
            push(r, Health::Degraded, format!("no sample for {s:.1} s"));
        }
        ConnState::Lost => {
            let why = input.last_error.unwrap_or("connection lost");
            push(r, Health::Unhealthy, format!("lost: {why}"));
        }
        ConnState::Pending | ConnState::Connecting => {
            push(r, Health::Unhealthy, "not connected yet".to_owned());
        }
        ConnState::Removed => push(r, Health::Unhealthy, "removed".to_owned()),
    }
    if let Some(why) = input.invalid {
        push(r, Health::Unhealthy, format!("invalid data from hive: {why}"));
    }
    for reason in input.links_down {
        notice(r, Health::Degraded, reason.clone());
    }
    if let Some(s) = input.sample.filter(|s| !s.cuts.is_empty()) {
        notice(r, Health::Degraded, format!("view cut to its budgets: {}", s.cuts.join("; ")));
    }
    if let Some(cpu) = input.cpu_window_mean
        && cpu >= t.cpu_degraded_percent
    {
        // A reason, not a placement veto: GPU work still goes there (see
        // `HealthReport::cpu_busy`).
        let reason =
            format!("cpu {cpu:.0}% ({} s mean) >= {:.0}%", t.cpu_window.as_secs(), t.cpu_degraded_percent);
        r.cpu_busy = Some(CpuBusy { limit_percent: t.cpu_degraded_percent, reason: reason.clone() });
        notice(r, Health::Degraded, reason);
    }
    if let Some(s) = input.sample {
        if let Some(received) = input.received_unix_ms {
            for reason in implausible_times(s, received, t) {
                push(r, Health::Degraded, reason);
            }
        }
        if let Some(ram) = percent(s.ram_used_bytes, s.ram_total_bytes) {
            if ram >= t.ram_unhealthy_percent {
                push(r, Health::Unhealthy, format!("ram {ram:.0}% >= {:.0}%", t.ram_unhealthy_percent));
            } else if ram >= t.ram_degraded_percent {
                push(r, Health::Degraded, format!("ram {ram:.0}% >= {:.0}%", t.ram_degraded_percent));
            }
        }
        if let Some(caps) = input.caps {
            // Health is an input of the placement summary, so it cannot read the
            // summary's join; it matches a GPU's reading by the same rule (`join_by_id`).
            for (i, gpu) in caps.caps.gpus_by_index().into_iter().enumerate() {
                if devices.len() <= used {
                    devices.push(DeviceHealth {
                        device_id: String::new(),
                        index: 0,
                        health: Health::Healthy,
                        reasons: vec![],
                    });
                }
                let d = &mut devices[used];
                used += 1;
                d.device_id.clone_from(&gpu.id);
                d.index = gpu.index;
                d.health = Health::Healthy;
                d.reasons.clear();
                let mut flag = |level: Health, reason: String| {
                    d.health = d.health.max(level);
                    d.reasons.push(reason);
                };
                let name = GpuName(gpu.index);
                match join_by_id(&s.gpus, i, &gpu.id, |g| &g.id).map(|j| &s.gpus[j]) {
                    None if (input.pending)(&gpu.id) => {
                        d.health = Health::Pending;
                        d.reasons.push(format!("{name} pending: added since the latest sample"));
                    }
                    None => flag(Health::Unhealthy, format!("{name} missing from the latest sample")),
                    Some(g) => {
                        if let Some(temp) = g.temperature_c {
                            if temp >= t.gpu_temp_unhealthy_c {
                                flag(
                                    Health::Unhealthy,
                                    format!(
                                        "{name} temperature {temp:.0} C >= {:.0} C",
                                        t.gpu_temp_unhealthy_c
                                    ),
                                );
                            } else if temp >= t.gpu_temp_degraded_c {
                                flag(
                                    Health::Degraded,
                                    format!(
                                        "{name} temperature {temp:.0} C >= {:.0} C",
                                        t.gpu_temp_degraded_c
                                    ),
                                );
                            }
                        }
                        if let Some(vram) = g.vram_used_bytes.and_then(|u| percent(u, gpu.vram_total_bytes))
                            && vram >= t.vram_degraded_percent
                        {
                            flag(
                                Health::Degraded,
                                format!("{name} vram {vram:.0}% >= {:.0}%", t.vram_degraded_percent),
                            );
                        }
                        // Uncorrected errors mean memory content was lost: no new work.
                        if let Some(n) = g.ecc_uncorrected_volatile.filter(|n| *n > 0) {
                            flag(Health::Unhealthy, format!("{name} {n} uncorrected ECC errors"));
                        }
                        if let Some(n) = g.xid_events.filter(|n| *n > 0) {
                            let last = g.last_xid.map_or(String::new(), |x| format!(" (last XID {x})"));
                            let level = match g.last_xid {
                                Some(x) if FATAL_XIDS.contains(&x) => Health::Unhealthy,
                                _ => Health::Degraded,
                            };
                            flag(level, format!("{name} {n} critical XID events{last}"));
                        }
                    }
                }
                // A pending device waits for its first reading; it is no problem of the hive's.
                if d.health != Health::Pending {
                    r.health = r.health.max(d.health);
                    r.reasons.extend(d.reasons.iter().cloned());
                }
            }
        }
        // A GPU that stopped answering is out of the capabilities, so it has no device
        // entry: the hive carries on with the others, degraded, and says which and why.
        for lost in &s.lost_gpus {
            let id = lost.id.as_deref().map_or(String::new(), |id| format!(" ({id})"));
            push(r, Health::Degraded, format!("gpu{}{id} does not answer: {}", lost.index, lost.reason));
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_shared::{Capabilities, GpuDevice, GpuSample, MigMode};

    fn caps() -> VersionedCapabilities {
        let mut c = Capabilities::default();
        c.gpus.insert(
            "GPU-0".into(),
            GpuDevice {
                id: "GPU-0".into(),
                index: 0,
                name: "x".into(),
                pci_bus_id: String::new(),
                compute_capability: None,
                vram_total_bytes: 100,
                driver_version: None,
                cuda_version: None,
                power_limit_mw: None,
                mig_mode: MigMode::NotReported,
                topology: Default::default(),
            },
        );
        VersionedCapabilities { version: 1, caps: c }
    }

    fn sample(ram_used: u64, temp: f32) -> Sample {
        Sample {
            ram_total_bytes: 100,
            ram_used_bytes: ram_used,
            gpus: vec![GpuSample {
                id: "GPU-0".into(),
                temperature_c: Some(temp),
                vram_used_bytes: Some(10),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn input<'a>(s: &'a Sample, c: &'a VersionedCapabilities) -> HealthInput<'a> {
        HealthInput {
            state: ConnState::Online,
            silence: None,
            last_error: None,
            invalid: None,
            sample: Some(s),
            caps: Some(c),
            cpu_window_mean: Some(20.0),
            received_unix_ms: Some(s.taken_at_unix_ms.saturating_add(300)),
            pending: &|_| false,
            links_down: &[],
        }
    }

    /// A report refilled in place, over any earlier one (more or fewer devices, other
    /// ids, reasons, a busy CPU, stale), equals a fresh one.
    #[test]
    fn a_report_refilled_in_place_equals_a_fresh_one() {
        let t = Thresholds::default();
        let mut two = caps();
        let mut second = two.caps.gpus["GPU-0"].clone();
        (second.id, second.index) = ("GPU-1".into(), 1);
        two.caps.gpus.insert("GPU-1".into(), second);
        let no_gpus = VersionedCapabilities::default();
        let hot = sample(99, 95.0);
        let calm = sample(10, 30.0);
        let mut xid = sample(10, 30.0);
        (xid.gpus[0].xid_events, xid.gpus[0].last_xid) = (Some(2), Some(79));
        let cases: Vec<HealthInput<'_>> = vec![
            input(&hot, &two),
            input(&calm, &two),
            HealthInput { cpu_window_mean: Some(99.0), ..input(&xid, &two) },
            input(&calm, &no_gpus),
            HealthInput {
                state: ConnState::Stale,
                silence: Some(Duration::from_secs(4)),
                ..input(&hot, &two)
            },
            input(&xid, &two),
            input(&calm, &two),
        ];
        for (a, first) in cases.iter().enumerate() {
            for (b, then) in cases.iter().enumerate() {
                let mut reused = evaluate(first, &t);
                evaluate_into(then, &t, &mut reused);
                assert_eq!(reused, evaluate(then, &t), "case {b} over case {a}");
            }
        }
    }

    #[test]
    fn a_calm_hive_is_healthy() {
        let (s, c) = (sample(50, 50.0), caps());
        let r = evaluate(&input(&s, &c), &Thresholds::default());
        assert_eq!(r.health, Health::Healthy, "{:?}", r.reasons);
        assert_eq!(r.devices[0].health, Health::Healthy);
    }

    #[test]
    fn a_hot_gpu_makes_the_device_and_hive_unhealthy_with_a_reason() {
        let (s, c) = (sample(50, 92.0), caps());
        let r = evaluate(&input(&s, &c), &Thresholds::default());
        assert_eq!(r.health, Health::Unhealthy);
        assert_eq!(r.devices[0].reasons, ["gpu0 temperature 92 C >= 90 C"]);
        assert!(r.reasons.contains(&"gpu0 temperature 92 C >= 90 C".to_string()));
    }

    #[test]
    fn fatal_xids_and_uncorrected_ecc_make_the_device_unhealthy() {
        let c = caps();
        let mut s = sample(10, 40.0);
        s.gpus[0].xid_events = Some(1);
        s.gpus[0].last_xid = Some(13);
        let r = evaluate(&input(&s, &c), &Thresholds::default());
        assert_eq!(r.devices[0].health, Health::Degraded, "an ordinary XID degrades");
        s.gpus[0].last_xid = Some(79);
        let r = evaluate(&input(&s, &c), &Thresholds::default());
        assert_eq!(r.devices[0].health, Health::Unhealthy);
        assert_eq!(r.devices[0].reasons, ["gpu0 1 critical XID events (last XID 79)"]);
        let mut s = sample(10, 40.0);
        s.gpus[0].ecc_uncorrected_volatile = Some(2);
        let r = evaluate(&input(&s, &c), &Thresholds::default());
        assert_eq!((r.health, r.devices[0].health), (Health::Unhealthy, Health::Unhealthy));
        assert_eq!(r.devices[0].reasons, ["gpu0 2 uncorrected ECC errors"]);
    }

    #[test]
    fn a_gpu_that_does_not_answer_is_a_reason_until_it_does() {
        let c = caps();
        let mut s = sample(10, 40.0);
        s.lost_gpus.push(rbee_shared::LostGpu {
            index: 1,
            id: Some("GPU-1".into()),
            reason: "open: GPU_IS_LOST: device fell off the bus".into(),
            since_unix_ms: 1,
        });
        let r = evaluate(&input(&s, &c), &Thresholds::default());
        assert_eq!(r.health, Health::Degraded);
        assert_eq!(r.reasons, ["gpu1 (GPU-1) does not answer: open: GPU_IS_LOST: device fell off the bus"]);
        assert_eq!(r.devices[0].health, Health::Healthy, "the other GPU still serves");
    }

    #[test]
    fn ram_pressure_is_graded() {
        let c = caps();
        let s = sample(92, 40.0);
        assert_eq!(evaluate(&input(&s, &c), &Thresholds::default()).reasons, ["ram 92% >= 90%"]);
        let s = sample(98, 40.0);
        let r = evaluate(&input(&s, &c), &Thresholds::default());
        assert_eq!(
            (r.health, r.reasons.as_slice()),
            (Health::Unhealthy, ["ram 98% >= 97%".to_string()].as_slice())
        );
    }

    #[test]
    fn cpu_is_judged_on_the_window_mean_not_a_spike() {
        let (mut s, c) = (sample(10, 40.0), caps());
        s.cpu_percent = Some(100.0);
        let mut i = input(&s, &c);
        i.cpu_window_mean = Some(40.0);
        assert_eq!(evaluate(&i, &Thresholds::default()).health, Health::Healthy);
        i.cpu_window_mean = Some(97.0);
        assert_eq!(evaluate(&i, &Thresholds::default()).reasons, ["cpu 97% (10 s mean) >= 95%"]);
    }

    /// CPU load degrades the hive and is a reason, but placement of GPU work still
    /// judges it healthy; the reason and threshold are kept for CPU work and answers.
    #[test]
    fn a_busy_cpu_is_a_reason_not_a_placement_veto() {
        let (s, c) = (sample(10, 40.0), caps());
        let mut i = input(&s, &c);
        i.cpu_window_mean = Some(97.0);
        let r = evaluate(&i, &Thresholds::default());
        assert_eq!((r.health, r.placement), (Health::Degraded, Health::Healthy));
        let busy = r.cpu_busy.unwrap();
        assert_eq!((busy.limit_percent, busy.reason.as_str()), (95.0, "cpu 97% (10 s mean) >= 95%"));
    }

    #[test]
    fn stale_and_lost_say_why() {
        let (s, c) = (sample(10, 40.0), caps());
        let mut i = input(&s, &c);
        i.state = ConnState::Stale;
        i.silence = Some(Duration::from_millis(4100));
        let r = evaluate(&i, &Thresholds::default());
        assert_eq!((r.health, r.reasons[0].as_str()), (Health::Degraded, "no sample for 4.1 s"));
        i.state = ConnState::Lost;
        i.last_error = Some("stream reset");
        assert_eq!(evaluate(&i, &Thresholds::default()).reasons[0], "lost: stream reset");
    }

    #[test]
    fn implausible_sample_times_and_uptimes_degrade_without_overflow() {
        let c = caps();
        let now = 1_780_000_000_000;
        let mut s = sample(10, 40.0);
        s.taken_at_unix_ms = now - 500;
        s.uptime_s = Some(86_400);
        let mut i = input(&s, &c);
        i.received_unix_ms = Some(now);
        assert_eq!(evaluate(&i, &Thresholds::default()).health, Health::Healthy);
        let mut s = sample(10, 40.0);
        s.taken_at_unix_ms = u64::MAX;
        s.uptime_s = Some(u64::MAX);
        let mut i = input(&s, &c);
        i.received_unix_ms = Some(now);
        let r = evaluate(&i, &Thresholds::default());
        assert_eq!(r.health, Health::Degraded);
        assert_eq!(r.reasons.len(), 2, "{:?}", r.reasons);
        assert!(
            r.reasons[0].starts_with("sample time ") && r.reasons[0].contains("s ahead of the queen's clock")
        );
        assert!(r.reasons[1].starts_with("implausible uptime 18446744073709551615 s"), "{:?}", r.reasons);
        let mut s = sample(10, 40.0);
        s.taken_at_unix_ms = now - 3_600_000;
        let mut i = input(&s, &c);
        i.received_unix_ms = Some(now);
        let r = evaluate(&i, &Thresholds::default());
        assert_eq!(
            r.reasons,
            ["sample time 3600 s behind the queen's clock (limit 60 s, health.max_clock_skew)"]
        );
        let mut s = sample(10, 40.0);
        s.taken_at_unix_ms = 0;
        let mut i = input(&s, &c);
        i.received_unix_ms = Some(now);
        assert_eq!(evaluate(&i, &Thresholds::default()).health, Health::Degraded);
        assert_eq!(skew_ms(u64::MAX, 0), i64::MAX);
        assert_eq!(skew_ms(0, u64::MAX), i64::MIN);
        assert_eq!(skew_ms(5, 7), -2);
    }

    #[test]
    fn inconsistent_thresholds_are_refused() {
        let t =
            Thresholds { ram_degraded_percent: 99.0, ram_unhealthy_percent: 90.0, ..Thresholds::default() };
        assert!(t.validate().is_err());
        assert!(Thresholds::default().validate().is_ok());
    }

    #[test]
    fn an_nvlink_that_went_down_is_a_degraded_reason_placement_does_not_judge() {
        let (s, c) = (sample(10, 40.0), caps());
        let reasons = ["GPU-x: NVLink to GPU-y down (12 -> 0 links)".to_string()];
        let mut i = input(&s, &c);
        i.links_down = &reasons;
        let r = evaluate(&i, &Thresholds::default());
        assert_eq!((r.health, r.placement), (Health::Degraded, Health::Healthy), "single GPUs still place");
        assert_eq!(r.reasons, reasons);
    }
}
