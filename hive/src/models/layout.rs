//! Where a model's files live under the models directory, and atomic small-file writes.
//!
//! ```text
//! DIR/<id with / as -->/            a model: its files and .rbee-model.json
//!                                   (.rbee-downloaded.json once a downloaded file changed)
//! DIR/.partial/<id with / as -->/   a download in progress: fetch.json, <path>.part,
//!                                   <path>.part.json (the resume sidecar)
//! DIR/.trash/                       models being deleted
//! ```
//! A model directory appears by one rename of its finished partial directory, so a
//! model is never visible with a partial file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The manifest inside a model's directory.
pub const MANIFEST: &str = ".rbee-model.json";
/// A downloaded model's manifest set aside when its files changed on disk: the sizes
/// and hashes its download verified, which the model must have again to be ready.
pub const DOWNLOAD_RECORD: &str = ".rbee-downloaded.json";
/// The fetch record inside a partial directory.
pub const FETCH_RECORD: &str = "fetch.json";
/// Partial downloads.
pub const PARTIAL: &str = ".partial";
/// Models being deleted.
pub const TRASH: &str = ".trash";

/// The directory name of a model id (`org/repo` -> `org--repo`).
pub fn dir_name(id: &str) -> String {
    id.replace('/', "--")
}

/// The model id of a directory name, if it is a valid id.
pub fn id_of_dir(name: &str) -> Option<String> {
    let id = name.replace("--", "/");
    rbee_shared::model::check_model_id(&id).ok().map(|()| id)
}

/// A model's ready directory.
pub fn model_dir(root: &Path, id: &str) -> PathBuf {
    root.join(dir_name(id))
}

/// A model's partial directory.
pub fn partial_dir(root: &Path, id: &str) -> PathBuf {
    root.join(PARTIAL).join(dir_name(id))
}

/// A file's partial data.
pub fn part_file(partial: &Path, path: &str) -> PathBuf {
    partial.join(format!("{path}.part"))
}

/// A file's resume sidecar.
pub fn part_sidecar(partial: &Path, path: &str) -> PathBuf {
    partial.join(format!("{path}.part.json"))
}

/// Files of a model directory: relative path and size, sorted.
pub type FileList = Vec<(String, u64)>;

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the
/// directory. A crash leaves the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, bytes, 0o666)
}

/// [`write_atomic`] for a file only the hive's user may read (mode 0600): records that
/// hold a download's whole URL, credentials included.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    // A leftover temporary file keeps its mode on open: start from a new one.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Makes a directory's entries (a rename, a new file) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Removes a directory tree; a missing one is not an error.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Every regular file under `dir` (recursively), as relative `/`-separated paths,
/// without the manifest and hidden names, sorted.
pub fn list_files(dir: &Path) -> std::io::Result<FileList> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((at, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&at)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push((entry.path(), rel));
            } else if meta.is_file() {
                out.push((rel, meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Most bytes of a server's or a caller's name quoted in an error.
const SHOWN_NAME_BYTES: usize = 128;

/// A name as an error quotes it: debug-quoted, cut to [`SHOWN_NAME_BYTES`] (a Hub
/// listing's names are the server's text, checked or not).
pub fn shown_name(name: &str) -> String {
    if name.len() <= SHOWN_NAME_BYTES {
        return format!("{name:?}");
    }
    let mut end = SHOWN_NAME_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &name[..end], name.len())
}

/// Checks that a model's file paths can all be written: none appears twice, and no
/// file is also the directory of another (`x` next to `x/y`). The error names the
/// entry. Hub listings and URL lists both go through it before anything is fetched.
pub fn check_file_set<'a>(paths: impl Iterator<Item = &'a str> + Clone) -> Result<(), FileSetError> {
    let mut seen = std::collections::BTreeSet::new();
    for path in paths.clone() {
        if !seen.insert(path) {
            return Err(FileSetError::Twice(shown_name(path)));
        }
    }
    for path in paths {
        let mut dir = path;
        while let Some((parent, _)) = dir.rsplit_once('/') {
            if seen.contains(parent) {
                return Err(FileSetError::FileIsDirectory { file: shown_name(parent), of: shown_name(path) });
            }
            dir = parent;
        }
    }
    Ok(())
}

/// Why a model's file paths cannot all be written (names quoted and cut, as shown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileSetError {
    /// The same path twice.
    #[error("file {0} appears twice")]
    Twice(String),
    /// A file that another file's path runs through as a directory.
    #[error("file {file} is also the directory of file {of}")]
    FileIsDirectory {
        /// The file.
        file: String,
        /// The file under it.
        of: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_to_directory_names_and_back() {
        assert_eq!(dir_name("org/repo"), "org--repo");
        assert_eq!(id_of_dir("org--repo").as_deref(), Some("org/repo"));
        assert_eq!(id_of_dir("llama-3.1-8b").as_deref(), Some("llama-3.1-8b"));
        assert_eq!(id_of_dir("bad name"), None);
    }

    #[test]
    fn atomic_writes_replace_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }
}
