//! One read of one file from one peer: `ReadModelFile` from the bytes already on disk,
//! into the same `.part` file, hasher and writer ([`Sink`]) as an origin download, held
//! to the same minimum-progress rule, and checked against the file's size and sha256.

use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_client::HiveClient;
use rbee_shared::FileSource;
use rbee_shared::lock::MutexExt;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use super::{PeerSource, start_sidecar};
use crate::models::download::{self, DownloadError, FileDone, FileJob};
use crate::models::sink::Sink;
use crate::models::{disk, layout};

/// Largest message read from a peer (its chunks are far smaller).
const MAX_CHUNK_MESSAGE_BYTES: usize = 16 << 20;
/// Longest part of a peer's error text kept.
const REASON_BYTES: usize = 200;

/// The longest window of the minimum-progress rule for a peer: a peer that stalls is
/// dropped within it (the origin's window is longer: 60 s by default).
pub const PEER_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// The minimum-progress rule for a peer: the download's, its window at most
/// [`PEER_WINDOW`] (the same bytes in it).
pub fn peer_rule(rule: download::MinProgress) -> download::MinProgress {
    download::MinProgress { bytes: rule.bytes, window: rule.window.min(PEER_WINDOW) }
}

/// How a read from a peer ended without the file.
#[derive(Debug)]
pub enum PeerFailure {
    /// The fetch stops (cancel, shutdown, a local write, the disk).
    Fatal(DownloadError),
    /// The peer failed, ended early, stalled or sent what it should not: the next source
    /// continues from the bytes on disk. `kept`: bytes it wrote this time.
    Dropped {
        /// Why, for the log.
        why: String,
        /// Bytes it wrote.
        kept: u64,
    },
    /// The whole file arrived and its sha256 is wrong.
    Corrupt {
        /// The mismatch.
        error: DownloadError,
        /// Bytes it wrote.
        kept: u64,
    },
}

fn dropped(why: impl Into<String>, kept: u64) -> PeerFailure {
    PeerFailure::Dropped { why: why.into(), kept }
}

/// A peer's status as a bounded line.
fn status_reason(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), rbee_shared::view_budget::bounded(s.message(), REASON_BYTES))
}

/// Reads the rest of `file` (size and sha256 known) of model `model_id` from `peer`.
/// Returns the verified file and the bytes this peer wrote.
pub async fn read(
    job: &FileJob<'_>,
    model_id: &str,
    file: &FileSource,
    peer: &PeerSource,
    channel: Channel,
) -> Result<(FileDone, u64), PeerFailure> {
    let fatal = PeerFailure::Fatal;
    let (Some(size), Some(expected)) = (file.size_bytes, file.sha256.clone()) else {
        return Err(dropped("the file's size and sha256 are not known", 0));
    };
    let part = layout::part_file(job.partial, &file.path);
    if let Some(parent) = part.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(|e| fatal(DownloadError::io(parent)(e)))?;
    }
    let mut have = download::bytes_on_disk(job.partial, file);
    if have > size {
        have = 0;
    }
    if have == 0 {
        start_sidecar(job.partial, file)
            .map_err(|e| fatal(DownloadError::io(&layout::part_sidecar(job.partial, &file.path))(e)))?;
    }
    let free = disk::space(job.root).map_err(|e| fatal(DownloadError::io(job.root)(e)))?.free_bytes;
    if size - have > free {
        return Err(fatal(DownloadError::InsufficientDisk {
            dir: job.root.display().to_string(),
            needed: size - have,
            free,
        }));
    }
    let hasher =
        if have > 0 { download::hash_prefix(&part, have).await.map_err(fatal)? } else { Sha256::new() };
    let rule = peer_rule(job.min_progress);
    let mut stream = if have < size {
        let request = pb::ReadModelFileRequest {
            model_id: model_id.to_owned(),
            path: file.path.clone(),
            offset: have,
            allow_partial: peer.partial,
        };
        let mut client = HiveClient::new(channel).max_decoding_message_size(MAX_CHUNK_MESSAGE_BYTES);
        let answer = tokio::select! {
            () = job.cancel.cancelled() => return Err(fatal(DownloadError::Cancelled)),
            () = job.shutdown.cancelled() => return Err(fatal(DownloadError::ShuttingDown)),
            () = tokio::time::sleep(rule.window) => return Err(dropped("no answer within the minimum-progress window", 0)),
            r = client.read_model_file(request) => r,
        };
        Some(answer.map_err(|s| dropped(status_reason(&s), 0))?.into_inner())
    } else {
        None
    };
    let handle = if have > 0 {
        tokio::fs::OpenOptions::new().append(true).open(&part).await
    } else {
        tokio::fs::File::create(&part).await
    }
    .map_err(|e| fatal(DownloadError::io(&part)(e)))?;
    let mut writer = Sink::start(handle.into_std().await, hasher);
    job.progress.lock_unpoisoned().set_done(job.base + have);
    let mut got = have;
    let (mut window_end, mut window_from) = (tokio::time::Instant::now() + rule.window, have);
    let result: Result<(), PeerFailure> = loop {
        let Some(stream) = stream.as_mut() else { break Ok(()) };
        if got == size {
            break Ok(());
        }
        let message = tokio::select! {
            () = job.cancel.cancelled() => break Err(fatal(DownloadError::Cancelled)),
            () = job.shutdown.cancelled() => break Err(fatal(DownloadError::ShuttingDown)),
            () = tokio::time::sleep_until(window_end) => {
                if got - window_from < rule.bytes {
                    break Err(dropped(format!(
                        "only {} bytes in {:?}, fewer than {}: it stalled", got - window_from, rule.window, rule.bytes
                    ), got - have));
                }
                (window_end, window_from) = (window_end + rule.window, got);
                continue;
            }
            m = stream.message() => m,
        };
        let chunk = match message {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break Err(dropped(format!("its stream ended at {got} of {size} bytes"), got - have)),
            Err(s) => break Err(dropped(status_reason(&s), got - have)),
        };
        if let Some(theirs) = chunk.size_bytes
            && theirs != size
        {
            break Err(dropped(format!("it holds {theirs} bytes of {}, not {size}", file.path), got - have));
        }
        if let Some(theirs) = &chunk.sha256
            && *theirs != expected
        {
            break Err(dropped(
                format!(
                    "it holds another {} (sha256 {})",
                    file.path,
                    rbee_shared::view_budget::bounded(theirs, 64)
                ),
                got - have,
            ));
        }
        if chunk.offset != got {
            break Err(dropped(format!("it sent offset {}, not {got}", chunk.offset), got - have));
        }
        let n = chunk.data.len() as u64;
        if got + n > size {
            break Err(dropped(format!("it sent bytes past the file's {size}"), got - have));
        }
        if n == 0 {
            continue;
        }
        if let Err(e) = writer.write(chunk.data).await {
            break Err(fatal(DownloadError::io(&part)(e)));
        }
        got += n;
        job.progress.lock_unpoisoned().add_from(&peer.hive_id, n);
    };
    let written = writer.finish(result.is_ok() && got == size).await;
    result?;
    let hasher = written.map_err(|e| fatal(DownloadError::io(&part)(e)))?;
    let kept = got - have;
    let sha256 = download::hex(&hasher.finalize());
    if sha256 != expected {
        let error = DownloadError::Sha256Mismatch { path: file.path.clone(), expected, actual: sha256 };
        return Err(PeerFailure::Corrupt { error, kept });
    }
    Ok((FileDone { size, sha256 }, kept))
}
