//! What a policy decided: reading the value `place()` returned.
//!
//! A policy returns a device, a map `#{ hive: ..., device: ... }`, a gang (for a
//! request of several GPUs), an array of them (ranked, best first), `reject("reason")`, or `()` (no placement). Every text taken
//! from the script is bounded.

use rhai::{Array, Dynamic, Map};

use super::MAX_RANKED;
use super::error::PolicyError;
use crate::scheduler::bounded_text::{self, bound_owned};
use crate::scheduler::view::DeviceRef;

/// What a policy decided.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Devices to try, best first.
    Ranked(Vec<Choice>),
    /// No placement, with the policy's reason (bounded).
    Reject(String),
}

/// One device a policy chose.
#[derive(Debug, Clone)]
pub enum Choice {
    /// A device handle from the API (the queen uses it as is).
    Device(DeviceRef),
    /// A gang of one hive's GPUs from `fleet.best_gangs` or `hive.gangs`.
    Gang(crate::scheduler::gang::Gang),
    /// A hive (id or address) and device id from a map (bounded).
    Named {
        /// Hive id or address.
        hive: String,
        /// GPU id or "cpu".
        device: String,
    },
}

fn choice(value: Dynamic) -> Result<Choice, PolicyError> {
    if value.is::<DeviceRef>() {
        return Ok(Choice::Device(value.cast::<DeviceRef>()));
    }
    if value.is::<crate::scheduler::gang::Gang>() {
        return Ok(Choice::Gang(value.cast::<crate::scheduler::gang::Gang>()));
    }
    if value.is_map() {
        let map = value.cast::<Map>();
        let field = |k: &str| map.get(k).map(|v| bound_owned(v.to_string()));
        return match (field("hive"), field("device")) {
            (Some(hive), Some(device)) => Ok(Choice::Named { hive, device }),
            _ => Err(PolicyError::Answer("a placement map needs both `hive` and `device`".into())),
        };
    }
    let shown = value.to_string();
    Err(PolicyError::Answer(format!(
        "place() returned {} ({}); expected a device, #{{hive, device}}, an array of them, or reject(reason)",
        bounded_text::bound(&shown),
        value.type_name()
    )))
}

/// Reads a script's return value.
pub fn decision(value: Dynamic) -> Result<Decision, PolicyError> {
    if value.is_unit() {
        return Ok(Decision::Reject("the policy found no placement".into()));
    }
    if value.is_map()
        && let Some(reason) = value.read_lock::<Map>().and_then(|m| m.get("reject").map(ToString::to_string))
    {
        return Ok(Decision::Reject(bound_owned(reason)));
    }
    if value.is_array() {
        // The queen tries a ranking in order; past the first MAX_RANKED it is moot.
        let arr = value.cast::<Array>();
        return arr.into_iter().take(MAX_RANKED).map(choice).collect::<Result<_, _>>().map(Decision::Ranked);
    }
    Ok(Decision::Ranked(vec![choice(value)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_or_name_from_a_script_is_cut() {
        let long = "r".repeat(62_000);
        let mut m = Map::new();
        m.insert("reject".into(), Dynamic::from(long.clone()));
        let Decision::Reject(reason) = decision(Dynamic::from(m)).unwrap() else { panic!("not a rejection") };
        assert!(reason.len() < 1100 && reason.ends_with("(cut, 60.5 KiB in all)"), "{}", reason.len());
        let mut m = Map::new();
        m.insert("hive".into(), Dynamic::from(long.clone()));
        m.insert("device".into(), Dynamic::from("GPU-0"));
        let Decision::Ranked(c) = decision(Dynamic::from(m)).unwrap() else { panic!("not ranked") };
        let Choice::Named { hive, .. } = &c[0] else { panic!("not named") };
        assert!(hive.len() < 1100);
        let e = decision(Dynamic::from(long)).unwrap_err().to_string();
        assert!(e.len() < 1300 && e.contains("(cut, "), "{}", e.len());
    }
}
