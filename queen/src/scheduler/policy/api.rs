//! The API that policies see: the natives registered with Rhai for the request, the
//! fleet, hives and devices, and the helpers (`reject`, `gib`, sorting).
//!
//! Every native that walks the fleet or an array charges one operation per element (see
//! [`super::sandbox::charge`]), so it counts against the operation limit and checks the
//! wall-time deadline.

use rhai::{Array, Dynamic, Engine, EvalAltResult, INT, ImmutableString, Map};

use super::MAX_RANKED;
use super::sandbox::charge;
use crate::fleet::Health;
use crate::scheduler::request::PlaceRequest;
use crate::scheduler::view::{self, DeviceRef, FleetView, HiveRef};
use crate::scheduler::weights;

/// What a fallible native returns.
type Native<T> = Result<T, Box<EvalAltResult>>;

fn opt_f(v: Option<f32>) -> Dynamic {
    v.map_or(Dynamic::UNIT, |x| Dynamic::from_float(f64::from(x) as rhai::FLOAT))
}

fn opt_i(v: Option<u64>) -> Dynamic {
    v.map_or(Dynamic::UNIT, |x| Dynamic::from_int(int(x)))
}

fn int(v: u64) -> INT {
    INT::try_from(v).unwrap_or(INT::MAX)
}

fn map_of(labels: &std::collections::BTreeMap<String, String>) -> Map {
    labels.iter().map(|(k, v)| (k.as_str().into(), Dynamic::from(v.clone()))).collect()
}

fn devices_of(h: &HiveRef) -> Native<Array> {
    charge(1 + h.hive.caps.as_ref().map_or(0, |c| c.caps.gpus.len()))?;
    let locked = view::read(&h.book);
    let books = view::Books { locked: &locked, shared: &h.book };
    let mut out: Array = Vec::new();
    // The GPUs as the placement summary joined them, in index order.
    for d in view::gpu_refs(&h.hive, &books) {
        out.push(Dynamic::from(d));
    }
    if let Some(d) = view::cpu_ref(&h.hive, &books) {
        out.push(Dynamic::from(d));
    }
    Ok(out)
}

fn opt_s(v: Option<&String>) -> Dynamic {
    v.map_or(Dynamic::UNIT, |s| Dynamic::from(s.clone()))
}

/// `device.processes`: an array of maps, or `()` when the hive does not list them.
fn processes_of(d: &DeviceRef) -> Native<Dynamic> {
    let Some(p) = d.processes() else { return Ok(Dynamic::UNIT) };
    charge(p.listed.len())?;
    Ok(Dynamic::from_array(
        p.listed
            .iter()
            .map(|p| {
                let mut m = Map::new();
                m.insert("pid".into(), Dynamic::from_int(INT::from(p.pid)));
                m.insert("vram".into(), opt_i(p.used_vram_bytes));
                m.insert("name".into(), opt_s(p.name.as_ref()));
                m.insert("rss".into(), opt_i(p.rss_bytes));
                m.insert("cpu".into(), opt_f(p.cpu_percent));
                m.insert("cgroup".into(), opt_s(p.cgroup.as_ref()));
                m.insert("container".into(), opt_s(p.container_id.as_ref()));
                m.insert("runtime".into(), opt_s(p.container_runtime.as_ref()));
                m.insert("unit".into(), opt_s(p.systemd_unit.as_ref()));
                m.insert("cgroup_memory".into(), opt_i(p.cgroup_memory_bytes));
                m.insert("reservation".into(), opt_s(p.reservation_id.as_ref()));
                Dynamic::from_map(m)
            })
            .collect(),
    ))
}

/// `hive.models`: id -> #{ state, bytes, resident_bytes } (resident `()` when not
/// measured).
fn models_of(h: &HiveRef) -> Map {
    let Some(caps) = h.hive.caps.as_ref() else { return Map::new() };
    caps.caps
        .models
        .iter()
        .map(|(id, m)| {
            let mut e = Map::new();
            e.insert("state".into(), Dynamic::from(m.state.as_str().to_owned()));
            e.insert("bytes".into(), Dynamic::from(int(m.size_bytes)));
            e.insert("resident_bytes".into(), opt_i(m.resident_bytes));
            e.insert("warm".into(), Dynamic::from(m.warm));
            (id.as_str().into(), Dynamic::from(e))
        })
        .collect()
}

fn device_array(arr: Array) -> Native<Vec<DeviceRef>> {
    // Sorting costs n log n comparisons; charge that.
    charge(arr.len().saturating_mul(arr.len().max(2).ilog2() as usize))?;
    Ok(arr.into_iter().filter_map(|d| d.try_cast::<DeviceRef>()).collect())
}

/// Registers the policy API.
pub fn register(engine: &mut Engine) {
    engine
        .register_type_with_name::<PlaceRequest>("Request")
        .register_get("model", |r: &mut PlaceRequest| r.model.clone())
        .register_get("vram", |r: &mut PlaceRequest| int(r.vram_bytes))
        .register_get("ram", |r: &mut PlaceRequest| opt_i(r.ram_bytes))
        .register_get("kind", |r: &mut PlaceRequest| r.kind.as_str().to_owned())
        .register_get("labels", |r: &mut PlaceRequest| map_of(&r.labels))
        .register_get("dry_run", |r: &mut PlaceRequest| r.dry_run)
        .register_fn("without_label", |r: &mut PlaceRequest, key: ImmutableString| -> PlaceRequest {
            let mut r = r.clone();
            r.labels.remove(key.as_str());
            r
        });

    engine
        .register_type_with_name::<FleetView>("Fleet")
        .register_get("hives", |f: &mut FleetView| -> Native<Array> {
            charge(f.hives.len())?;
            Ok(f.hives
                .iter()
                .map(|h| Dynamic::from(HiveRef { hive: h.clone(), book: f.book.clone() }))
                .collect())
        })
        .register_fn("len", |f: &mut FleetView| f.hives.len() as INT)
        .register_fn("hive", |f: &mut FleetView, key: ImmutableString| -> Native<Dynamic> {
            charge(f.hives.len())?;
            Ok(f.hives
                .iter()
                .find(|h| h.matches(key.as_str()))
                .map_or(Dynamic::UNIT, |h| Dynamic::from(HiveRef { hive: h.clone(), book: f.book.clone() })))
        })
        .register_fn("candidates", |f: &mut FleetView, r: PlaceRequest| -> Native<Array> {
            charge(f.elements())?;
            Ok(view::assess(f, &r, false).0.into_iter().map(Dynamic::from).collect())
        })
        .register_fn("least_loaded", |f: &mut FleetView, r: PlaceRequest, n: INT| -> Native<Array> {
            charge(f.elements())?;
            let n = usize::try_from(n).unwrap_or(0).min(MAX_RANKED);
            Ok(view::rank(f, &r, view::Order::LeastLoaded, n).into_iter().map(Dynamic::from).collect())
        })
        .register_fn("nearest_weights", |f: &mut FleetView, r: PlaceRequest, n: INT| -> Native<Array> {
            charge(f.elements())?;
            let n = usize::try_from(n).unwrap_or(0).min(MAX_RANKED);
            Ok(view::rank(f, &r, view::Order::NearestWeights, n).into_iter().map(Dynamic::from).collect())
        })
        .register_fn("why_no_fit", |f: &mut FleetView, r: PlaceRequest| -> Native<String> {
            charge(f.elements())?;
            Ok(view::why_no_fit(f, &r))
        })
        .register_fn("bin_pack", |f: &mut FleetView, r: PlaceRequest, n: INT| -> Native<Array> {
            charge(f.elements())?;
            let n = usize::try_from(n).unwrap_or(0).min(MAX_RANKED);
            Ok(view::rank(f, &r, view::Order::BinPack, n).into_iter().map(Dynamic::from).collect())
        });

    engine
        .register_type_with_name::<HiveRef>("Hive")
        .register_get("id", |h: &mut HiveRef| h.hive.hive_id().to_owned())
        .register_get("address", |h: &mut HiveRef| h.hive.address.clone())
        .register_get("state", |h: &mut HiveRef| h.hive.state.as_str().to_owned())
        .register_get("online", |h: &mut HiveRef| h.hive.state == crate::fleet::ConnState::Online)
        .register_get("health", |h: &mut HiveRef| h.hive.health.health.as_str().to_owned())
        .register_get("healthy", |h: &mut HiveRef| h.hive.health.placement == Health::Healthy)
        .register_get("cpu_busy", |h: &mut HiveRef| h.hive.health.cpu_busy.is_some())
        .register_get("reasons", |h: &mut HiveRef| -> Native<Array> {
            charge(h.hive.health.reasons.len())?;
            Ok(h.hive.health.reasons.iter().map(|r| Dynamic::from(r.clone())).collect())
        })
        .register_get("labels", |h: &mut HiveRef| {
            h.hive.caps.as_ref().map(|c| map_of(&c.caps.labels)).unwrap_or_default()
        })
        .register_get("cpu", |h: &mut HiveRef| opt_f(h.hive.latest.as_ref().and_then(|s| s.cpu_percent)))
        .register_get("cpu_mean", |h: &mut HiveRef| opt_f(h.hive.stats.cpu_mean_percent))
        .register_get("ram_total", |h: &mut HiveRef| opt_i(h.hive.latest.as_ref().map(|s| s.ram_total_bytes)))
        .register_get("ram_used", |h: &mut HiveRef| opt_i(h.hive.latest.as_ref().map(|s| s.ram_used_bytes)))
        .register_get("ram_available", |h: &mut HiveRef| {
            opt_i(h.hive.latest.as_ref().map(|s| s.ram_available_bytes))
        })
        .register_get("uptime", |h: &mut HiveRef| opt_i(h.hive.latest.as_ref().and_then(|s| s.uptime_s)))
        .register_get("age_ms", |h: &mut HiveRef| opt_i(h.hive.sample_age().map(|a| a.as_millis() as u64)))
        .register_get("devices", |h: &mut HiveRef| devices_of(h))
        .register_get("models", |h: &mut HiveRef| -> Native<Map> {
            charge(h.hive.caps.as_ref().map_or(0, |c| c.caps.models.len()))?;
            Ok(models_of(h))
        })
        .register_fn("has_model", |h: &mut HiveRef, id: ImmutableString| {
            weights::tier(&h.hive, id.as_str()) != weights::Tier::Absent
        })
        .register_fn("resident_fraction", |h: &mut HiveRef, id: ImmutableString| {
            weights::resident_fraction(&h.hive, id.as_str()) as rhai::FLOAT
        })
        .register_fn("weights", |h: &mut HiveRef, id: ImmutableString| {
            weights::tier(&h.hive, id.as_str()).as_str().to_owned()
        });

    engine
        .register_type_with_name::<DeviceRef>("Device")
        .register_get("id", |d: &mut DeviceRef| d.id.clone())
        .register_get("index", |d: &mut DeviceRef| {
            d.gpu().map_or(Dynamic::UNIT, |g| Dynamic::from_int(INT::from(g.index)))
        })
        .register_get(
            "kind",
            |d: &mut DeviceRef| if d.is_cpu() { "cpu".to_owned() } else { "cuda".to_owned() },
        )
        .register_get("name", |d: &mut DeviceRef| {
            d.gpu().map_or_else(|| "cpu".to_owned(), |g| g.name.clone())
        })
        .register_get("vram_total", |d: &mut DeviceRef| int(d.total))
        .register_get("vram_used", |d: &mut DeviceRef| int(d.used))
        .register_get("vram_free", |d: &mut DeviceRef| int(d.free))
        .register_get("util", |d: &mut DeviceRef| opt_f(d.util()))
        .register_get("temperature", |d: &mut DeviceRef| opt_f(d.live().and_then(|g| g.temperature_c)))
        .register_get("power_w", |d: &mut DeviceRef| {
            opt_f(d.live().and_then(|g| g.power_draw_mw).map(|mw| mw as f32 / 1000.0))
        })
        .register_get("health", |d: &mut DeviceRef| d.health().as_str().to_owned())
        .register_get("processes", |d: &mut DeviceRef| processes_of(d))
        .register_get("unattributed_vram", |d: &mut DeviceRef| {
            opt_i(d.live().and_then(|g| g.unattributed_vram_bytes))
        })
        .register_get("hive", |d: &mut DeviceRef| HiveRef { hive: d.hive.clone(), book: d.book.clone() });

    engine
        .register_fn("sort_least_loaded", |arr: Array| -> Native<Array> {
            let mut d = device_array(arr)?;
            view::sort_least_loaded(&mut d);
            Ok(d.into_iter().map(Dynamic::from).collect())
        })
        .register_fn("sort_bin_pack", |arr: Array| -> Native<Array> {
            let mut d = device_array(arr)?;
            view::sort_bin_pack(&mut d);
            Ok(d.into_iter().map(Dynamic::from).collect())
        })
        .register_fn("reject", |reason: ImmutableString| -> Map {
            let mut m = Map::new();
            // Bounded when the decision is read.
            m.insert("reject".into(), Dynamic::from(reason));
            m
        })
        .register_fn("gib", |n: INT| n.saturating_mul(1 << 30))
        .register_fn("gib", |n: rhai::FLOAT| (n * (1u64 << 30) as rhai::FLOAT) as INT)
        .register_fn("format_bytes", |n: INT| {
            rbee_shared::bytesize::format_bytes(u64::try_from(n).unwrap_or(0))
        });
}
