//! A small HTTP/1.1 file server on `127.0.0.1:0` for download tests: it serves
//! generated files with `Range`/`If-Range`, answers the Hugging Face Hub endpoints the
//! hive uses, counts the body bytes it sends, and can be throttled, made to drop a
//! connection mid-body once, made to corrupt a byte, to replace a file under a new
//! ETag, to ignore `If-Range`, or to drip the body a byte at a time. It can also
//! redirect a path elsewhere, serve JSON without a Content-Length, and listen on any
//! address (e.g. a trap on 169.254.169.254 inside a test's own network namespace); it
//! records every request's path and Authorization header.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes per write (and per throttle step).
const CHUNK: usize = 64 * 1024;

/// `len` deterministic pseudo-random bytes (xorshift64 from `seed`).
pub fn generated(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SHA-256 in lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
struct State {
    /// Path -> content.
    files: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    /// Extra JSON documents by path (Hub API answers).
    json: Mutex<HashMap<String, String>>,
    /// Body bytes sent.
    sent: AtomicU64,
    /// GET requests served (files only).
    gets: AtomicU64,
    /// Bytes per second per connection; 0 = unthrottled.
    throttle: AtomicU64,
    /// Drop the next connection after this many body bytes (u64::MAX = never).
    drop_after: AtomicU64,
    /// Authorization headers seen on Hub API requests.
    auth: Mutex<Vec<String>>,
    /// Times each path was replaced (part of its ETag).
    versions: Mutex<HashMap<String, u64>>,
    /// Answer a Range with 206 even when If-Range names another version.
    ignore_if_range: std::sync::atomic::AtomicBool,
    /// Send the body one byte per this many ms (0 = off): a slow drip.
    drip_ms: AtomicU64,
    /// Every request: its path and Authorization header.
    requests: Mutex<Vec<(String, Option<String>)>>,
    /// Paths answered with `302 Found` to a URL.
    redirects: Mutex<HashMap<String, String>>,
    /// Serve JSON documents without a Content-Length (the body ends at close).
    json_unsized: std::sync::atomic::AtomicBool,
    /// JSON body bytes sent.
    json_sent: AtomicU64,
    /// Serve whole files (200) without a Content-Length (the body ends at close).
    files_unsized: std::sync::atomic::AtomicBool,
}

/// The running server. Dropping it stops it.
pub struct FileServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileServer {
    /// Starts the server on `127.0.0.1:0`.
    pub async fn start() -> Self {
        Self::start_at("127.0.0.1:0".parse().expect("an address")).await.expect("bind the file server")
    }

    /// Starts the server on `addr` (which must be on loopback or in the test's own
    /// network namespace).
    pub async fn start_at(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr().expect("an address");
        let state = Arc::new(State { drop_after: AtomicU64::new(u64::MAX), ..State::default() });
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, s).await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// Answers `/path` with `302 Found` to `to`.
    pub fn redirect(&self, path: &str, to: &str) -> String {
        self.state.redirects.lock().unwrap().insert(format!("/{path}"), to.to_owned());
        self.url(path)
    }

    /// Serves `doc` as JSON at `/path` (e.g. a Hub listing).
    pub fn add_json(&self, path: &str, doc: String) {
        self.state.json.lock().unwrap().insert(format!("/{path}"), doc);
    }

    /// Serves JSON documents without a Content-Length: the body ends when the
    /// connection closes, so a client learns its size only by reading it.
    pub fn json_unsized(&self, on: bool) {
        self.state.json_unsized.store(on, Ordering::SeqCst);
    }

    /// Serves whole files (200 answers) without a Content-Length: the body ends when
    /// the connection closes, so a client learns a file's size only by reading it.
    pub fn files_unsized(&self, on: bool) {
        self.state.files_unsized.store(on, Ordering::SeqCst);
    }

    /// JSON body bytes sent so far.
    pub fn json_bytes_sent(&self) -> u64 {
        self.state.json_sent.load(Ordering::SeqCst)
    }

    /// Every request so far: its path and Authorization header.
    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Serves `data` at `/path`; returns its URL.
    pub fn add(&self, path: &str, data: Vec<u8>) -> String {
        self.state.files.lock().unwrap().insert(format!("/{path}"), Arc::new(data));
        self.url(path)
    }

    /// Replaces the file at `/path` with `data`, under a new ETag.
    pub fn replace(&self, path: &str, data: Vec<u8>) {
        *self.state.versions.lock().unwrap().entry(format!("/{path}")).or_default() += 1;
        self.add(path, data);
    }

    /// Makes the server answer a Range with 206 even when `If-Range` names another
    /// version of the file (a server that ignores `If-Range`).
    pub fn ignore_if_range(&self, ignore: bool) {
        self.state.ignore_if_range.store(ignore, Ordering::SeqCst);
    }

    /// Sends file bodies one byte every `ms` milliseconds (0: off).
    pub fn drip(&self, ms: u64) {
        self.state.drip_ms.store(ms, Ordering::SeqCst);
    }

    /// The URL of `/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// The base URL (for `HF_ENDPOINT`).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Flips one byte of the file at `/path`.
    pub fn corrupt(&self, path: &str, at: usize) {
        let mut files = self.state.files.lock().unwrap();
        let data = files.get_mut(&format!("/{path}")).expect("a served file");
        let mut copy = data.as_ref().clone();
        copy[at] ^= 0xff;
        *data = Arc::new(copy);
    }

    /// A Hub repository `repo` at `revision`, pinned to `commit`, with `files` (each
    /// listed with its LFS sha256 and size).
    pub fn add_hf_repo(&self, repo: &str, revision: &str, commit: &str, files: &[(&str, Vec<u8>)]) {
        let siblings: Vec<String> = files
            .iter()
            .map(|(name, data)| {
                format!(
                    r#"{{"rfilename":"{name}","size":{},"lfs":{{"sha256":"{}","size":{},"pointerSize":134}}}}"#,
                    data.len(),
                    sha256_hex(data),
                    data.len()
                )
            })
            .collect();
        let doc = format!(r#"{{"id":"{repo}","sha":"{commit}","siblings":[{}]}}"#, siblings.join(","));
        self.state.json.lock().unwrap().insert(format!("/api/models/{repo}/revision/{revision}"), doc);
        for (name, data) in files {
            self.add(&format!("{repo}/resolve/{commit}/{name}"), data.clone());
        }
    }

    /// Authorization headers the Hub API requests carried.
    pub fn hub_authorizations(&self) -> Vec<String> {
        self.state.auth.lock().unwrap().clone()
    }

    /// Body bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.state.sent.load(Ordering::SeqCst)
    }

    /// File GETs served so far.
    pub fn gets(&self) -> u64 {
        self.state.gets.load(Ordering::SeqCst)
    }

    /// Limits each connection to `bytes_per_s` (0: unlimited).
    pub fn throttle(&self, bytes_per_s: u64) {
        self.state.throttle.store(bytes_per_s, Ordering::SeqCst);
    }

    /// Drops the next connection after `bytes` body bytes (once).
    pub fn drop_once_after(&self, bytes: u64) {
        self.state.drop_after.store(bytes, Ordering::SeqCst);
    }
}

/// An HTTP request's head (request line and headers), as text.
type Head = String;

/// Reads a request head; `None` when the peer closed first.
async fn read_head(conn: &mut TcpStream) -> Result<Option<Head>, std::io::Error> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut byte).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&byte[..n]);
        if head.len() > 64 * 1024 {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

async fn serve(mut conn: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let Some(head) = read_head(&mut conn).await? else { return Ok(()) };
    let mut lines = head.lines();
    let request = lines.next().unwrap_or_default().to_owned();
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    state.requests.lock().unwrap().push((path.clone(), headers.get("authorization").cloned()));
    let location = state.redirects.lock().unwrap().get(&path).cloned();
    if let Some(location) = location {
        let reply = format!(
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return conn.write_all(reply.as_bytes()).await;
    }
    let doc = state.json.lock().unwrap().get(&path).cloned();
    if let Some(doc) = doc {
        if let Some(a) = headers.get("authorization") {
            state.auth.lock().unwrap().push(a.clone());
        }
        let length = if state.json_unsized.load(Ordering::SeqCst) {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", doc.len())
        };
        let head =
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}Connection: close\r\n\r\n");
        conn.write_all(head.as_bytes()).await?;
        for chunk in doc.as_bytes().chunks(CHUNK) {
            conn.write_all(chunk).await?;
            state.json_sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        return conn.shutdown().await;
    }
    let data = state.files.lock().unwrap().get(&path).cloned();
    let Some(data) = data else {
        return conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
    };
    let version = state.versions.lock().unwrap().get(&path).copied().unwrap_or(0);
    let etag = format!("\"{}-{version}-{}\"", data.len(), &sha256_hex(&data[..data.len().min(4096)])[..16]);
    let if_range_ok =
        state.ignore_if_range.load(Ordering::SeqCst) || headers.get("if-range").is_none_or(|v| *v == etag);
    let start = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|_| if_range_ok);
    let len = data.len();
    let (status, from) = match start {
        Some(s) if s >= len => {
            let reply = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return conn.write_all(reply.as_bytes()).await;
        }
        Some(s) => (format!("206 Partial Content\r\nContent-Range: bytes {s}-{}/{len}", len - 1), s),
        None => ("200 OK".to_owned(), 0),
    };
    let length = if from == 0 && state.files_unsized.load(Ordering::SeqCst) {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", len - from)
    };
    let head = format!(
        "HTTP/1.1 {status}\r\n{length}ETag: {etag}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await?;
    if method == "HEAD" {
        return Ok(());
    }
    state.gets.fetch_add(1, Ordering::SeqCst);
    let drop_after = state.drop_after.swap(u64::MAX, Ordering::SeqCst);
    let mut at = from;
    let drip = state.drip_ms.load(Ordering::SeqCst);
    while drip > 0 && at < len {
        conn.write_all(&data[at..=at]).await?;
        state.sent.fetch_add(1, Ordering::SeqCst);
        at += 1;
        tokio::time::sleep(Duration::from_millis(drip)).await;
    }
    while at < len {
        let throttle = state.throttle.load(Ordering::SeqCst);
        let end = (at + CHUNK).min(len);
        let end = if drop_after != u64::MAX { end.min(from + drop_after as usize).max(at) } else { end };
        if end == at {
            // Drop the connection mid-body: the client sees a truncated transfer.
            return Ok(());
        }
        conn.write_all(&data[at..end]).await?;
        let n = (end - at) as u64;
        state.sent.fetch_add(n, Ordering::SeqCst);
        at = end;
        if throttle > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / throttle as f64)).await;
        }
    }
    conn.shutdown().await
}
