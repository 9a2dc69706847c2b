//! Downloading one file: ranged GETs that resume from the bytes already on disk (after
//! a network break or a restart), retried with backoff, hashed with SHA-256 while
//! streaming, and checked against the declared size and hash.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbee_shared::FileSource;
use rbee_shared::backoff::Backoff;
use rbee_shared::lock::MutexExt;
use reqwest::StatusCode;
use reqwest::header;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

pub use super::download_error::DownloadError;
use super::hub::HubConfig;
use super::manifest::{self, PartSidecar};
use super::progress::Progress;
use super::sink::Sink;
use super::{disk, http, layout};

/// Attempts in a row without a new byte before a download fails.
const MAX_ATTEMPTS_WITHOUT_PROGRESS: u32 = 6;
/// Backoff between attempts.
const RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest wait between attempts.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Too-slow attempts in a row (see [`MinProgress`]) before a download fails.
const MAX_SLOW_ATTEMPTS: u32 = 3;
/// Read buffer for hashing the bytes already on disk before a resume.
const READ_BUFFER: usize = 1 << 20;

/// What a download task needs besides its file.
pub struct FileJob<'a> {
    /// The shared client (bound to the egress rule).
    pub client: &'a http::Fetcher,
    /// Hub credentials (sent only to the Hub).
    pub hub: &'a HubConfig,
    /// The models directory (for the free-disk check).
    pub root: &'a Path,
    /// The model's partial directory.
    pub partial: &'a Path,
    /// The model's progress.
    pub progress: &'a Arc<Mutex<Progress>>,
    /// Bytes of the model's earlier files.
    pub base: u64,
    /// Declared bytes of the model's later files (None when one is not declared): with
    /// this file's size from the server, the model's total for the progress.
    pub rest: Option<u64>,
    /// Cancelled by CancelFetch.
    pub cancel: &'a CancellationToken,
    /// Cancelled when the hive shuts down.
    pub shutdown: &'a CancellationToken,
    /// The least progress an attempt must make.
    pub min_progress: MinProgress,
}

/// The minimum-progress rule: an attempt that receives fewer than `bytes` in any
/// `window` (counted in consecutive windows from its first byte) is dropped, so that a
/// server dripping bytes under the read timeout cannot hold a download slot forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinProgress {
    /// Least bytes per window.
    pub bytes: u64,
    /// The window.
    pub window: Duration,
}

impl Default for MinProgress {
    /// 64 KiB per 60 s.
    fn default() -> Self {
        Self { bytes: 64 << 10, window: Duration::from_secs(60) }
    }
}

/// A finished, verified file (still at its `.part` path).
#[derive(Debug, Clone)]
pub struct FileDone {
    /// Its size.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes already downloaded for `file` (0 when there is no valid sidecar for its URL).
pub fn bytes_on_disk(partial: &Path, file: &FileSource) -> u64 {
    match manifest::read::<PartSidecar>(&layout::part_sidecar(partial, &file.path)) {
        Some(s) if s.url == file.url => {
            std::fs::metadata(layout::part_file(partial, &file.path)).map(|m| m.len()).unwrap_or(0)
        }
        _ => 0,
    }
}

/// Downloads `file` into its `.part` file, with retries.
pub async fn fetch_file(job: &FileJob<'_>, file: &FileSource) -> Result<FileDone, DownloadError> {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut attempt = 0u32;
    let mut fruitless = 0u32;
    let mut slow = 0u32;
    loop {
        attempt += 1;
        job.progress.lock_unpoisoned().set_attempt(attempt);
        let before = bytes_on_disk(job.partial, file);
        match attempt_once(job, file).await {
            Ok(done) => return Ok(done),
            Err(e) if e.is_retryable() => {
                let after = bytes_on_disk(job.partial, file);
                // A dripping server makes some progress each time; too slow counts
                // on its own.
                slow = if matches!(e, DownloadError::TooSlow { .. }) { slow + 1 } else { 0 };
                if after > before && slow == 0 {
                    fruitless = 0;
                    backoff.reset();
                } else {
                    fruitless += 1;
                }
                if fruitless >= MAX_ATTEMPTS_WITHOUT_PROGRESS || slow >= MAX_SLOW_ATTEMPTS {
                    return Err(e);
                }
                let delay = backoff.next_delay();
                tracing::warn!(path = %file.path, attempt, error = %e, ?delay, "download interrupted; resuming");
                tokio::select! {
                    () = job.cancel.cancelled() => return Err(DownloadError::Cancelled),
                    () = job.shutdown.cancelled() => return Err(DownloadError::ShuttingDown),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Hashes the first `len` bytes of `path`.
pub(super) async fn hash_prefix(path: &Path, len: u64) -> Result<Sha256, DownloadError> {
    let mut hasher = Sha256::new();
    let mut f = tokio::fs::File::open(path).await.map_err(DownloadError::io(path))?;
    let mut buf = vec![0u8; READ_BUFFER];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = f.read(&mut buf[..want]).await.map_err(DownloadError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher)
}

/// How a resumed 206 shows another version of the file than the kept prefix came
/// from: another ETag or Last-Modified than the sidecar's, or another total.
fn changed(sidecar: Option<&PartSidecar>, headers: &header::HeaderMap, total: Option<u64>) -> Option<String> {
    let sidecar = sidecar?;
    if let (Some(was), Some(now)) = (&sidecar.etag, http::text(headers, header::ETAG))
        && *was != now
    {
        return Some(format!("ETag {was} became {now}"));
    }
    if let (Some(was), Some(now)) = (&sidecar.last_modified, http::text(headers, header::LAST_MODIFIED))
        && *was != now
    {
        return Some(format!("Last-Modified {was} became {now}"));
    }
    match (sidecar.total, total) {
        (Some(was), Some(now)) if was != now => Some(format!("its size {was} became {now}")),
        _ => None,
    }
}

/// One GET of the rest of `file`.
async fn attempt_once(job: &FileJob<'_>, file: &FileSource) -> Result<FileDone, DownloadError> {
    let part = layout::part_file(job.partial, &file.path);
    let sidecar_path = layout::part_sidecar(job.partial, &file.path);
    if let Some(parent) = part.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(DownloadError::io(parent))?;
    }
    let sidecar = manifest::read::<PartSidecar>(&sidecar_path).filter(|s| s.url == file.url);
    let mut have = if sidecar.is_some() { bytes_on_disk(job.partial, file) } else { 0 };

    let mut headers = header::HeaderMap::new();
    if have > 0 {
        let range = header::HeaderValue::from_str(&format!("bytes={have}-")).map_err(|e| {
            DownloadError::Network { url: file.url.clone(), reason: format!("a Range header: {e}") }
        })?;
        headers.insert(header::RANGE, range);
        // If-Range takes a strong ETag only (RFC 9110 13.1.5); else Last-Modified.
        let strong = sidecar.as_ref().and_then(|s| s.etag.clone()).filter(|e| !e.starts_with("W/"));
        if let Some(validator) = strong.or_else(|| sidecar.as_ref().and_then(|s| s.last_modified.clone()))
            && let Ok(value) = header::HeaderValue::from_str(&validator)
        {
            headers.insert(header::IF_RANGE, value);
        }
    }
    let response = tokio::select! {
        () = job.cancel.cancelled() => return Err(DownloadError::Cancelled),
        () = job.shutdown.cancelled() => return Err(DownloadError::ShuttingDown),
        r = job.client.get(&file.url, &headers, job.hub) => r?,
    };
    let status = response.status();
    let headers = response.headers().clone();
    let total = match status {
        StatusCode::PARTIAL_CONTENT if have > 0 => match http::content_range(&headers) {
            Some((start, total)) if start == have => {
                if let Some(why) = changed(sidecar.as_ref(), &headers, total) {
                    // A 206 of another version of the file (a server that ignores
                    // If-Range): the kept prefix is worthless; start the file over.
                    let _ = tokio::fs::remove_file(&sidecar_path).await;
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(DownloadError::Network {
                        url: file.url.clone(),
                        reason: format!("the file changed on the server ({why}); starting it over"),
                    });
                }
                total
            }
            _ => {
                return Err(DownloadError::Network {
                    url: file.url.clone(),
                    reason: "the server answered a resume with another range".into(),
                });
            }
        },
        StatusCode::OK => {
            have = 0;
            response.content_length()
        }
        StatusCode::RANGE_NOT_SATISFIABLE
            if have > 0 && sidecar.as_ref().and_then(|s| s.total) == Some(have) =>
        {
            Some(have)
        }
        _ => return Err(DownloadError::Status { url: file.url.clone(), status: status.as_u16() }),
    };
    if let (Some(expected), Some(actual)) = (file.size_bytes, total)
        && expected != actual
    {
        return Err(DownloadError::SizeMismatch { path: file.path.clone(), expected, actual });
    }
    let total = total.or(file.size_bytes);
    if let (Some(total), Some(rest)) = (total, job.rest) {
        // Without declared sizes, the server's length gives the progress its total
        // (and so a percentage and an ETA).
        job.progress.lock_unpoisoned().learn_total(job.base.saturating_add(total).saturating_add(rest));
    }
    if let Some(total) = total {
        let needed = total.saturating_sub(have);
        let free = disk::space(job.root).map_err(DownloadError::io(job.root))?.free_bytes;
        if needed > free {
            return Err(DownloadError::InsufficientDisk {
                dir: job.root.display().to_string(),
                needed,
                free,
            });
        }
    }
    if have == 0 {
        let record = PartSidecar {
            url: file.url.clone(),
            etag: http::text(&headers, header::ETAG),
            last_modified: http::text(&headers, header::LAST_MODIFIED),
            total,
        };
        manifest::write_private(&sidecar_path, &record).map_err(DownloadError::io(&sidecar_path))?;
    }
    let hasher = if have > 0 { hash_prefix(&part, have).await? } else { Sha256::new() };
    let handle = if have > 0 {
        tokio::fs::OpenOptions::new().append(true).open(&part).await
    } else {
        tokio::fs::File::create(&part).await
    }
    .map_err(DownloadError::io(&part))?;
    // Chunks are hashed and written in order by the sink's thread, while this task receives.
    let mut writer = Sink::start(handle.into_std().await, hasher);
    job.progress.lock_unpoisoned().set_done(job.base + have);
    let mut got = have;
    let mut response = response;
    let rule = job.min_progress;
    let (mut window_end, mut window_from) = (tokio::time::Instant::now() + rule.window, have);
    let result = loop {
        let chunk = tokio::select! {
            () = job.cancel.cancelled() => break Err(DownloadError::Cancelled),
            () = job.shutdown.cancelled() => break Err(DownloadError::ShuttingDown),
            () = tokio::time::sleep_until(window_end) => {
                if got - window_from < rule.bytes {
                    break Err(DownloadError::TooSlow {
                        url: file.url.clone(),
                        got: got - window_from,
                        min: rule.bytes,
                        window: rule.window,
                    });
                }
                (window_end, window_from) = (window_end + rule.window, got);
                continue;
            }
            c = response.chunk() => c,
        };
        match chunk {
            Ok(Some(bytes)) => {
                if let Some(total) = total
                    && got + bytes.len() as u64 > total
                {
                    break Err(DownloadError::SizeMismatch {
                        path: file.path.clone(),
                        expected: total,
                        actual: got + bytes.len() as u64,
                    });
                }
                let n = bytes.len() as u64;
                if let Err(e) = writer.write(bytes).await {
                    break Err(DownloadError::io(&part)(e));
                }
                got += n;
                job.progress.lock_unpoisoned().add_from(rbee_shared::model::ORIGIN_SOURCE, n);
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(DownloadError::network(&file.url)(e)),
        }
    };
    // Keep what arrived, whatever happened: a resume continues from it. A complete file
    // is fsync'd before it is checked (and, by the caller, renamed into place).
    let complete = result.is_ok() && total.is_none_or(|total| got >= total);
    let written = writer.finish(complete).await.map_err(DownloadError::io(&part));
    result?;
    let hasher = written?;
    if let Some(total) = total
        && got < total
    {
        return Err(DownloadError::Truncated { path: file.path.clone(), got, total });
    }
    let sha256 = hex(&hasher.finalize());
    if let Some(expected) = &file.sha256
        && *expected != sha256
    {
        return Err(DownloadError::Sha256Mismatch {
            path: file.path.clone(),
            expected: expected.clone(),
            actual: sha256,
        });
    }
    Ok(FileDone { size: got, sha256 })
}
