//! Hand-copied models: their files are hashed in the background, and once the files
//! stood still before (for one rescan interval) and while being hashed, a manifest
//! makes them `ready`. A file modified after its manifest makes the model unverified
//! again (see [`changed_since_verified`]). A directory without a regular file (empty,
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
    let manifest = Manifest {
        id: id.to_owned(),
        files,
        source: "hand-copied".into(),
        ready_at_unix_ms: rbee_shared::time::now_unix_ms(),
    };
    manifest::write(&dir.join(layout::MANIFEST), &manifest)?;
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
