//! The policy API for gangs (requests of several GPUs on one hive) and topology:
//! `request.gpus`, `request.topology`, `device.numa`, `device.nvlink_peers`,
//! `device.mig_parent`, `hive.gangs(request)`, `fleet.best_gangs(request, n)`, and the
//! `Gang` type a policy returns (or ranks in an array).

use rhai::{Array, Dynamic, Engine, EvalAltResult, INT};

use super::MAX_RANKED;
use super::sandbox::charge;
use crate::scheduler::gang::{self, Gang};
use crate::scheduler::request::PlaceRequest;
use crate::scheduler::view::{DeviceRef, FleetView, HiveRef};

/// What a fallible native returns.
type Native<T> = Result<T, Box<EvalAltResult>>;

/// Registers the gang API.
pub fn register(engine: &mut Engine) {
    engine
        .register_get("gpus", |r: &mut PlaceRequest| INT::from(r.gpus))
        .register_get("topology", |r: &mut PlaceRequest| r.topology.as_str().to_owned());

    engine
        .register_get("numa", |d: &mut DeviceRef| {
            d.gpu()
                .and_then(|g| g.topology.numa_node)
                .map_or(Dynamic::UNIT, |n| Dynamic::from_int(INT::from(n)))
        })
        .register_get("nvlink_peers", |d: &mut DeviceRef| -> Array {
            d.gpu()
                .map(|g| g.topology.nvlink_peers().map(|p| Dynamic::from(p.to_owned())).collect())
                .unwrap_or_default()
        })
        .register_get("mig_parent", |d: &mut DeviceRef| {
            d.gpu().and_then(|g| g.topology.mig_parent.clone()).map_or(Dynamic::UNIT, Dynamic::from)
        });

    engine.register_fn("gangs", |h: &mut HiveRef, r: PlaceRequest| -> Native<Array> {
        charge(1 + h.hive.caps.as_ref().map_or(0, |c| c.caps.gpus.len()))?;
        let one =
            FleetView { hives: std::sync::Arc::new(vec![h.hive.clone()]), book: h.book.clone(), index: None };
        let mut out = Array::new();
        gang::scan_gangs(
            &one,
            &r,
            |hive, sets| {
                out.extend(sets.iter().map(|s| Dynamic::from(Gang::of(hive, s))));
            },
            |_| {},
        );
        Ok(out)
    });
    engine.register_fn("best_gangs", |f: &mut FleetView, r: PlaceRequest, n: INT| -> Native<Array> {
        charge(f.elements())?;
        let n = usize::try_from(n).unwrap_or(0).clamp(1, MAX_RANKED);
        Ok(gang::best(f, &r, n).into_iter().map(Dynamic::from).collect())
    });

    engine
        .register_type_with_name::<Gang>("Gang")
        .register_get("hive", |g: &mut Gang| g.hive.hive_id().to_owned())
        .register_get("address", |g: &mut Gang| g.hive.address.clone())
        .register_get("device_ids", |g: &mut Gang| -> Array {
            g.devices.iter().map(|d| Dynamic::from(d.clone())).collect()
        })
        .register_get("size", |g: &mut Gang| g.devices.len() as INT)
        .register_get("level", |g: &mut Gang| g.level.as_str().to_owned())
        .register_get("load", |g: &mut Gang| g.load.0 as rhai::FLOAT);
}
