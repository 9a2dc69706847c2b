//! `Scheduler.PreloadModel` / `EvictModel`, and the prefetch of `Place`: the queen asks
//! hives to keep a model in RAM (`rbee.v1.Hive/PreloadModel`), drop it (`EvictModel`),
//! or fetch it first (`FetchModel`, with the hives that hold it as peers:
//! [`super::peers`]), dialed the way the link dials.
//!
//! A placement on a hive where the model is kept warm preloads it again there, which
//! marks it used for the hive's least-recently-used budget.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rbee_proto::v1 as pb;
use rbee_shared::convert::models::{model_id_from_wire, source_from_wire};
use rbee_shared::{ModelSource, ModelState};

use super::models::ModelFetcher;
use super::peers;
use crate::QueenError;
use crate::fleet::{Fleet, HiveSnapshot};
use crate::link::LinkSettings;
use crate::scheduler::weights::{self, Tier};

/// Longest a hive may take to answer a call that does not wait.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a waited preload may take.
const WAIT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest a prefetch waits for the fetched model to be ready before preloading.
const FETCH_WAIT: Duration = Duration::from_secs(3600);

/// Asks hives to preload, evict and prefetch models.
#[derive(Clone)]
pub struct ModelCache {
    /// The fleet to choose from.
    fleet: Arc<Fleet>,
    /// How to dial hives.
    link: LinkSettings,
}

/// The wire source of a `prefetch_from` text: `hf://...`, else one http(s) file.
pub fn source_of(from: &str) -> Result<pb::fetch_model_request::Source, QueenError> {
    use pb::fetch_model_request::Source;
    let source = if from.starts_with("hf://") {
        Source::Hf(from.to_owned())
    } else {
        Source::Urls(pb::UrlSource {
            files: vec![pb::FileSource { url: from.to_owned(), path: None, size_bytes: None, sha256: None }],
        })
    };
    source_from_wire(Some(&source))
        .map_err(|e| QueenError::InvalidArgument(format!("prefetch_from: {e}")))?;
    Ok(source)
}

impl ModelCache {
    /// Over `fleet`, dialing with `link`.
    pub fn new(fleet: Arc<Fleet>, link: LinkSettings) -> Self {
        Self { fleet, link }
    }

    async fn client(
        &self,
        hive: &HiveSnapshot,
    ) -> Result<pb::hive_client::HiveClient<tonic::transport::Channel>, QueenError> {
        crate::link::command::hive_client(&hive.address, &self.link, hive.origin).await.map_err(|e| {
            QueenError::HiveUnreachable { hive: hive.hive_id().to_owned(), reason: e.to_string() }
        })
    }

    /// Preloads (or, with `evict`, evicts) the model on the hives the request names.
    pub async fn apply(
        &self,
        r: &pb::ScheduleCacheRequest,
        evict: bool,
    ) -> Result<pb::ScheduleCacheResponse, QueenError> {
        let model = model_id_from_wire("model_id", &r.model_id)
            .map_err(|e| QueenError::InvalidArgument(e.to_string()))?;
        let targets = super::targets::named_hives(
            &self.fleet,
            &r.hive,
            &r.labels,
            |h| weights::tier(h, &model) != Tier::Absent,
            |labels| format!("no online hive matching the labels {labels:?} holds model {model} ready"),
        )?;
        let calls = targets.iter().map(|h| self.one(h, &model, evict, r.wait));
        Ok(pb::ScheduleCacheResponse { results: futures::future::join_all(calls).await })
    }

    async fn one(&self, hive: &HiveSnapshot, model: &str, evict: bool, wait: bool) -> pb::HiveCacheResult {
        let mut out = pb::HiveCacheResult { hive_id: hive.hive_id().to_owned(), ..Default::default() };
        let result = async {
            let mut client = self.client(hive).await?;
            let limit = if wait && !evict { WAIT_TIMEOUT } else { CALL_TIMEOUT };
            let hive_err = |status| QueenError::Hive { hive: hive.hive_id().to_owned(), status };
            let timed_out = || QueenError::HiveUnreachable {
                hive: hive.hive_id().to_owned(),
                reason: "timed out".into(),
            };
            if evict {
                let r = tokio::time::timeout(
                    limit,
                    client.evict_model(pb::EvictModelRequest { model_id: model.into() }),
                )
                .await
                .map_err(|_| timed_out())?
                .map_err(hive_err)?
                .into_inner();
                let size = weights::entry(hive, model).map_or(0, |m| m.size_bytes);
                Ok::<_, QueenError>((r.resident_bytes, size, Vec::new()))
            } else {
                let r = tokio::time::timeout(
                    limit,
                    client.preload_model(pb::PreloadModelRequest { model_id: model.into(), wait }),
                )
                .await
                .map_err(|_| timed_out())?
                .map_err(hive_err)?
                .into_inner();
                Ok((r.resident_bytes, r.size_bytes, r.evicted))
            }
        }
        .await;
        match result {
            Ok((resident, size, evicted)) => {
                out.resident_bytes = resident;
                out.size_bytes = size;
                out.evicted = evicted;
            }
            Err(e) => out.error = Some(e.to_string()),
        }
        out
    }

    /// After a placement on `hive_id`: with `prefetch`, fetch the model there if it is
    /// absent (from `from`) and preload it; without, preload it again only where it is
    /// kept warm (marks it used). A fetch counts against the caller's limit of failing
    /// fetches in `limit` (the same as `Scheduler.FetchModel`'s): one it refuses is
    /// not started. Runs in the background; returns whether a prefetch was started.
    pub fn after_place(
        &self,
        hive_id: &str,
        model: &str,
        prefetch: bool,
        from: Option<pb::fetch_model_request::Source>,
        limit: Option<(Arc<ModelFetcher>, Option<IpAddr>)>,
    ) -> bool {
        let Some(hive) = self.fleet.get(hive_id) else { return false };
        let tier = weights::tier(&hive, model);
        let warm = weights::entry(&hive, model).is_some_and(|m| m.warm);
        let fetch = match (prefetch, tier) {
            (false, _) if !warm => return false,
            (false, _) => None,
            (true, Tier::Absent) => match from {
                Some(source) => Some(source),
                None => {
                    tracing::warn!(hive = %hive_id, model, "prefetch asked, but the hive lacks the model and no prefetch_from was given");
                    return false;
                }
            },
            (true, _) => None,
        };
        if fetch.is_some()
            && let Some((fetcher, caller)) = &limit
            && let Err(e) = fetcher.admit(*caller)
        {
            tracing::warn!(hive = %hive_id, model, error = %e, "prefetch not started");
            return false;
        }
        let this = self.clone();
        let (hive_id, model) = (hive_id.to_owned(), model.to_owned());
        tokio::spawn(async move {
            if let Err(e) = this.prefetch(&hive_id, &model, fetch, limit).await {
                tracing::warn!(hive = %hive_id, model = %model, error = %e, "prefetch failed");
            }
        });
        prefetch
    }

    async fn prefetch(
        &self,
        hive_id: &str,
        model: &str,
        fetch: Option<pb::fetch_model_request::Source>,
        limit: Option<(Arc<ModelFetcher>, Option<IpAddr>)>,
    ) -> Result<(), QueenError> {
        let hive =
            self.fleet.get(hive_id).ok_or_else(|| QueenError::Missing(format!("no hive {hive_id:?}")))?;
        let mut client = self.client(&hive).await?;
        let hive_err = |status| QueenError::Hive { hive: hive_id.to_owned(), status };
        if let Some(source) = fetch {
            let declared = match source_from_wire(Some(&source)) {
                Ok(ModelSource::Urls(files)) => Some(files),
                _ => None,
            };
            // Several prefetches of one model spread from each other: a hive still
            // downloading it (with every hash known) is a partial peer.
            let mut choice = peers::select(&self.fleet.list(), &hive, model, declared.as_deref());
            let mut req = pb::FetchModelRequest {
                model_id: model.to_owned(),
                source: Some(source),
                ..Default::default()
            };
            choice.apply(&mut req);
            peers::check_hive_size(&req)?;
            let started = client.fetch_model(req).await.map_err(hive_err)?.into_inner();
            if let Some((fetcher, caller)) = &limit {
                fetcher.started(*caller, &hive.address, model, &started);
            }
            let deadline = tokio::time::Instant::now() + FETCH_WAIT;
            loop {
                let state = self.fleet.get(hive_id).and_then(|h| weights::entry(&h, model).map(|m| m.state));
                match state {
                    Some(ModelState::Ready) => break,
                    Some(ModelState::Failed) => {
                        return Err(QueenError::Missing(format!("the fetch of {model} on {hive_id} failed")));
                    }
                    _ if tokio::time::Instant::now() >= deadline => {
                        return Err(QueenError::Missing(format!("{model} not ready on {hive_id} in time")));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        client
            .preload_model(pb::PreloadModelRequest { model_id: model.to_owned(), wait: false })
            .await
            .map_err(hive_err)?;
        Ok(())
    }
}
