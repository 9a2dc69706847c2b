//! Hand-copied models: their files are hashed in the background, and once the files
//! stood still before (for one rescan interval) and while being hashed, a manifest
//! makes them `ready`. A file modified after its manifest makes the model unverified
//! again (see [`changed_since_verified`]). A model that came from a download is never
//! made ready with other content: its manifest is set aside ([`set_aside`]) and
//! verification compares with the sizes and hashes the download verified; other bytes
//! leave it unverified with [`VerifyError::ChangedAfterDownload`]. A directory without a regular file (empty,
//! or holding only symlinks, FIFOs or devices, which are never read) is never ready.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rbee_shared::ModelFile;
use sha2::{Digest, Sha256};

use super::download::hex;
use super::layout;
use super::manifest::{self, Manifest};

/// Why a hand-copied model could not be verified (yet).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file changed while it was hashed (still being copied): try again later.
    #[error("files changed while hashing (still being copied?)")]
    Changing,
    /// The directory holds no regular file: nothing to serve.
    #[error("no regular files in the model directory (symlinks, FIFOs and devices are not model files)")]
    NoFiles,
    /// A downloaded model's files are no longer the ones its download verified: it is
    /// never ready with them (deleted and fetched again, or the files put back).
    #[error("{0}; delete the model and fetch it again (or put the downloaded files back)")]
    ChangedAfterDownload(String),
    /// A file could not be read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn stamp(path: &Path) -> std::io::Result<(u64, SystemTime)> {
    let m = std::fs::metadata(path)?;
    Ok((m.len(), m.modified()?))
}

fn hash_file(path: &Path) -> Result<String, std::io::Error> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The manifest's `source` of a model verified from the files found on disk.
pub const HAND_COPIED: &str = "hand-copied";

/// Sets aside the manifest of a model in `dir` whose files changed on disk, so that it
/// is verified again: a downloaded model's manifest is kept as [`layout::DOWNLOAD_RECORD`]
/// (the first one kept wins: it holds what the download verified), a hand-copied
/// model's is removed. Blocking.
pub fn set_aside(dir: &Path) {
    let path = dir.join(layout::MANIFEST);
    let downloaded = manifest::read::<Manifest>(&path).is_some_and(|m| m.source != HAND_COPIED);
    if downloaded && !dir.join(layout::DOWNLOAD_RECORD).exists() {
        if let Err(e) = std::fs::rename(&path, dir.join(layout::DOWNLOAD_RECORD)) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot set the download's manifest aside");
        }
        return;
    }
    let _ = std::fs::remove_file(path);
}

/// What the download of the model in `dir` verified, if it came from one: the set-aside
/// record, else a manifest not written by [`verify`].
fn downloaded(dir: &Path) -> Option<Manifest> {
    manifest::read::<Manifest>(&dir.join(layout::DOWNLOAD_RECORD)).or_else(|| {
        manifest::read::<Manifest>(&dir.join(layout::MANIFEST)).filter(|m| m.source != HAND_COPIED)
    })
}

/// Why the files `listed` (paths and sizes) are not the ones the download verified.
fn other_files(listed: &layout::FileList, download: &[ModelFile]) -> Option<String> {
    for f in download {
        match listed.iter().find(|(p, _)| *p == f.path) {
            None => {
                return Some(format!("{} was removed after it was downloaded", layout::shown_name(&f.path)));
            }
            Some((_, size)) if *size != f.size_bytes => {
                return Some(format!(
                    "{} changed after it was downloaded: {size} bytes, downloaded as {} bytes",
                    layout::shown_name(&f.path),
                    f.size_bytes
                ));
            }
            Some(_) => {}
        }
    }
    listed
        .iter()
        .find(|(p, _)| !download.iter().any(|f| f.path == *p))
        .map(|(p, _)| format!("{} was added after the model was downloaded", layout::shown_name(p)))
}

/// The files of a model directory with their size, mtime, ctime (ns) and inode: ctime
/// moves on every write or rename, even when the mtime is put back.
pub type Stamps = Vec<(String, u64, SystemTime, i128, u64)>;

/// The stats of every file in `dir` (with the manifest and download record), to tell
/// whether anything changed without reading a byte.
pub fn stamps(dir: &Path) -> std::io::Result<Stamps> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for rel in layout::list_files(dir)?
        .into_iter()
        .map(|(r, _)| r)
        .chain([layout::MANIFEST.to_owned(), layout::DOWNLOAD_RECORD.to_owned()])
    {
        match std::fs::metadata(dir.join(&rel)) {
            Ok(m) => {
                let ctime = i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec());
                out.push((rel, m.len(), m.modified()?, ctime, m.ino()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// True when a file of the model in `dir` was modified after its manifest was written
/// (a hand-copied file still being written when it was verified, or changed since), or
/// when there is no manifest. Stats only.
pub fn changed_since_verified(dir: &Path) -> std::io::Result<bool> {
    let verified_at = match std::fs::metadata(dir.join(layout::MANIFEST)) {
        Ok(m) => m.modified()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    for (rel, _) in layout::list_files(dir)? {
        if stamp(&dir.join(rel))?.1 > verified_at {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Hashes the model in `dir` and writes its manifest, when every file stood still
/// (size and mtime) for `quiet` before hashing and while it was hashed. Blocks: run on
/// a blocking thread.
pub fn verify(id: &str, dir: &Path, quiet: Duration) -> Result<Manifest, VerifyError> {
    let listed = layout::list_files(dir)?;
    if listed.is_empty() {
        return Err(VerifyError::NoFiles);
    }
    let download = downloaded(dir);
    if let Some(why) = download.as_ref().and_then(|d| other_files(&listed, &d.files)) {
        return Err(VerifyError::ChangedAfterDownload(why));
    }
    let mut files = Vec::with_capacity(listed.len());
    for (rel, _) in &listed {
        let path = dir.join(rel);
        let before = stamp(&path)?;
        if SystemTime::now().duration_since(before.1).unwrap_or_default() < quiet {
            return Err(VerifyError::Changing);
        }
        let sha256 = hash_file(&path)?;
        if stamp(&path)? != before {
            return Err(VerifyError::Changing);
        }
        files.push(ModelFile { path: rel.clone(), size_bytes: before.0, sha256: Some(sha256) });
    }
    if layout::list_files(dir)? != listed {
        return Err(VerifyError::Changing);
    }
    let source = match download {
        Some(d) => {
            for f in &files {
                let want = d.files.iter().find(|w| w.path == f.path).and_then(|w| w.sha256.as_deref());
                if let (Some(want), Some(got)) = (want, f.sha256.as_deref())
                    && want != got
                {
                    return Err(VerifyError::ChangedAfterDownload(format!(
                        "{} changed after it was downloaded: sha256 {got}, downloaded as {want}",
                        layout::shown_name(&f.path)
                    )));
                }
            }
            d.source
        }
        None => HAND_COPIED.into(),
    };
    let manifest =
        Manifest { id: id.to_owned(), files, source, ready_at_unix_ms: rbee_shared::time::now_unix_ms() };
    manifest::write(&dir.join(layout::MANIFEST), &manifest)?;
    let _ = std::fs::remove_file(dir.join(layout::DOWNLOAD_RECORD));
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_of_symlinks_only_is_never_verified() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("weights.bin");
        std::fs::write(&target, b"weights").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("model.safetensors")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
        let e = verify("links", dir.path(), Duration::ZERO).unwrap_err();
        assert!(matches!(e, VerifyError::NoFiles), "{e}");
        assert!(e.to_string().contains("no regular files"), "{e}");
        assert!(!dir.path().join(layout::MANIFEST).exists(), "no manifest is written");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(verify("empty", empty.path(), Duration::ZERO), Err(VerifyError::NoFiles)));
    }
}
