//! Free and total space of the filesystem that holds the models directory.

use std::path::Path;

use rbee_shared::DiskSpace;

/// Reads the space of the filesystem holding `dir` (`statvfs`). Free space is what an
/// unprivileged writer may use (`f_bavail`).
pub fn space(dir: &Path) -> std::io::Result<DiskSpace> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    let unit = st.f_frsize.max(1);
    Ok(DiskSpace {
        path: dir.display().to_string(),
        total_bytes: st.f_blocks.saturating_mul(unit),
        free_bytes: st.f_bavail.saturating_mul(unit),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let s = super::space(dir.path()).unwrap();
        assert!(s.total_bytes > 0 && s.free_bytes <= s.total_bytes, "{s:?}");
    }
}
