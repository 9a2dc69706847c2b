//! Writes go to the leader: a tower layer in front of every service that answers a
//! write method (Place, Release, Renew, AddHive, RemoveHive, Announce; see
//! [`super::auth::role_of`]) with UNAVAILABLE on a queen that does not lead, naming the
//! leader in the message and in the `rbee-leader` response metadata. Reads are served
//! by every queen. With the embedded store the queen always leads.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::auth::{Role, role_of};
use crate::QueenError;
use crate::store::{Leader, Store, StoreError};

/// The refusal for a write on a queen that does not lead, if it is one.
pub fn refuse_write(store: Option<&dyn Store>, path: &str) -> Option<tonic::Status> {
    if role_of(path) != Some(Role::Write) {
        return None;
    }
    match store?.leader() {
        Leader::Me => None,
        leader => Some(QueenError::Store(StoreError::NotLeader(leader)).into()),
    }
}

/// The tower layer.
#[derive(Clone, Debug, Default)]
pub struct LeaderLayer {
    /// The store that knows who leads (none: this queen always does).
    store: Option<Arc<dyn Store>>,
}

impl LeaderLayer {
    /// A layer asking `store` who leads.
    pub fn new(store: Option<Arc<dyn Store>>) -> Self {
        Self { store }
    }
}

impl<S> Layer<S> for LeaderLayer {
    type Service = LeaderGate<S>;
    fn layer(&self, inner: S) -> LeaderGate<S> {
        LeaderGate { inner, store: self.store.clone() }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone, Debug)]
pub struct LeaderGate<S> {
    /// The router.
    inner: S,
    /// Who leads.
    store: Option<Arc<dyn Store>>,
}

impl<S, B> Service<http::Request<B>> for LeaderGate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match refuse_write(self.store.as_deref(), req.uri().path()) {
            None => Box::pin(self.inner.call(req)),
            Some(status) => {
                tracing::debug!(path = req.uri().path(), "write refused: this queen does not lead");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TestStore;

    fn follower(leader: Leader) -> TestStore {
        TestStore { leader, refused: &[] }
    }

    #[test]
    fn a_follower_refuses_writes_naming_the_leader_and_serves_reads() {
        let f = follower(Leader::Other("http://10.0.0.1:7836".into()));
        let s = refuse_write(Some(&f), "/rbee.v1.Scheduler/Place").expect("refused");
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("http://10.0.0.1:7836"), "{}", s.message());
        assert_eq!(s.metadata().get(crate::api::status::LEADER_METADATA).unwrap(), "http://10.0.0.1:7836");
        assert!(refuse_write(Some(&f), "/rbee.v1.Fleet/AddHive").is_some());
        assert!(refuse_write(Some(&f), "/rbee.v1.Scheduler/Renew").is_some(), "Renew is a write");
        assert!(refuse_write(Some(&f), "/rbee.v1.Scheduler/ListReservations").is_none());
        assert!(refuse_write(Some(&f), "/rbee.v1.Fleet/WatchFleet").is_none());
        let nobody = follower(Leader::Unknown("etcd unreachable".into()));
        let s = refuse_write(Some(&nobody), "/rbee.v1.Scheduler/Release").expect("refused");
        assert!(s.message().contains("etcd unreachable"), "{}", s.message());
        assert!(s.metadata().get(crate::api::status::LEADER_METADATA).is_none());
        assert!(refuse_write(Some(&follower(Leader::Me)), "/rbee.v1.Scheduler/Place").is_none());
        assert!(refuse_write(None, "/rbee.v1.Scheduler/Place").is_none());
    }
}
