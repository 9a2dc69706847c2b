//! Whether a FetchModel's declared content agrees with the model the hive has: a ready
//! model's manifest, or the files a running download was asked for. A caller that
//! names a sha256 (or size) gets its content or a clear error, never `already_ready`
//! for other bytes.

use rbee_shared::{FileSource, ModelFile, ModelSource};

/// The first way `source` disagrees with `have` (the ready model's files, or the running
/// download's declared files), as text; `None` when every declared sha256 and size
/// matches. A file the caller declares nothing about agrees. `hf://` sources name no
/// hashes before they are resolved, so they agree.
pub fn disagreement(source: &ModelSource, have: &[ModelFile]) -> Option<String> {
    let ModelSource::Urls(files) = source else { return None };
    files.iter().find_map(|want| file_disagreement(want, have))
}

fn file_disagreement(want: &FileSource, have: &[ModelFile]) -> Option<String> {
    if want.sha256.is_none() && want.size_bytes.is_none() {
        return None;
    }
    let Some(got) = have.iter().find(|f| f.path == want.path) else {
        return Some(format!("it has no file {}", want.path));
    };
    if let Some(sha) = &want.sha256
        && got.sha256.as_ref() != Some(sha)
    {
        let got = got.sha256.as_deref().unwrap_or("not declared");
        return Some(format!("{}: sha256 {got}, not {sha}", want.path));
    }
    match want.size_bytes {
        Some(size) if got.size_bytes != size && got.size_bytes != 0 => {
            Some(format!("{}: {} bytes, not {size}", want.path, got.size_bytes))
        }
        _ => None,
    }
}

/// The files a download of `source` was declared with (none for `hf://` until resolved).
pub fn declared_files(files: &[FileSource]) -> Vec<ModelFile> {
    files
        .iter()
        .map(|f| ModelFile {
            path: f.path.clone(),
            size_bytes: f.size_bytes.unwrap_or(0),
            sha256: f.sha256.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(sha: Option<&str>, size: Option<u64>) -> ModelSource {
        ModelSource::Urls(vec![FileSource {
            url: "http://h/w.bin".into(),
            path: "w.bin".into(),
            size_bytes: size,
            sha256: sha.map(str::to_owned),
        }])
    }

    #[test]
    fn declared_hashes_and_sizes_must_match() {
        let have = [ModelFile { path: "w.bin".into(), size_bytes: 10, sha256: Some("aa".into()) }];
        assert_eq!(disagreement(&source(None, None), &have), None);
        assert_eq!(disagreement(&source(Some("aa"), Some(10)), &have), None);
        assert!(disagreement(&source(Some("bb"), None), &have).unwrap().contains("sha256 aa, not bb"));
        assert!(disagreement(&source(None, Some(11)), &have).unwrap().contains("10 bytes"));
        assert!(disagreement(&source(Some("aa"), None), &[]).unwrap().contains("no file w.bin"));
    }
}
