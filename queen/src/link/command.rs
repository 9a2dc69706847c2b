//! One-off calls to a hive outside its stream (e.g. `FetchModel`), dialed the way the
//! link dials: the same TLS, timeouts and dial guard.

use rbee_proto::v1::hive_client::HiveClient;
use tonic::transport::Channel;

use super::{LinkError, LinkSettings};
use crate::fleet::Origin;

/// A client for the hive at `address`.
pub async fn hive_client(
    address: &str,
    settings: &LinkSettings,
    origin: Origin,
) -> Result<HiveClient<Channel>, LinkError> {
    let dialed = super::dial::dial(address, settings, origin).await?;
    Ok(HiveClient::new(dialed.channel))
}
