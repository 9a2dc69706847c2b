//! One model download from start to end: wait for a slot, resolve the source, fetch
//! every file (from the peers first, then the origin: [`peer_fetch`]), then verify and move the model into place with one rename. Failure and
//! cancel remove the partial directory; a hive shutdown keeps it for a resume.

use std::sync::{Arc, Mutex};

use rbee_shared::lock::MutexExt;
use rbee_shared::{DownloadPhase, FileSource, ModelEntry, ModelFile, ModelSource, ModelState};
use tokio_util::sync::CancellationToken;

use super::download::{self, DownloadError, FileJob};
use super::manifest::{self, FetchRecord, Manifest};
use super::peer_fetch::{self, PeerSet};
use super::progress::Progress;
use super::{Inner, catalog, disk, hf, layout};

/// What the task ended with.
enum Outcome {
    /// Ready.
    Ready(Manifest),
    /// Stopped with this error.
    Stopped(DownloadError),
}

/// Runs the download of `record` to its end and records the outcome.
pub async fn run(
    inner: Arc<Inner>,
    record: FetchRecord,
    progress: Arc<Mutex<Progress>>,
    cancel: CancellationToken,
) {
    let id = record.id.clone();
    let outcome = match download(&inner, record, &progress, &cancel).await {
        Ok(manifest) => Outcome::Ready(manifest),
        Err(e) => Outcome::Stopped(e),
    };
    let partial = layout::partial_dir(&inner.config.dir, &id);
    let final_record = {
        let mut p = progress.lock_unpoisoned();
        match &outcome {
            Outcome::Ready(manifest) => {
                // The final record carries the model's size, declared or not.
                p.set_total(Some(manifest.files.iter().map(|f| f.size_bytes).sum()));
                p.set_phase(DownloadPhase::Done);
            }
            Outcome::Stopped(DownloadError::Cancelled) => p.set_phase(DownloadPhase::Cancelled),
            Outcome::Stopped(DownloadError::ShuttingDown) => {}
            Outcome::Stopped(e) => p.fail(e.to_string()),
        }
        p.record()
    };
    match outcome {
        Outcome::Ready(manifest) => {
            tracing::info!(model = %id, bytes = manifest.files.iter().map(|f| f.size_bytes).sum::<u64>(), "model ready");
            inner.catalog.put(catalog::ready_entry(&manifest));
        }
        Outcome::Stopped(DownloadError::ShuttingDown) => {
            tracing::info!(model = %id, "download paused by shutdown; resumes at the next start");
            inner.jobs.lock_unpoisoned().remove(&id);
            return;
        }
        Outcome::Stopped(e) => {
            if let Err(io) = layout::remove_tree(&partial) {
                tracing::error!(model = %id, error = %io, "cannot remove the partial download");
            }
            match e {
                DownloadError::Cancelled => {
                    tracing::info!(model = %id, "download cancelled; partial files removed");
                    inner.catalog.remove(&id);
                }
                e => {
                    tracing::warn!(model = %id, error = %e, "download failed; partial files removed");
                    let mut entry = inner.catalog.get(&id).unwrap_or_else(|| ModelEntry {
                        id: id.clone(),
                        state: ModelState::Failed,
                        files: Vec::new(),
                        size_bytes: 0,
                        error: None,
                        resident_bytes: None,
                        warm: false,
                    });
                    entry.state = ModelState::Failed;
                    entry.error = Some(e.to_string());
                    inner.catalog.put(entry);
                }
            }
        }
    }
    inner.finish(&id, final_record);
}

fn declared(id: &str, files: &[FileSource]) -> ModelEntry {
    ModelEntry {
        id: id.to_owned(),
        state: ModelState::Downloading,
        size_bytes: files.iter().filter_map(|f| f.size_bytes).sum(),
        files: files
            .iter()
            .map(|f| ModelFile {
                path: f.path.clone(),
                size_bytes: f.size_bytes.unwrap_or(0),
                sha256: f.sha256.clone(),
            })
            .collect(),
        error: None,
        resident_bytes: None,
        warm: false,
    }
}

async fn download(
    inner: &Arc<Inner>,
    mut record: FetchRecord,
    progress: &Arc<Mutex<Progress>>,
    cancel: &CancellationToken,
) -> Result<Manifest, DownloadError> {
    let shutdown = &inner.shutdown;
    let _permit = tokio::select! {
        () = cancel.cancelled() => return Err(DownloadError::Cancelled),
        () = shutdown.cancelled() => return Err(DownloadError::ShuttingDown),
        p = inner.slots.clone().acquire_owned() => p.map_err(|_| DownloadError::ShuttingDown)?,
    };
    let root = inner.config.dir.as_path();
    let partial = layout::partial_dir(root, &record.id);
    let files = match record.resolved.clone() {
        Some(files) => files,
        None => {
            let origin = match &record.source {
                Some(ModelSource::Urls(files)) => Some(files.clone()),
                Some(ModelSource::HuggingFace { repo, revision }) => Some(tokio::select! {
                    () = cancel.cancelled() => return Err(DownloadError::Cancelled),
                    () = shutdown.cancelled() => return Err(DownloadError::ShuttingDown),
                    r = hf::resolve(inner.client()?, &inner.hub, repo, revision) => r?,
                }),
                None => None,
            };
            let files = match peer_fetch::merge_files(origin.as_deref(), &record.peer_files) {
                Some(files) => files,
                None => {
                    tracing::warn!(model = %record.id, "the origin lists other files than the peers hold; fetching from the origin only");
                    record.peers.clear();
                    record.peer_files.clear();
                    origin.unwrap_or_default()
                }
            };
            record.resolved = Some(files.clone());
            let path = partial.join(layout::FETCH_RECORD);
            manifest::write_private(&path, &record)
                .map_err(|source| DownloadError::Io { path: path.display().to_string(), source })?;
            files
        }
    };
    inner.catalog.put(declared(&record.id, &files));
    let total = files.iter().map(|f| f.size_bytes).sum::<Option<u64>>();
    let on_disk: u64 = files.iter().map(|f| download::bytes_on_disk(&partial, f)).sum();
    if let Some(total) = total {
        let needed = total.saturating_sub(on_disk);
        let free = disk::space(root)
            .map_err(|source| DownloadError::Io { path: root.display().to_string(), source })?
            .free_bytes
            .saturating_sub(Inner::in_flight_bytes(&inner.jobs.lock_unpoisoned(), &record.id));
        if needed > free {
            return Err(DownloadError::InsufficientDisk { dir: root.display().to_string(), needed, free });
        }
    }
    {
        let mut p = progress.lock_unpoisoned();
        p.set_total(total);
        p.set_done(on_disk);
        p.set_phase(DownloadPhase::Downloading);
    }
    let client = inner.client()?;
    let mut peers = PeerSet::new(&record.peers, inner.config.peer_dialer.clone());
    let mut done = Vec::with_capacity(files.len());
    let mut base = 0u64;
    for (i, file) in files.iter().enumerate() {
        let rest = files[i + 1..].iter().map(|f| f.size_bytes).sum::<Option<u64>>();
        let job = FileJob {
            client,
            hub: &inner.hub,
            root,
            partial: &partial,
            progress,
            base,
            rest,
            cancel,
            shutdown,
            min_progress: inner.config.min_progress,
        };
        let finished = peer_fetch::fetch_file(&job, &record.id, file, &mut peers).await?;
        base += finished.size;
        done.push(ModelFile {
            path: file.path.clone(),
            size_bytes: finished.size,
            sha256: Some(finished.sha256),
        });
    }
    progress.lock_unpoisoned().set_phase(DownloadPhase::Verifying);
    let id = record.id.clone();
    let source = match &record.source {
        Some(origin) => super::redact::redact_source(origin),
        None => "peers".to_owned(),
    };
    let dir = inner.config.dir.clone();
    tokio::task::spawn_blocking(move || commit(&dir, &id, source, done))
        .await
        .map_err(|e| DownloadError::Io { path: "commit".into(), source: std::io::Error::other(e) })?
}

/// Moves the verified files into place and publishes the model with one rename.
fn commit(
    root: &std::path::Path,
    id: &str,
    source: String,
    files: Vec<ModelFile>,
) -> Result<Manifest, DownloadError> {
    if files.is_empty() {
        return Err(DownloadError::Resolve(format!("{id}: no files to make ready")));
    }
    let partial = layout::partial_dir(root, id);
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| DownloadError::Io { path, source }
    };
    for f in &files {
        let part = layout::part_file(&partial, &f.path);
        let target = partial.join(&f.path);
        std::fs::rename(&part, &target).map_err(io(&part))?;
        let sidecar = layout::part_sidecar(&partial, &f.path);
        let _ = std::fs::remove_file(&sidecar);
    }
    let _ = std::fs::remove_file(partial.join(layout::FETCH_RECORD));
    let manifest =
        Manifest { id: id.to_owned(), files, source, ready_at_unix_ms: rbee_shared::time::now_unix_ms() };
    let path = partial.join(layout::MANIFEST);
    manifest::write(&path, &manifest).map_err(io(&path))?;
    let target = layout::model_dir(root, id);
    layout::remove_tree(&target).map_err(io(&target))?;
    std::fs::rename(&partial, &target).map_err(io(&target))?;
    layout::sync_dir(root).map_err(io(root))?;
    Ok(manifest)
}
