//! The RAM cache budget (`--ram-cache-budget`): which warm models to evict to make room
//! for a preload. Preloads in flight count against the budget like warm models, and are
//! never evicted: a model whose read goes on would bring its pages back, and the budget
//! would be exceeded (three concurrent 300 MiB preloads under 700 MiB once left 900 MiB
//! resident).

use std::collections::BTreeMap;

/// The warm models to evict, by id, least recently used first.
pub type Evictions = Vec<String>;

/// Which warm models to evict, least recently used first, so that `id` (`size` bytes)
/// fits `budget` together with every other warm model and every preload in flight
/// (`in_flight`: model and size). A model whose preload is in flight is never a victim:
/// its pages would come back as its read goes on. `Err(bytes in flight)` when even
/// evicting every idle warm model leaves no room.
pub fn plan_room(
    warm: &BTreeMap<String, (u64, u64)>,
    in_flight: &BTreeMap<&str, u64>,
    id: &str,
    size: u64,
    budget: u64,
) -> Result<Evictions, u64> {
    let others = warm.iter().filter(|(k, _)| *k != id).map(|(_, (s, _))| *s);
    let running = in_flight.iter().filter(|(k, _)| **k != id && !warm.contains_key(**k)).map(|(_, s)| *s);
    let mut total = others.chain(running).fold(size, u64::saturating_add);
    let mut idle: Vec<(u64, &String, u64)> = warm
        .iter()
        .filter(|(k, _)| *k != id && !in_flight.contains_key(k.as_str()))
        .map(|(k, (s, used))| (*used, k, *s))
        .collect();
    idle.sort();
    let mut victims = Vec::new();
    for (_, victim, s) in idle {
        if total <= budget {
            break;
        }
        total = total.saturating_sub(s);
        victims.push(victim.clone());
    }
    if total > budget {
        return Err(in_flight
            .iter()
            .filter(|(k, _)| **k != id)
            .map(|(_, s)| *s)
            .fold(0, u64::saturating_add));
    }
    Ok(victims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 100 << 20;

    fn warm(models: &[(&str, u64, u64)]) -> BTreeMap<String, (u64, u64)> {
        models.iter().map(|(k, s, u)| ((*k).to_owned(), (*s, *u))).collect()
    }

    #[test]
    fn room_is_made_from_the_least_recently_used_idle_models() {
        let w = warm(&[("a", 3 * M, 1), ("b", 3 * M, 3), ("c", 3 * M, 2)]);
        assert_eq!(plan_room(&w, &BTreeMap::new(), "d", 3 * M, 7 * M), Ok(vec!["a".into(), "c".into()]));
        assert_eq!(plan_room(&w, &BTreeMap::new(), "b", 3 * M, 7 * M), Ok(vec!["a".into()]));
    }

    #[test]
    fn preloads_in_flight_count_against_the_budget_and_are_never_evicted() {
        // The case: three 300 MiB preloads at once under a budget of 700 MiB.
        // The first two are in flight (marked warm when admitted): the third must
        // wait its turn, not evict one whose read goes on.
        let w = warm(&[("a", 3 * M, 1), ("b", 3 * M, 2)]);
        let in_flight = BTreeMap::from([("a", 3 * M), ("b", 3 * M)]);
        assert_eq!(plan_room(&w, &in_flight, "c", 3 * M, 7 * M), Err(6 * M));
        // A job that is in flight without being warm (a re-warm) counts all the same.
        let in_flight = BTreeMap::from([("x", 5 * M)]);
        assert_eq!(plan_room(&BTreeMap::new(), &in_flight, "c", 3 * M, 7 * M), Err(5 * M));
        // Once a finished, it is an idle warm model like any other.
        let in_flight = BTreeMap::from([("b", 3 * M)]);
        assert_eq!(plan_room(&w, &in_flight, "c", 3 * M, 7 * M), Ok(vec!["a".into()]));
    }
}
