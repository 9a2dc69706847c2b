//! A thin client over etcd's v3 gRPC API: the generated `rbee_proto::etcd` clients
//! (from `proto/etcd/v3.proto`, compiled like the rest of `proto/`, with no system
//! `protoc`) on one lazily connected channel to the endpoints, and builders for the
//! compares and operations the queen's transactions are made of.
//!
//! Only what the queen uses is here: reads, guarded transactions, leases with their
//! renewal stream, and a prefix watch.

use std::time::Duration;

use rbee_proto::etcd::compare::{CompareResult, CompareTarget, TargetUnion};
use rbee_proto::etcd::kv_client::KvClient;
use rbee_proto::etcd::lease_client::LeaseClient;
use rbee_proto::etcd::request_op::Request;
use rbee_proto::etcd::watch_client::WatchClient;
use rbee_proto::etcd::watch_request::RequestUnion;
use rbee_proto::etcd::{
    Compare, DeleteRangeRequest, KeyValue, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codec::Streaming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// TLS to etcd: the CA that signed its server certificates, and this queen's client
/// certificate and key for an etcd that asks for one (all PEM).
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA.
    pub ca: Vec<u8>,
    /// The client certificate and its key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a client for etcd cannot be made (nothing was dialed yet).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// An endpoint is not a URL tonic can dial.
    #[error("{url:?} is not an endpoint: {source}")]
    NotEndpoint {
        /// The endpoint.
        url: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The TLS set-up for an endpoint failed.
    #[error("TLS to {url}: {source}")]
    Tls {
        /// The endpoint.
        url: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The list of endpoints is empty.
    #[error("no etcd endpoint given")]
    NoEndpoint,
}

/// The clients of one etcd cluster (cheap to clone; the channel reconnects by itself).
#[derive(Clone)]
pub struct EtcdClient {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    watch: WatchClient<Channel>,
}

impl EtcdClient {
    /// A channel balanced over `endpoints` (`http(s)://HOST:PORT`; https with `tls`), connected lazily: etcd
    /// may be down now and come later. Each request (up to its answer's headers) is
    /// bounded by `timeout`. Must be called inside the runtime.
    pub fn connect(
        endpoints: &[String],
        timeout: Duration,
        tls: Option<&EtcdTls>,
    ) -> Result<Self, ConnectError> {
        let tls = tls.map(|tls| {
            let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca));
            match &tls.identity {
                Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
                None => config,
            }
        });
        let endpoints = endpoints
            .iter()
            .map(|url| {
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|source| ConnectError::NotEndpoint { url: url.clone(), source })?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .tcp_nodelay(true);
                match &tls {
                    Some(tls) => endpoint
                        .tls_config(tls.clone())
                        .map_err(|source| ConnectError::Tls { url: url.clone(), source }),
                    None => Ok(endpoint),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(ConnectError::NoEndpoint);
        }
        let channel = Channel::balance_list(endpoints.into_iter());
        Ok(Self {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            watch: WatchClient::new(channel),
        })
    }

    /// The key's current value, if it exists.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, Status> {
        let request = RangeRequest { key: key.into(), ..Default::default() };
        Ok(self.kv.clone().range(request).await?.into_inner().kvs.into_iter().next())
    }

    /// Every key under `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: impl Into<Vec<u8>>) -> Result<Vec<KeyValue>, Status> {
        let key = prefix.into();
        let request = RangeRequest { range_end: prefix_end(&key), key, ..Default::default() };
        Ok(self.kv.clone().range(request).await?.into_inner().kvs)
    }

    /// If every compare in `when` holds, runs `then`, otherwise `otherwise`; atomically.
    pub async fn txn(
        &self,
        when: Vec<Compare>,
        then: Vec<RequestOp>,
        otherwise: Vec<RequestOp>,
    ) -> Result<TxnResponse, Status> {
        let request = TxnRequest { compare: when, success: then, failure: otherwise };
        Ok(self.kv.clone().txn(request).await?.into_inner())
    }

    /// Grants a lease of `ttl` seconds; its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64, Status> {
        let granted = self.lease.clone().lease_grant(LeaseGrantRequest { ttl, id: 0 }).await?.into_inner();
        if !granted.error.is_empty() {
            return Err(Status::unavailable(format!("etcd granted no lease: {}", granted.error)));
        }
        Ok(granted.id)
    }

    /// Revokes a lease, deleting the keys attached to it.
    pub async fn revoke(&self, id: i64) -> Result<(), Status> {
        self.lease.clone().lease_revoke(LeaseRevokeRequest { id }).await.map(drop)
    }

    /// Opens the renewal stream of lease `id`, renewing it once: etcd answers a stream's
    /// headers only once it has a request, so the first renewal goes out before the
    /// call is awaited (its answer is the first [`KeepAlive::renew`]'s).
    pub async fn keep_alive(&self, id: i64) -> Result<KeepAlive, Status> {
        let (requests, outgoing) = mpsc::channel(1);
        requests
            .send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| Status::internal("the lease renewal stream closed before it opened"))?;
        let answers = self.lease.clone().lease_keep_alive(ReceiverStream::new(outgoing)).await?.into_inner();
        Ok(KeepAlive { id, requests, answers, sent: true })
    }

    /// Watches every key under `prefix` from now on.
    pub async fn watch_prefix(&self, prefix: impl Into<Vec<u8>>) -> Result<Watcher, Status> {
        let key = prefix.into();
        let create = WatchCreateRequest { range_end: prefix_end(&key), key, start_revision: 0 };
        let (requests, outgoing) = mpsc::channel(1);
        requests
            .send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) })
            .await
            .map_err(|_| Status::internal("the watch request stream closed before it opened"))?;
        let events = self.watch.clone().watch(ReceiverStream::new(outgoing)).await?.into_inner();
        Ok(Watcher { _requests: requests, events })
    }
}

/// The renewal stream of one lease.
pub struct KeepAlive {
    id: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    answers: Streaming<LeaseKeepAliveResponse>,
    /// A renewal was sent whose answer is not read yet (the one that opened the stream).
    sent: bool,
}

impl KeepAlive {
    /// Renews the lease once; the TTL etcd answered with (0: the lease is gone).
    pub async fn renew(&mut self) -> Result<i64, Status> {
        if !std::mem::take(&mut self.sent) {
            self.requests
                .send(LeaseKeepAliveRequest { id: self.id })
                .await
                .map_err(|_| Status::unavailable("the lease renewal stream closed"))?;
        }
        match self.answers.message().await? {
            Some(answer) => Ok(answer.ttl),
            None => Err(Status::unavailable("the lease renewal stream closed")),
        }
    }
}

/// A watch; open while this lives (dropping it ends the request stream, and etcd
/// ends the watch).
pub struct Watcher {
    _requests: mpsc::Sender<WatchRequest>,
    events: Streaming<WatchResponse>,
}

impl Watcher {
    /// The next answer: created, events, or canceled; `None` when the stream ended.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, Status> {
        self.events.message().await
    }
}

/// `key`'s lease is `lease`.
pub fn lease_is(key: impl Into<Vec<u8>>, lease: i64) -> Compare {
    compare(key, CompareTarget::Lease, TargetUnion::Lease(lease), CompareResult::Equal)
}

/// `key` was last changed at `revision` (0: it does not exist).
pub fn mod_revision_is(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
    compare(key, CompareTarget::Mod, TargetUnion::ModRevision(revision), CompareResult::Equal)
}

/// `key` was created at `revision` (0: it does not exist).
pub fn create_revision_is(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
    compare(key, CompareTarget::Create, TargetUnion::CreateRevision(revision), CompareResult::Equal)
}

/// `key` exists.
pub fn exists(key: impl Into<Vec<u8>>) -> Compare {
    compare(key, CompareTarget::Version, TargetUnion::Version(0), CompareResult::Greater)
}

fn compare(
    key: impl Into<Vec<u8>>,
    target: CompareTarget,
    value: TargetUnion,
    result: CompareResult,
) -> Compare {
    Compare { result: result as i32, target: target as i32, key: key.into(), target_union: Some(value) }
}

/// Puts `value` at `key`, attached to `lease` (0: none).
pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest { key: key.into(), value: value.into(), lease })),
    }
}

/// Reads `key`.
pub fn get(key: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp { request: Some(Request::RequestRange(RangeRequest { key: key.into(), ..Default::default() })) }
}

/// Deletes `key`.
pub fn delete(key: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: Vec::new(),
        })),
    }
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte
/// that is not 0xff incremented and what follows dropped; `[0]` (every key) when there
/// is none, as etcd's clients do.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A key-value's value as a number (what the device totals hold), 0 when unreadable.
pub fn value_u64(kv: &KeyValue) -> u64 {
    std::str::from_utf8(&kv.value).ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_last_incrementable_byte() {
        assert_eq!(prefix_end(b"/rbee/queen/reservations/"), b"/rbee/queen/reservations0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
        assert_eq!(prefix_end(b""), [0]);
    }

    #[test]
    fn compares_carry_their_target_and_value() {
        let c = lease_is("k", 7);
        assert_eq!((c.target, c.result, c.target_union), (4, 0, Some(TargetUnion::Lease(7))));
        let c = exists("k");
        assert_eq!((c.target, c.result, c.target_union), (0, 1, Some(TargetUnion::Version(0))));
    }
}
