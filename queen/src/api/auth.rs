//! Bearer tokens for the Fleet and Scheduler APIs: a tower layer in front of every
//! service. Two roles: **read** (ListHives, GetHive, WatchFleet, ListReservations,
//! GetPolicy) and **write** (Place, Release, Renew, AddHive, RemoveHive, Announce); the write
//! token also reads. Health and reflection stay open: they reveal no fleet data.
//! Tokens are compared in constant time.

use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use subtle::ConstantTimeEq;
use tonic::Status;
use tower::{Layer, Service};

use crate::QueenError;

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read the fleet.
    Read,
    /// Change it (place, release, renew, add, remove, announce).
    Write,
}

/// The role a gRPC method path needs; `None` for open services (health, reflection).
pub fn role_of(path: &str) -> Option<Role> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    match (service, method) {
        ("rbee.v1.Fleet", "ListHives" | "GetHive" | "WatchFleet") => Some(Role::Read),
        ("rbee.v1.Scheduler", "ListReservations" | "GetPolicy") => Some(Role::Read),
        ("rbee.v1.Fleet" | "rbee.v1.Scheduler", _) => Some(Role::Write),
        _ => None,
    }
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    /// Grants read.
    read: Option<Arc<[u8]>>,
    /// Grants read and write.
    write: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("read", &self.read.is_some())
            .field("write", &self.write.is_some())
            .finish()
    }
}

/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

fn load(file: Option<&Path>, env: &str) -> Result<Option<Arc<[u8]>>, QueenError> {
    let token = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| QueenError::Io { path: path.to_owned(), source })?,
        ),
        None => std::env::var(env).ok(),
    };
    match token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) if t.len() < MIN_TOKEN_LEN || !t.chars().all(|c| c.is_ascii_graphic()) => {
            Err(QueenError::Config(format!(
                "tokens must be at least {MIN_TOKEN_LEN} printable ASCII characters ({env} or its file)"
            )))
        }
        Some(t) => Ok(Some(t.into_bytes().into())),
    }
}

impl Tokens {
    /// Tokens from files, or from the `QUEEN_READ_TOKEN` / `QUEEN_WRITE_TOKEN` environment
    /// variables (never from a flag: that would show in `ps`).
    pub fn load(read_file: Option<&Path>, write_file: Option<&Path>) -> Result<Self, QueenError> {
        Ok(Self { read: load(read_file, "QUEEN_READ_TOKEN")?, write: load(write_file, "QUEEN_WRITE_TOKEN")? })
    }

    /// Tokens given directly (tests, embedding).
    pub fn new(read: Option<&str>, write: Option<&str>) -> Self {
        Self { read: read.map(|t| t.as_bytes().into()), write: write.map(|t| t.as_bytes().into()) }
    }

    /// True when any token is configured (then every Fleet/Scheduler call needs one).
    pub fn enabled(&self) -> bool {
        self.read.is_some() || self.write.is_some()
    }

    /// Who may scrape `/metrics`: the read or the write token (open when none is set).
    pub fn metrics_access(&self) -> rbee_shared::metrics_http::MetricsAccess {
        rbee_shared::metrics_http::MetricsAccess::new(self.read.iter().chain(&self.write).map(|t| &t[..]))
    }

    fn matches(expected: &Option<Arc<[u8]>>, given: &[u8]) -> bool {
        expected.as_deref().is_some_and(|t| bool::from(t.ct_eq(given)))
    }

    /// Checks the `authorization` header value for a method path.
    pub fn check(&self, path: &str, authorization: Option<&[u8]>) -> Result<(), Status> {
        let Some(role) = role_of(path).filter(|_| self.enabled()) else { return Ok(()) };
        let Some(given) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return Err(Status::unauthenticated("missing bearer token (authorization: Bearer TOKEN)"));
        };
        let write = Self::matches(&self.write, given);
        let read = Self::matches(&self.read, given);
        match role {
            _ if write => Ok(()),
            Role::Read if read => Ok(()),
            Role::Write if read => Err(Status::permission_denied(format!(
                "{path} needs the write token; this is the read token"
            ))),
            _ => Err(Status::unauthenticated("invalid bearer token")),
        }
    }
}

/// The tower layer.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    /// The tokens.
    tokens: Tokens,
}

impl AuthLayer {
    /// A layer checking `tokens`.
    pub fn new(tokens: Tokens) -> Self {
        Self { tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, tokens: self.tokens.clone() }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    /// The router.
    inner: S,
    /// The tokens.
    tokens: Tokens,
}

impl<S, B> Service<http::Request<B>> for Auth<S>
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
        let auth = req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        match self.tokens.check(req.uri().path(), auth) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => {
                tracing::info!(path = req.uri().path(), code = ?status.code(), "request refused");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "read-token-0123456789";
    const W: &str = "write-token-0123456789";

    /// The proto is the contract: every RPC of Fleet and Scheduler says in its comment
    /// the role this layer asks of it (and writes say they go to the leader), and each
    /// service's comment names the bearer header and the `rbee-leader` redirect.
    #[test]
    fn every_rpc_comment_names_the_role_the_code_asks() {
        for (file, service) in [("fleet.proto", "Fleet"), ("scheduler.proto", "Scheduler")] {
            let path = format!("{}/../proto/rbee/v1/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(path).unwrap();
            let body =
                text.split(&format!("service {service} {{")).nth(1).unwrap().split("\n}").next().unwrap();
            let head = text.split(&format!("service {service} {{")).next().unwrap();
            let head = &head[head.rfind("\n\n").unwrap_or(0)..];
            for needle in ["authorization: Bearer TOKEN", "UNAVAILABLE", "`rbee-leader`"] {
                assert!(head.contains(needle), "{file}: the {service} comment lacks {needle}");
            }
            let mut comment = String::new();
            let mut rpcs = 0;
            for line in body.lines().map(str::trim) {
                if let Some(c) = line.strip_prefix("//") {
                    comment.push_str(c);
                    continue;
                }
                let Some(rest) = line.strip_prefix("rpc ") else { continue };
                let name = rest.split('(').next().unwrap();
                let role = role_of(&format!("/rbee.v1.{service}/{name}")).unwrap();
                let documented = match role {
                    Role::Read => comment.contains("Role: read."),
                    Role::Write => comment.contains("Role: write") && comment.contains("on the leader"),
                };
                assert!(documented, "{service}.{name} needs {role:?}; its comment says: {comment}");
                comment.clear();
                rpcs += 1;
            }
            assert!(rpcs >= 6, "{file}: {rpcs} rpcs found");
        }
    }

    fn check(t: &Tokens, path: &str, token: Option<&str>) -> Result<(), tonic::Code> {
        let header = token.map(|t| format!("Bearer {t}"));
        t.check(path, header.as_deref().map(str::as_bytes)).map_err(|s| s.code())
    }

    #[test]
    fn roles_follow_the_method() {
        let t = Tokens::new(Some(R), Some(W));
        assert_eq!(check(&t, "/rbee.v1.Fleet/ListHives", Some(R)), Ok(()));
        assert_eq!(check(&t, "/rbee.v1.Fleet/ListHives", Some(W)), Ok(()));
        assert_eq!(check(&t, "/rbee.v1.Scheduler/Place", Some(R)), Err(tonic::Code::PermissionDenied));
        assert_eq!(check(&t, "/rbee.v1.Scheduler/Place", Some(W)), Ok(()));
        assert_eq!(check(&t, "/rbee.v1.Scheduler/Renew", Some(R)), Err(tonic::Code::PermissionDenied));
        assert_eq!(check(&t, "/rbee.v1.Scheduler/Renew", Some(W)), Ok(()));
        assert_eq!(check(&t, "/rbee.v1.Fleet/Announce", Some(R)), Err(tonic::Code::PermissionDenied));
        assert_eq!(check(&t, "/rbee.v1.Fleet/ListHives", None), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            check(&t, "/rbee.v1.Fleet/ListHives", Some("nope-nope-nope-nope")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(check(&t, "/grpc.health.v1.Health/Check", None), Ok(()));
        assert_eq!(
            check(&t, "/rbee.v1.Fleet/SomethingNew", Some(R)),
            Err(tonic::Code::PermissionDenied),
            "unknown methods need write"
        );
    }

    #[test]
    fn without_tokens_everything_is_open() {
        assert_eq!(check(&Tokens::default(), "/rbee.v1.Scheduler/Place", None), Ok(()));
    }

    #[test]
    fn short_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "short\n").unwrap();
        assert!(Tokens::load(Some(&f), None).is_err());
        std::fs::write(&f, format!("{R}\n")).unwrap();
        assert!(Tokens::load(Some(&f), None).unwrap().enabled());
    }
}
