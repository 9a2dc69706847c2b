//! The hive's stable id (kept across restarts in the state directory) and the
//! identity it reports in `Discover`.

use std::path::{Path, PathBuf};

use crate::HiveError;

/// Checks an operator-chosen hive id by the one rule
/// ([`rbee_shared::identity::check_hive_id`]): 1..=64 of `[A-Za-z0-9._-]`.
pub fn validate_hive_id(id: &str) -> Result<(), HiveError> {
    rbee_shared::identity::check_hive_id(id).map_err(|e| HiveError::Config(e.0))
}

/// The default state directory: `$XDG_STATE_HOME/rbee/hive`, else
/// `$HOME/.local/state/rbee/hive`, else `./.rbee-hive`.
pub fn default_state_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("rbee/hive");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/state/rbee/hive");
    }
    PathBuf::from(".rbee-hive")
}

fn generated_id() -> String {
    let host = rbee_shared::hostname::normalize_hostname(&rbee_shared::hostname::local_hostname(), 40);
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    if host.is_empty() { format!("hive-{suffix}") } else { format!("{host}-{suffix}") }
}

/// The hive id: `flag` if given; else the one stored in `state_dir/hive_id`; else a new
/// one (`HOSTNAME-xxxxxxxx`), stored there for the next start.
pub fn resolve_hive_id(flag: Option<&str>, state_dir: &Path) -> Result<String, HiveError> {
    if let Some(id) = flag {
        validate_hive_id(id)?;
        return Ok(id.to_owned());
    }
    let file = state_dir.join("hive_id");
    let state_err = |source| HiveError::StateDir { path: file.clone(), source };
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let id = text.trim().to_owned();
            validate_hive_id(&id).map_err(|e| HiveError::Config(format!("{}: {e}", file.display())))?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(state_dir)
                .map_err(|source| HiveError::StateDir { path: state_dir.to_owned(), source })?;
            let id = generated_id();
            let tmp = state_dir.join("hive_id.tmp");
            std::fs::write(&tmp, format!("{id}\n")).map_err(state_err)?;
            std::fs::rename(&tmp, &file).map_err(state_err)?;
            tracing::info!(%id, file = %file.display(), "generated a new hive id");
            Ok(id)
        }
        Err(e) => Err(state_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_id_is_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first = resolve_hive_id(None, dir.path()).unwrap();
        let second = resolve_hive_id(None, dir.path()).unwrap();
        assert_eq!(first, second);
        validate_hive_id(&first).unwrap();
    }

    #[test]
    fn the_flag_wins_and_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve_hive_id(Some("gpu-box-1"), dir.path()).unwrap(), "gpu-box-1");
        assert!(resolve_hive_id(Some("bad id!"), dir.path()).is_err());
        assert!(resolve_hive_id(Some(""), dir.path()).is_err());
    }

    #[test]
    fn a_corrupt_state_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hive_id"), "not valid\n").unwrap();
        let err = resolve_hive_id(None, dir.path()).unwrap_err().to_string();
        assert!(err.contains("hive_id"), "{err}");
    }
}
