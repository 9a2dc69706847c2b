//! Reaching a running queen: the channel (TLS when asked), the bearer token, and
//! the clients of its two services.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rbee_proto::v1::fleet_client::FleetClient;
use rbee_proto::v1::scheduler_client::SchedulerClient;
use tonic::transport::Channel;

use super::args::QueenUrl;

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(rbee_shared::bearer::AUTHORIZATION, v.clone());
        }
        Ok(req)
    }
}

pub(super) type Authed = tonic::service::interceptor::InterceptedService<Channel, BearerToken>;

async fn channel(q: &QueenUrl) -> Result<(Channel, BearerToken)> {
    let url = &q.url;
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .with_context(|| format!("--queen {url:?} is not a URL"))?
        .connect_timeout(Duration::from_secs(5))
        // Small request, small reply: without it Nagle and a delayed ACK can add ~40 ms.
        .tcp_nodelay(true);
    if let Some(ca) = &q.ca {
        let tls = rbee_shared::tls::client_config(ca, None)?;
        endpoint = endpoint.tls_config(tls).context("TLS set-up")?;
    }
    let token = match (&q.token_file, std::env::var("QUEEN_TOKEN")) {
        (Some(path), _) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("--token-file {}", path.display()))?)
        }
        (None, Ok(t)) => Some(t),
        _ => None,
    };
    let token = match token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) {
        Some(t) => Some(rbee_shared::bearer::bearer_value(&t)?),
        None => None,
    };
    let channel = endpoint.connect().await.with_context(|| format!("cannot reach the queen at {url}"))?;
    Ok((channel, BearerToken(token)))
}

pub(super) async fn connect(q: &QueenUrl) -> Result<FleetClient<Authed>> {
    let (channel, token) = channel(q).await?;
    Ok(FleetClient::with_interceptor(channel, token))
}

pub(super) async fn connect_scheduler(q: &QueenUrl) -> Result<SchedulerClient<Authed>> {
    let (channel, token) = channel(q).await?;
    Ok(SchedulerClient::with_interceptor(channel, token))
}

pub(super) fn rpc_error(url: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("queen at {url}: {:?}: {}", s.code(), s.message())
}
