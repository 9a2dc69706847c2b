//! `Scheduler.FetchModel`: choose the hive (named, or the best online hive whose labels
//! match), then call its `rbee.v1.Hive/FetchModel` the way the link dials it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rbee_proto::v1 as pb;
use rbee_shared::ModelState;
use rbee_shared::convert::models::{model_id_from_wire, source_from_wire};

use crate::QueenError;
use crate::fleet::{ConnState, Fleet, HiveSnapshot};
use crate::link::LinkSettings;

/// Longest a hive may take to answer FetchModel (it answers at once).
const FETCH_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks hives to fetch models.
pub struct ModelFetcher {
    /// The fleet to choose from.
    fleet: Arc<Fleet>,
    /// How to dial hives.
    link: LinkSettings,
}

impl ModelFetcher {
    /// Over `fleet`, dialing with `link`.
    pub fn new(fleet: Arc<Fleet>, link: LinkSettings) -> Self {
        Self { fleet, link }
    }

    /// Validates the request, chooses the hive and forwards the fetch.
    pub async fn fetch(&self, r: &pb::ScheduleFetchRequest) -> Result<pb::ScheduleFetchResponse, QueenError> {
        // The field under `fetch`: "invalid fetch.model_id: ...", not "fetch.invalid model_id".
        let bad = |e: rbee_shared::ConvertError| {
            QueenError::InvalidArgument(
                rbee_shared::ConvertError::new(format!("fetch.{}", e.field), e.reason).to_string(),
            )
        };
        let fetch = r.fetch.clone().ok_or_else(|| QueenError::InvalidArgument("fetch is required".into()))?;
        let model = model_id_from_wire("model_id", &fetch.model_id).map_err(bad)?;
        source_from_wire(fetch.source.as_ref()).map_err(bad)?;
        let hive = match (r.hive.trim(), r.labels.is_empty()) {
            ("", true) => return Err(QueenError::InvalidArgument("give hive or labels".into())),
            (key, true) => self
                .fleet
                .get(key)
                .ok_or_else(|| QueenError::Missing(format!("no hive {key:?} in the fleet")))?,
            ("", false) => choose(&self.fleet.list(), &r.labels.clone().into_iter().collect(), &model)
                .ok_or_else(|| {
                    QueenError::Missing(format!("no online hive matches the labels {:?}", r.labels))
                })?,
            (_, false) => return Err(QueenError::InvalidArgument("give hive or labels, not both".into())),
        };
        let hive_id = hive.hive_id().to_owned();
        let unreachable = |reason: String| QueenError::HiveUnreachable { hive: hive_id.clone(), reason };
        let mut client = crate::link::command::hive_client(&hive.address, &self.link, hive.origin)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let result = tokio::time::timeout(FETCH_CALL_TIMEOUT, client.fetch_model(fetch))
            .await
            .map_err(|_| unreachable("FetchModel timed out".into()))?
            .map_err(|status| QueenError::Hive { hive: hive_id.clone(), status })?
            .into_inner();
        Ok(pb::ScheduleFetchResponse { hive_id, address: hive.address.clone(), result: Some(result) })
    }
}

/// Among online hives whose labels all match: one holding `model` ready, else the one
/// with the most free models disk (ties: lowest id).
fn choose(
    hives: &[Arc<HiveSnapshot>],
    labels: &BTreeMap<String, String>,
    model: &str,
) -> Option<Arc<HiveSnapshot>> {
    let candidates = hives.iter().filter(|h| {
        h.state == ConnState::Online
            && h.identity.as_ref().is_some_and(|i| labels.iter().all(|(k, v)| i.labels.get(k) == Some(v)))
    });
    let score = |h: &HiveSnapshot| {
        let ready = h
            .caps
            .as_ref()
            .and_then(|c| c.caps.models.get(model))
            .is_some_and(|m| m.state == ModelState::Ready);
        let free = h.latest.as_ref().and_then(|s| s.models_disk.as_ref()).map_or(0, |d| d.free_bytes);
        (ready, free)
    };
    candidates.max_by(|a, b| score(a).cmp(&score(b)).then_with(|| b.hive_id().cmp(a.hive_id()))).cloned()
}
