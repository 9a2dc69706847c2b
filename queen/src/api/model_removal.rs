//! `Scheduler.CancelFetch` / `DeleteModel`: the queen stops a download
//! (`rbee.v1.Hive/CancelFetch`) or removes a model and its files
//! (`rbee.v1.Hive/DeleteModel`) on one hive, or on every online hive whose labels match
//! and that downloads (for a cancel) or has (for a delete) the model, dialed the way the
//! link dials. So an operator needs only the queen's token, never a hive's client
//! certificate.
//!
//! Inputs are bounded (the model id by the one model-id rule, labels by the label
//! rule, the hive key by [`MAX_HIVE_KEY_BYTES`]), and at most [`MAX_CONCURRENT_CALLS`]
//! hives are called at once.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rbee_proto::v1 as pb;
use rbee_shared::ModelState;
use rbee_shared::convert::models::model_id_from_wire;

use crate::QueenError;
use crate::fleet::{Fleet, HiveSnapshot};
use crate::link::LinkSettings;
use crate::scheduler::weights;

/// Longest a hive may take to answer (both calls answer at once).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Hives called at once.
const MAX_CONCURRENT_CALLS: usize = 32;
/// The longest hive id or address a request may name.
pub use super::targets::MAX_HIVE_KEY_BYTES;

/// Which call to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Cancel the running download (the partial files go).
    CancelFetch,
    /// Delete the model and its files (cancelling a running download).
    DeleteModel,
}

impl Removal {
    fn verb(self) -> &'static str {
        match self {
            Self::CancelFetch => "downloads",
            Self::DeleteModel => "has",
        }
    }

    /// Whether `hive` shows what this call acts on: a running download of `model`, or
    /// `model` in its catalog.
    fn applies(self, hive: &HiveSnapshot, model: &str) -> bool {
        let downloading = hive
            .latest
            .as_ref()
            .is_some_and(|s| s.downloads.iter().any(|d| d.model_id == model && !d.phase.is_final()))
            || weights::entry(hive, model).is_some_and(|m| m.state == ModelState::Downloading);
        match self {
            Self::CancelFetch => downloading,
            Self::DeleteModel => downloading || weights::entry(hive, model).is_some(),
        }
    }
}

/// Cancels downloads and deletes models on hives.
#[derive(Clone)]
pub struct ModelRemover {
    /// The fleet to choose from.
    fleet: Arc<Fleet>,
    /// How to dial hives.
    link: LinkSettings,
}

impl ModelRemover {
    /// Over `fleet`, dialing with `link`.
    pub fn new(fleet: Arc<Fleet>, link: LinkSettings) -> Self {
        Self { fleet, link }
    }

    /// The hives `r` names.
    fn targets(
        &self,
        r: &pb::ScheduleModelRequest,
        model: &str,
        what: Removal,
    ) -> Result<Vec<Arc<HiveSnapshot>>, QueenError> {
        super::targets::named_hives(
            &self.fleet,
            &r.hive,
            &r.labels,
            |h| what.applies(h, model),
            |labels| format!("no online hive matching the labels {labels:?} {} model {model}", what.verb()),
        )
    }

    /// Cancels the download of (or deletes) the model on the hives `r` names: one
    /// result per hive, with the hive's refusal as its error.
    pub async fn apply(
        &self,
        r: &pb::ScheduleModelRequest,
        what: Removal,
    ) -> Result<pb::ScheduleModelResponse, QueenError> {
        let model = model_id_from_wire("model_id", &r.model_id)
            .map_err(|e| QueenError::InvalidArgument(e.to_string()))?;
        let targets = self.targets(r, &model, what)?;
        let calls: Vec<_> = targets.iter().map(|h| self.one(h, &model, what)).collect();
        let results = futures::stream::iter(calls).buffered(MAX_CONCURRENT_CALLS).collect().await;
        Ok(pb::ScheduleModelResponse { results })
    }

    async fn one(&self, hive: &HiveSnapshot, model: &str, what: Removal) -> pb::HiveModelResult {
        let hive_id = hive.hive_id().to_owned();
        let result = async {
            let unreachable = |reason: String| QueenError::HiveUnreachable { hive: hive_id.clone(), reason };
            let mut client = crate::link::command::hive_client(&hive.address, &self.link, hive.origin)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let model_id = model.to_owned();
            let call = async {
                match what {
                    Removal::CancelFetch => {
                        client.cancel_fetch(pb::CancelFetchRequest { model_id }).await.map(|_| ())
                    }
                    Removal::DeleteModel => {
                        client.delete_model(pb::DeleteModelRequest { model_id }).await.map(|_| ())
                    }
                }
            };
            tokio::time::timeout(CALL_TIMEOUT, call)
                .await
                .map_err(|_| unreachable("timed out".into()))?
                .map_err(|status| QueenError::Hive { hive: hive_id.clone(), status })
        }
        .await;
        pb::HiveModelResult { hive_id: hive_id.clone(), error: result.err().map(|e| e.to_string()) }
    }
}
