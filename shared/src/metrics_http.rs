//! The `/metrics` HTTP endpoint both daemons serve for Prometheus: a small hyper
//! server (HTTP/1.1) that renders the text exposition format on every `GET /metrics`,
//! behind the same exposure rule as the gRPC listeners (loopback by default; beyond it,
//! a bearer token is required) and the same bearer check.
//!
//! What is rendered is the caller's business ([`Render`]); the text itself is always
//! written by `prometheus-client`.
//!
//! Slow or idle clients cannot starve a scrape: a client has [`HEADER_TIMEOUT`] to send
//! its request head, a connection with no request in progress is closed after
//! [`IDLE_TIMEOUT`], and at most [`MAX_CONNECTIONS`] are kept, at most
//! [`MAX_PER_PEER`] from one peer (one IPv4 address, one IPv6 /64). A peer over its own
//! cap makes room from its own oldest idle connection. A new connection beyond the
//! overall cap closes an idle connection that is done with a request (kept alive between
//! scrapes) or is past its header timeout, or else the oldest idle connection of the peer
//! holding the most (more than one); when none qualifies it is closed itself. So a
//! connect flood (connections that never send a byte) from a few peers cannot close a
//! scraper's connection that is still within its header timeout (hostile round 3: a
//! scraper waiting 0.5 s between connect and request lost 6 of 10 scrapes).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lock::MutexExt;

/// The content type of the Prometheus text format (version 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections kept at once. Beyond it, a new connection closes the oldest idle one;
/// when every one is busy answering, the new one is closed.
pub const MAX_CONNECTIONS: usize = 32;

/// Connections kept at once from one peer (an IPv4 address or an IPv6 /64).
pub const MAX_PER_PEER: usize = 8;

/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may stay open with no request in progress (kept alive
/// between scrapes, or never sending one).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Renders the exposition text at scrape time, or says why it cannot.
pub type Render = Arc<dyn Fn() -> BoxFuture<'static, Result<String, RenderError>> + Send + Sync>;

/// Why the exposition text cannot be rendered (answered as a 500).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The text encoder failed.
    #[error("encoding failed: {0}")]
    Encode(#[from] std::fmt::Error),
    /// The thread that rendered it failed.
    #[error("the rendering thread failed: {0}")]
    Thread(#[from] tokio::task::JoinError),
}

/// A metrics listener beyond loopback without a bearer token, and not `--insecure`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to serve metrics on {listen} without a bearer token: configure a token, bind {flag} to a \
     loopback address, or pass --insecure"
)]
pub struct ExposureError {
    /// The listen address.
    pub listen: SocketAddr,
    /// The listen flag, named in the message.
    pub flag: String,
}

/// Who may scrape: any bearer token in the list; no tokens means open.
#[derive(Clone, Default)]
pub struct MetricsAccess {
    /// Accepted tokens.
    tokens: Vec<Arc<[u8]>>,
}

impl std::fmt::Debug for MetricsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsAccess").field("tokens", &self.tokens.len()).finish()
    }
}

impl MetricsAccess {
    /// Accepts any of `tokens` (none: open).
    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Self { tokens: tokens.into_iter().map(Arc::from).collect() }
    }

    /// True when a token is required.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks an `authorization` header value; compares in constant time.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        if self.tokens.is_empty() {
            return true;
        }
        let Some(given) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else { return false };
        self.tokens.iter().fold(false, |ok, t| ok | bool::from(t.ct_eq(given)))
    }
}

/// Where and for whom a daemon serves `/metrics`.
#[derive(Debug, Clone)]
pub struct MetricsEndpoint {
    /// The address to bind (used when no `listener` is given).
    pub listen: SocketAddr,
    /// A listener bound already (tests bind port 0 and read the port back).
    pub listener: Option<Arc<std::net::TcpListener>>,
    /// Who may scrape.
    pub access: MetricsAccess,
}

impl MetricsEndpoint {
    /// Binds `listen`, or takes over the given listener.
    pub fn bind(&self) -> std::io::Result<TcpListener> {
        let std = match &self.listener {
            Some(l) => l.try_clone()?,
            None => std::net::TcpListener::bind(self.listen)?,
        };
        std.set_nonblocking(true)?;
        TcpListener::from_std(std)
    }
}

/// The exposure rule: a listener beyond loopback needs a token, unless `insecure`
/// (then the caller logs a warning). `flag` names the listen flag in the error.
pub fn check_exposure(
    listen: SocketAddr,
    access: &MetricsAccess,
    insecure: bool,
    flag: &str,
) -> Result<(), ExposureError> {
    if listen.ip().is_loopback() || access.enabled() || insecure {
        return Ok(());
    }
    Err(ExposureError { listen, flag: flag.to_owned() })
}

/// The peer a connection is counted against: its IPv4 address (an IPv4-mapped IPv6
/// address counts as IPv4), or the /64 of its IPv6 address.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// The peer it is counted against ([`peer_key`]).
    peer: IpAddr,
    /// When it was accepted.
    accepted: Instant,
    /// A request is being answered.
    busy: AtomicBool,
    /// At least one request was answered on it.
    served: AtomicBool,
    /// When its last request ended (or it was accepted).
    last_active: Mutex<Instant>,
    /// Cancelled to close it for a newer connection.
    close: CancellationToken,
}

impl Conn {
    fn new(peer: IpAddr) -> Self {
        let now = Instant::now();
        Self {
            peer,
            accepted: now,
            busy: AtomicBool::new(false),
            served: AtomicBool::new(false),
            last_active: Mutex::new(now),
            close: CancellationToken::new(),
        }
    }

    fn set_busy(&self, busy: bool) {
        if !busy {
            *self.last_active.lock_unpoisoned() = Instant::now();
            self.served.store(true, Ordering::SeqCst);
        }
        self.busy.store(busy, Ordering::SeqCst);
    }

    /// Idle and either done with a request or past its header timeout: closing it
    /// interrupts no client that is about to send a request.
    fn is_spent(&self, now: Instant) -> bool {
        !self.is_busy() && (self.served.load(Ordering::SeqCst) || now >= self.accepted + HEADER_TIMEOUT)
    }

    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    /// When it will have been idle for [`IDLE_TIMEOUT`]; a busy one is looked at again
    /// a whole timeout from now.
    fn idle_deadline(&self) -> Instant {
        if self.is_busy() {
            Instant::now() + IDLE_TIMEOUT
        } else {
            *self.last_active.lock_unpoisoned() + IDLE_TIMEOUT
        }
    }
}

/// The open connections, oldest first (by accept order).
#[derive(Default)]
struct Conns {
    /// The next connection's number.
    next: u64,
    /// Open connections by number.
    open: BTreeMap<u64, Arc<Conn>>,
}

impl Conns {
    /// Makes room for one more from `peer` and registers it; `None` when no connection
    /// may be closed for it (the new one is then refused). `cap`: connections in all,
    /// `per_peer`: from one peer.
    ///
    /// - The peer at its own cap: its oldest idle connection makes room.
    /// - At the overall cap: the idle connection that has been idle longest among those
    ///   done with a request or past their header timeout; else the oldest idle one of
    ///   the peer holding the most connections, if that is more than one. A connection
    ///   still within its header timeout is never closed for a newer one from a peer
    ///   holding no more connections than its own.
    fn admit(&mut self, peer: IpAddr, cap: usize, per_peer: usize) -> Option<(u64, Arc<Conn>)> {
        let peer = peer_key(peer);
        let mine = self.open.values().filter(|c| c.peer == peer).count();
        if mine >= per_peer {
            let victim = self.open.iter().find(|(_, c)| c.peer == peer && !c.is_busy()).map(|(n, _)| *n)?;
            self.close(victim);
        } else if self.open.len() >= cap {
            let victim = self.victim()?;
            self.close(victim);
        }
        let n = self.next;
        self.next += 1;
        let conn = Arc::new(Conn::new(peer));
        self.open.insert(n, conn.clone());
        Some((n, conn))
    }

    /// Which connection to close for a new one at the overall cap (see [`Conns::admit`]).
    fn victim(&self) -> Option<u64> {
        let now = Instant::now();
        let spent = self
            .open
            .iter()
            .filter(|(_, c)| c.is_spent(now))
            .min_by_key(|(_, c)| *c.last_active.lock_unpoisoned())
            .map(|(n, _)| *n);
        if spent.is_some() {
            return spent;
        }
        let mut per_peer: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for c in self.open.values() {
            *per_peer.entry(c.peer).or_default() += 1;
        }
        let mut peers: Vec<(usize, IpAddr)> = per_peer.into_iter().map(|(p, k)| (k, p)).collect();
        peers.sort_by_key(|p| std::cmp::Reverse(p.0));
        peers.into_iter().filter(|(k, _)| *k > 1).find_map(|(_, peer)| {
            self.open.iter().find(|(_, c)| c.peer == peer && !c.is_busy()).map(|(n, _)| *n)
        })
    }

    fn close(&mut self, n: u64) {
        if let Some(c) = self.open.remove(&n) {
            c.close.cancel();
        }
    }
}

/// Serves `/metrics` on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, render: Render, access: MetricsAccess, cancel: CancellationToken) {
    let conns = Arc::new(Mutex::new(Conns::default()));
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    continue;
                }
            },
        };
        let Some((n, conn)) = conns.lock_unpoisoned().admit(peer.ip(), MAX_CONNECTIONS, MAX_PER_PEER) else {
            tracing::debug!(%peer, "metrics: no connection may be closed for a new one; new connection closed");
            continue;
        };
        let (render, access, cancel, conns) = (render.clone(), access.clone(), cancel.clone(), conns.clone());
        tokio::spawn(async move {
            serve_connection(stream, peer, &conn, render, access, cancel).await;
            conns.lock_unpoisoned().open.remove(&n);
        });
    }
}

/// Serves one connection until it ends, is idle too long, is closed for a newer one,
/// or `cancel` fires.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    conn: &Arc<Conn>,
    render: Render,
    access: MetricsAccess,
    cancel: CancellationToken,
) {
    let state = conn.clone();
    let service = hyper::service::service_fn(move |req| {
        let (render, access, state) = (render.clone(), access.clone(), state.clone());
        async move {
            state.set_busy(true);
            let response = respond(req, &render, &access).await;
            state.set_busy(false);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(http);
    // Once asked to close, a request in progress is answered within this deadline.
    let mut closing: Option<Instant> = None;
    loop {
        let idle = conn.idle_deadline();
        let hard = closing.unwrap_or(idle);
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
                }
                return;
            }
            () = cancel.cancelled() => return,
            () = conn.close.cancelled(), if closing.is_none() => {
                if !conn.is_busy() {
                    tracing::debug!(%peer, "metrics: idle connection closed for a newer one");
                    return;
                }
                http.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + HEADER_TIMEOUT);
            }
            () = tokio::time::sleep_until(hard) => {
                if closing.is_some() {
                    return;
                }
                if !conn.is_busy() && Instant::now() >= conn.idle_deadline() {
                    tracing::debug!(%peer, "metrics: idle connection closed");
                    return;
                }
            }
        }
    }
}

/// One request's answer.
async fn respond(req: Request<Incoming>, render: &Render, access: &MetricsAccess) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n");
    }
    if !access.allows(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        let mut r = plain(
            StatusCode::UNAUTHORIZED,
            "missing or invalid bearer token (authorization: Bearer TOKEN)\n",
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    }
    match render().await {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(CONTENT_TYPE));
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot render the metrics");
            plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot render the metrics: {e}\n"))
        }
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A Prometheus label name made from free text: characters outside `[A-Za-z0-9_]`
/// become `_`, and a leading digit gets a `_` in front.
pub fn label_name(text: &str) -> String {
    let mut name: String = text.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) || name.is_empty() {
        name.insert(0, '_');
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked() {
        let open = MetricsAccess::default();
        assert!(open.allows(None));
        let access = MetricsAccess::new([b"0123456789abcdef".as_slice(), b"fedcba9876543210".as_slice()]);
        assert!(!access.allows(None));
        assert!(!access.allows(Some(b"0123456789abcdef")));
        assert!(!access.allows(Some(b"Bearer wrong")));
        assert!(access.allows(Some(b"Bearer 0123456789abcdef")));
        assert!(access.allows(Some(b"Bearer fedcba9876543210")));
    }

    #[test]
    fn beyond_loopback_needs_a_token() {
        let open = MetricsAccess::default();
        let token = MetricsAccess::new([b"0123456789abcdef".as_slice()]);
        let lo: SocketAddr = "127.0.0.1:7834".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7834".parse().unwrap();
        assert!(check_exposure(lo, &open, false, "--metrics-listen").is_ok());
        let err = check_exposure(any, &open, false, "--metrics-listen").unwrap_err().to_string();
        assert!(err.contains("0.0.0.0:7834") && err.contains("token"), "{err}");
        assert!(check_exposure(any, &token, false, "--metrics-listen").is_ok());
        assert!(check_exposure(any, &open, true, "--metrics-listen").is_ok());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_peer_at_its_cap_makes_room_from_its_own_oldest_idle_connection() {
        let mut conns = Conns::default();
        let first: Vec<_> = (0..3).map(|_| conns.admit(ip("127.0.0.2"), 10, 3).unwrap()).collect();
        first[0].1.set_busy(true);
        let (n, _) = conns.admit(ip("127.0.0.2"), 10, 3).unwrap();
        assert_eq!(n, 3);
        assert!(!first[0].1.close.is_cancelled(), "a busy connection is kept");
        assert!(first[1].1.close.is_cancelled(), "the peer's oldest idle one is closed");
        assert_eq!(conns.open.keys().copied().collect::<Vec<_>>(), [0, 2, 3]);
        for c in conns.open.values() {
            c.set_busy(true);
        }
        assert!(conns.admit(ip("127.0.0.2"), 10, 3).is_none(), "all busy: the new one is refused");
        // Another peer is not held back by it.
        assert!(conns.admit(ip("127.0.0.1"), 10, 3).is_some());
    }

    /// Hostile round 3, F6: a connect flood must not close a connection that has not
    /// sent its request yet (the old rule closed the oldest idle one, whoever held it).
    #[test]
    fn a_flood_never_closes_another_peers_fresh_connection() {
        let mut conns = Conns::default();
        let (_, scraper) = conns.admit(ip("127.0.0.1"), 4, 4).unwrap();
        for _ in 0..100 {
            assert!(conns.admit(ip("127.0.0.2"), 4, 4).is_some());
            assert!(!scraper.close.is_cancelled(), "the scraper's connection was closed for the flood");
        }
        // Spread over peers of one connection each, the flood is refused instead.
        let mut conns = Conns::default();
        let (_, scraper) = conns.admit(ip("127.0.0.1"), 4, 4).unwrap();
        for i in 2..5 {
            conns.admit(ip(&format!("127.0.0.{i}")), 4, 4).unwrap();
        }
        assert!(conns.admit(ip("127.0.0.9"), 4, 4).is_none());
        assert!(!scraper.close.is_cancelled());
        // Once the scrape is done, its kept-alive connection may make room.
        scraper.set_busy(true);
        scraper.set_busy(false);
        assert!(conns.admit(ip("127.0.0.9"), 4, 4).is_some());
        assert!(scraper.close.is_cancelled());
    }

    #[test]
    fn ipv6_peers_count_by_their_slash_64() {
        assert_eq!(peer_key(ip("2001:db8:1:2:aaaa::1")), peer_key(ip("2001:db8:1:2:bbbb::2")));
        assert_ne!(peer_key(ip("2001:db8:1:2::1")), peer_key(ip("2001:db8:1:3::1")));
        assert_eq!(peer_key(ip("::ffff:127.0.0.2")), ip("127.0.0.2"));
    }

    #[test]
    fn label_names_are_valid() {
        assert_eq!(label_name("zone"), "zone");
        assert_eq!(label_name("rbee.io/rack-1"), "rbee_io_rack_1");
        assert_eq!(label_name("1x"), "_1x");
    }
}
