//! Reaching a running queen: the channel (TLS when asked), the bearer token, and
//! the clients of its two services. `--queen` may name several queens (a group
//! sharing etcd): a call goes to the first that answers, and a write refused by a
//! follower (UNAVAILABLE with `rbee-leader` metadata) is sent to the leader it names.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rbee_proto::v1::fleet_client::FleetClient;
use rbee_proto::v1::scheduler_client::SchedulerClient;
use tonic::transport::Channel;

use super::flags::QueenUrl;
use crate::api::status::LEADER_METADATA;

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

async fn channel(q: &QueenUrl, url: &str) -> Result<(Channel, BearerToken)> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("--queen {url:?} is not a URL"))?
        .connect_timeout(Duration::from_secs(5))
        // Small request, small reply: without it Nagle and a delayed ACK can add ~40 ms.
        .tcp_nodelay(true);
    let https = url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    if let Some(ca) = &q.ca {
        let tls = rbee_shared::tls::client_config(ca, None)?;
        endpoint = endpoint.tls_config(tls).context("TLS set-up")?;
    } else if https {
        // No CA named: the web PKI's roots (a queen behind a publicly trusted certificate).
        let tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
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
    let hint = if https && q.ca.is_none() {
        " (checked against the web PKI's roots: pass --ca with the CA that signed the queen's certificate)"
    } else {
        ""
    };
    let channel =
        endpoint.connect().await.with_context(|| format!("cannot reach the queen at {url}{hint}"))?;
    Ok((channel, BearerToken(token)))
}

/// The first of the queens that can be reached, and its URL.
async fn first_reachable(q: &QueenUrl) -> Result<(Channel, BearerToken, String)> {
    let mut last = None;
    for url in q.urls() {
        match channel(q, &url).await {
            Ok((channel, token)) => return Ok((channel, token, url)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("--queen names no URL")))
}

/// A Fleet client of the first queen that can be reached, and its URL.
pub(super) async fn connect(q: &QueenUrl) -> Result<(FleetClient<Authed>, String)> {
    let (channel, token, url) = first_reachable(q).await?;
    Ok((FleetClient::with_interceptor(channel, token), url))
}

/// A Scheduler client of the first queen that can be reached, and its URL.
pub(super) async fn connect_scheduler(q: &QueenUrl) -> Result<(SchedulerClient<Authed>, String)> {
    let (channel, token, url) = first_reachable(q).await?;
    Ok((SchedulerClient::with_interceptor(channel, token), url))
}

/// Makes one call on the queens: the first that answers it; a queen that cannot be
/// reached or answers UNAVAILABLE passes it on to the leader it names, else to the
/// next URL. Every queen is tried at most once.
pub(super) async fn on_queens<C, T, Fut>(
    q: &QueenUrl,
    client: fn(Authed) -> C,
    call: impl Fn(C) -> Fut,
) -> Result<T>
where
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    Ok(on_queens_at(q, client, call).await?.0)
}

/// [`on_queens`], and the URL of the queen that answered.
pub(super) async fn on_queens_at<C, T, Fut>(
    q: &QueenUrl,
    client: fn(Authed) -> C,
    call: impl Fn(C) -> Fut,
) -> Result<(T, String)>
where
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut queue: VecDeque<String> = q.urls().into();
    let mut tried: Vec<String> = Vec::new();
    let mut last = None;
    while let Some(url) = queue.pop_front() {
        if tried.contains(&url) {
            continue;
        }
        tried.push(url.clone());
        let (channel, token) = match channel(q, &url).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let authed = tonic::service::interceptor::InterceptedService::new(channel, token);
        match call(client(authed)).await {
            Ok(response) => return Ok((response.into_inner(), url)),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                if let Some(leader) = leader_named(&s) {
                    queue.push_front(leader);
                }
                last = Some(rpc_error(&url, s));
            }
            Err(s) => return Err(rpc_error(&url, s)),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("--queen names no URL")))
}

/// The leader a follower named in its refusal.
fn leader_named(s: &tonic::Status) -> Option<String> {
    let v = s.metadata().get(LEADER_METADATA)?.to_str().ok()?;
    Some(v.to_owned()).filter(|v| !v.is_empty())
}

/// A Fleet client over a channel (for [`on_queens`]).
pub(super) fn fleet(channel: Authed) -> FleetClient<Authed> {
    FleetClient::new(channel)
}

/// A Scheduler client over a channel (for [`on_queens`]).
pub(super) fn scheduler(channel: Authed) -> SchedulerClient<Authed> {
    SchedulerClient::new(channel)
}

/// A queen's error answer, with the queen's URL (kept typed so that a caller can tell a
/// refusal from an outage).
#[derive(Debug, thiserror::Error)]
#[error("queen at {url}: {:?}: {}", status.code(), status.message())]
pub(super) struct RpcError {
    /// The queen that answered.
    pub url: String,
    /// Its answer.
    pub status: tonic::Status,
}

pub(super) fn rpc_error(url: &str, s: tonic::Status) -> anyhow::Error {
    // A message over the client's size limit is RESOURCE_EXHAUSTED, as gRPC specifies.
    let status = rbee_shared::size_limit::normalize(s);
    RpcError { url: url.to_owned(), status }.into()
}

/// True when an error will not go away by asking again (a refused token, a bad request):
/// a live view reconnects after anything else (an unreachable queen, a restart, a
/// stream the queen ended).
pub(super) fn is_final(e: &anyhow::Error) -> bool {
    use tonic::Code;
    e.chain().filter_map(|c| c.downcast_ref::<RpcError>()).any(|r| {
        matches!(
            r.status.code(),
            Code::Unauthenticated
                | Code::PermissionDenied
                | Code::InvalidArgument
                | Code::Unimplemented
                | Code::FailedPrecondition
                | Code::OutOfRange
        )
    })
}

/// `WatchFleet` on the first queen that takes it (following a leader a queen names), and
/// the queen's URL.
pub(super) async fn open_watch(
    q: &QueenUrl,
    request: rbee_proto::v1::WatchFleetRequest,
) -> Result<(tonic::Streaming<rbee_proto::v1::FleetEvent>, String)> {
    on_queens_at(q, fleet, |mut c| async move { c.watch_fleet(request).await }).await
}

/// The backoff of a live view between reconnections.
pub(super) fn reconnect_backoff() -> rbee_shared::backoff::Backoff {
    rbee_shared::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_over_the_size_limit_is_reported_as_resource_exhausted() {
        let s = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 8500000 bytes, the limit is: 4194304 bytes",
        );
        let e = rpc_error("http://q:1", s).to_string();
        assert!(e.starts_with("queen at http://q:1: ResourceExhausted: "), "{e}");
        let other = rpc_error("http://q:1", tonic::Status::out_of_range("page 9 of 3")).to_string();
        assert!(other.contains("OutOfRange"), "{other}");
    }
}
