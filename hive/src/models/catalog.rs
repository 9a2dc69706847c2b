//! The catalog: every model the hive holds or is downloading, published as a
//! latest-value `watch` so that capabilities follow it. Also what a scan of the models
//! directory finds: manifests of ready models, hand-copied models (no manifest yet) and
//! partial downloads to resume.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbee_shared::lock::MutexExt;
use rbee_shared::{ModelEntry, ModelFile, ModelState};
use tokio::sync::watch;

use super::layout;
use super::manifest::{self, FetchRecord, Manifest};

/// Models by id.
pub type ModelMap = BTreeMap<String, ModelEntry>;

/// The published catalog.
pub struct Catalog {
    /// Latest value; readers clone the `Arc`.
    tx: watch::Sender<Arc<ModelMap>>,
    /// When each failed entry failed, to keep the newest and age the rest out.
    failed_at: Mutex<BTreeMap<String, Instant>>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self { tx: watch::channel(Arc::new(ModelMap::new())).0, failed_at: Mutex::default() }
    }
}

impl Catalog {
    /// The current catalog.
    pub fn snapshot(&self) -> Arc<ModelMap> {
        self.tx.borrow().clone()
    }

    /// Sees every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ModelMap>> {
        self.tx.subscribe()
    }

    /// One model's entry.
    pub fn get(&self, id: &str) -> Option<ModelEntry> {
        self.tx.borrow().get(id).cloned()
    }

    /// Entries in the catalog.
    pub fn len(&self) -> usize {
        self.tx.borrow().len()
    }

    /// True when the catalog is empty.
    pub fn is_empty(&self) -> bool {
        self.tx.borrow().is_empty()
    }

    /// Notes when `id` failed, or forgets it when it is no longer failed.
    fn track(&self, id: &str, state: Option<ModelState>) {
        let mut failed_at = self.failed_at.lock_unpoisoned();
        if state == Some(ModelState::Failed) {
            failed_at.entry(id.to_owned()).or_insert_with(Instant::now);
        } else {
            failed_at.remove(id);
        }
    }

    /// Removes failed entries older than `max_age`, then the oldest beyond `keep`;
    /// returns how many were removed.
    pub fn prune_failed(&self, keep: usize, max_age: Duration) -> usize {
        let doomed: Vec<String> = {
            // The catalog's lock before `failed_at`, as in `update`.
            let map = self.tx.borrow();
            let mut failed_at = self.failed_at.lock_unpoisoned();
            failed_at.retain(|id, _| map.get(id).is_some_and(|e| e.state == ModelState::Failed));
            let mut by_age: Vec<(Instant, String)> =
                failed_at.iter().map(|(id, at)| (*at, id.clone())).collect();
            by_age.sort();
            let over = by_age.len().saturating_sub(keep);
            by_age
                .into_iter()
                .enumerate()
                .filter(|(i, (at, _))| *i < over || at.elapsed() >= max_age)
                .map(|(_, (_, id))| id)
                .collect()
        };
        if doomed.is_empty() {
            return 0;
        }
        // Only what is still failed: a model fetched again since it was picked (now
        // downloading) keeps its entry.
        let mut removed = Vec::with_capacity(doomed.len());
        self.tx.send_if_modified(|map| {
            let still_failed = |id: &String| map.get(id).is_some_and(|e| e.state == ModelState::Failed);
            let gone: Vec<String> = doomed.into_iter().filter(still_failed).collect();
            if gone.is_empty() {
                return false;
            }
            let map = Arc::make_mut(map);
            for id in &gone {
                map.remove(id);
            }
            removed = gone;
            true
        });
        let mut failed_at = self.failed_at.lock_unpoisoned();
        for id in &removed {
            failed_at.remove(id);
        }
        removed.len()
    }

    /// Inserts or replaces an entry (publishes only a real change).
    pub fn put(&self, entry: ModelEntry) {
        self.track(&entry.id, Some(entry.state));
        self.tx.send_if_modified(|map| {
            if map.get(&entry.id) == Some(&entry) {
                return false;
            }
            Arc::make_mut(map).insert(entry.id.clone(), entry);
            true
        });
    }

    /// Changes an entry in place, if present; `f` says whether it changed (only then is
    /// the catalog republished).
    pub fn update(&self, id: &str, f: impl FnOnce(&mut ModelEntry) -> bool) {
        self.tx.send_if_modified(|map| {
            let Some(current) = map.get(id) else { return false };
            let mut entry = current.clone();
            if !f(&mut entry) {
                return false;
            }
            self.track(id, Some(entry.state));
            Arc::make_mut(map).insert(id.to_owned(), entry);
            true
        });
    }

    /// Removes an entry; returns it.
    pub fn remove(&self, id: &str) -> Option<ModelEntry> {
        self.track(id, None);
        let mut removed = None;
        self.tx.send_if_modified(|map| {
            if !map.contains_key(id) {
                return false;
            }
            removed = Arc::make_mut(map).remove(id);
            true
        });
        removed
    }
}

/// A ready entry from a manifest.
pub fn ready_entry(manifest: &Manifest) -> ModelEntry {
    ModelEntry {
        id: manifest.id.clone(),
        state: ModelState::Ready,
        size_bytes: manifest.files.iter().map(|f| f.size_bytes).sum(),
        files: manifest.files.clone(),
        error: None,
        resident_bytes: None,
        warm: false,
    }
}

/// An unverified entry for a model found on disk without a (valid) manifest.
pub fn unverified_entry(id: &str, files: &[(String, u64)]) -> ModelEntry {
    ModelEntry {
        id: id.to_owned(),
        state: ModelState::Unverified,
        size_bytes: files.iter().map(|(_, s)| s).sum(),
        files: files
            .iter()
            .map(|(p, s)| ModelFile { path: p.clone(), size_bytes: *s, sha256: None })
            .collect(),
        error: None,
        resident_bytes: None,
        warm: false,
    }
}

/// What one scan of the models directory found.
#[derive(Debug, Default)]
pub struct Found {
    /// Ready models (valid manifest, files present with their sizes).
    pub ready: Vec<Manifest>,
    /// Models without a valid manifest, with their files: to verify.
    pub unverified: Vec<(String, layout::FileList)>,
    /// Downloads to resume.
    pub partial: Vec<FetchRecord>,
}

/// Scans `root`. Partial directories without a readable fetch record are orphans and
/// are removed; `.trash` is emptied.
pub fn scan(root: &Path) -> std::io::Result<Found> {
    let mut found = Found::default();
    let _ = layout::remove_tree(&root.join(layout::TRASH));
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.metadata()?.is_dir() {
            continue;
        }
        let Some(id) = layout::id_of_dir(&name) else {
            tracing::warn!(dir = %entry.path().display(), "not a valid model id; ignored");
            continue;
        };
        let files = layout::list_files(&entry.path())?;
        match manifest::read::<Manifest>(&entry.path().join(layout::MANIFEST)) {
            // A manifest of no files never makes a model ready.
            Some(m)
                if m.id == id
                    && !m.files.is_empty()
                    && matches_disk(&m.files, &files)
                    && !super::verify::changed_since_verified(&entry.path())? =>
            {
                found.ready.push(m)
            }
            _ => found.unverified.push((id, files)),
        }
    }
    let partial_root = root.join(layout::PARTIAL);
    if partial_root.is_dir() {
        for entry in std::fs::read_dir(&partial_root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let record = manifest::read::<FetchRecord>(&entry.path().join(layout::FETCH_RECORD))
                .filter(|r| layout::id_of_dir(&name).as_deref() == Some(r.id.as_str()));
            match record {
                Some(r) => {
                    // It keeps the whole URL: the hive's user only (an older hive wrote it 0644).
                    use std::os::unix::fs::PermissionsExt;
                    let path = entry.path().join(layout::FETCH_RECORD);
                    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot make the fetch record private");
                    }
                    found.partial.push(r)
                }
                None => {
                    tracing::warn!(dir = %entry.path().display(), "partial download without a fetch record; removed");
                    layout::remove_tree(&entry.path())?;
                }
            }
        }
    }
    Ok(found)
}

/// True when the files on disk are exactly the manifest's, with its sizes.
fn matches_disk(manifest: &[ModelFile], disk: &[(String, u64)]) -> bool {
    let mut listed: Vec<(String, u64)> = manifest.iter().map(|f| (f.path.clone(), f.size_bytes)).collect();
    listed.sort();
    listed == disk
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(id: &str) -> ModelEntry {
        ModelEntry { state: ModelState::Failed, ..unverified_entry(id, &[]) }
    }

    #[test]
    fn a_fetch_record_an_older_hive_left_readable_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let partial = layout::partial_dir(root.path(), "m");
        std::fs::create_dir_all(&partial).unwrap();
        let record = FetchRecord {
            id: "m".into(),
            source: Some(rbee_shared::ModelSource::HuggingFace {
                repo: "org/r".into(),
                revision: "main".into(),
            }),
            resolved: None,
            peers: Vec::new(),
            peer_files: Vec::new(),
        };
        let path = partial.join(layout::FETCH_RECORD);
        manifest::write(&path, &record).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let found = scan(root.path()).unwrap();
        assert_eq!(found.partial, [record]);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn failed_entries_are_bounded_and_aged_out_and_others_stay() {
        let catalog = Catalog::default();
        catalog.put(ModelEntry { state: ModelState::Ready, ..unverified_entry("ready", &[]) });
        for i in 0..10 {
            catalog.put(failed(&format!("bad-{i}")));
        }
        assert_eq!(catalog.prune_failed(4, Duration::from_secs(3600)), 6);
        let kept: Vec<String> = catalog.snapshot().keys().cloned().collect();
        assert_eq!(kept, ["bad-6", "bad-7", "bad-8", "bad-9", "ready"], "the newest failures are kept");
        assert_eq!(catalog.prune_failed(4, Duration::ZERO), 4, "all aged out");
        assert_eq!(catalog.len(), 1);
        // A failed entry that is fetched again is no longer counted as failed.
        catalog.put(failed("again"));
        catalog.put(ModelEntry { state: ModelState::Downloading, ..failed("again") });
        assert_eq!(catalog.prune_failed(0, Duration::ZERO), 0);
    }
}
