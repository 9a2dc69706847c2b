//! The hives a model request names: one hive by id or address, or every online hive
//! whose labels match and to which the request applies. One home for the rule that
//! PreloadModel, EvictModel, CancelFetch and DeleteModel share, with its bounds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::QueenError;
use crate::fleet::{ConnState, Fleet, HiveSnapshot};

/// Longest hive key (id or address) a request may name.
pub const MAX_HIVE_KEY_BYTES: usize = 512;

/// The hives named by `hive` (an id or address) or by `labels` (not both): a named
/// hive must be in the fleet; by labels, the online hives whose labels all match and
/// for which `applies` holds, at least one (`none_found` says what was looked for).
pub(super) fn named_hives(
    fleet: &Fleet,
    hive: &str,
    labels: &HashMap<String, String>,
    applies: impl Fn(&HiveSnapshot) -> bool,
    none_found: impl FnOnce(&BTreeMap<&String, &String>) -> String,
) -> Result<Vec<Arc<HiveSnapshot>>, QueenError> {
    if hive.len() > MAX_HIVE_KEY_BYTES {
        return Err(QueenError::InvalidArgument(format!(
            "hive is {} bytes, more than {MAX_HIVE_KEY_BYTES}",
            hive.len()
        )));
    }
    rbee_shared::labels::validate_labels(labels.iter())
        .map_err(|e| QueenError::InvalidArgument(format!("labels: {e}")))?;
    match (hive.trim(), labels.is_empty()) {
        ("", true) => Err(QueenError::InvalidArgument("give hive or labels".into())),
        (key, true) => Ok(vec![
            fleet.get(key).ok_or_else(|| QueenError::Missing(format!("no hive {key:?} in the fleet")))?,
        ]),
        ("", false) => {
            let wanted: BTreeMap<&String, &String> = labels.iter().collect();
            let found: Vec<_> = fleet
                .list()
                .into_iter()
                .filter(|h| {
                    h.state == ConnState::Online
                        && h.identity
                            .as_ref()
                            .is_some_and(|i| wanted.iter().all(|(k, v)| i.labels.get(*k) == Some(*v)))
                        && applies(h)
                })
                .collect();
            if found.is_empty() {
                return Err(QueenError::Missing(none_found(&wanted)));
            }
            Ok(found)
        }
        (_, false) => Err(QueenError::InvalidArgument("give hive or labels, not both".into())),
    }
}
