//! One `rbee.v1.Hive/FetchModel` call, dialed the way the link dials: what
//! `Scheduler.FetchModel`, its fan-out and `Place`'s prefetch send to a hive.

use std::time::Duration;

use rbee_proto::v1 as pb;

use crate::QueenError;
use crate::fleet::HiveSnapshot;
use crate::link::LinkSettings;

/// Longest a hive may take to answer FetchModel (it answers at once).
const FETCH_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks `hive` to fetch as `fetch` says; its answer, or why it refused or could not be
/// reached.
pub async fn ask(
    link: &LinkSettings,
    hive: &HiveSnapshot,
    fetch: pb::FetchModelRequest,
) -> Result<pb::FetchModelResponse, QueenError> {
    super::peers::check_hive_size(&fetch)?;
    let hive_id = hive.hive_id().to_owned();
    let unreachable = |reason: String| QueenError::HiveUnreachable { hive: hive_id.clone(), reason };
    let mut client = crate::link::command::hive_client(&hive.address, link, hive.origin)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(tokio::time::timeout(FETCH_CALL_TIMEOUT, client.fetch_model(fetch))
        .await
        .map_err(|_| unreachable("FetchModel timed out".into()))?
        .map_err(|status| QueenError::Hive { hive: hive_id.clone(), status })?
        .into_inner())
}
