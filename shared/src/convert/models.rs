//! Wire <-> domain for models: catalog entries, download progress, disk space and the
//! fetch request's source. Part of [`crate::convert`], the one wire boundary.

use rbee_proto::v1 as pb;

use super::Checked;
use crate::model::{
    MAX_DOWNLOAD_SOURCES, MAX_MODEL_FILES, MAX_MODELS, MAX_URL_BYTES, ORIGIN_SOURCE, SourceBytes,
    check_model_id, check_model_path, check_relative_path, check_sha256, parse_hf, path_from_url,
};
use crate::{
    ConvertError, DiskSpace, DownloadPhase, DownloadProgress, FileSource, ModelEntry, ModelFile, ModelSource,
    ModelState, ReadBandwidth,
};

fn check_long(field: &str, s: &str) -> Checked<String> {
    if s.len() > MAX_URL_BYTES {
        return Err(ConvertError::new(field, format!("{} bytes > {MAX_URL_BYTES}", s.len())));
    }
    Ok(s.to_owned())
}

/// Checks a model id from the wire.
pub fn model_id_from_wire(field: &str, id: &str) -> Checked<String> {
    check_model_id(id).map_err(|e| ConvertError::new(field, e.0))?;
    Ok(id.to_owned())
}

impl From<ModelState> for pb::ModelState {
    fn from(s: ModelState) -> Self {
        match s {
            ModelState::Downloading => Self::Downloading,
            ModelState::Ready => Self::Ready,
            ModelState::Failed => Self::Failed,
            ModelState::Unverified => Self::Unverified,
        }
    }
}

impl From<&ModelEntry> for pb::Model {
    fn from(m: &ModelEntry) -> Self {
        Self {
            id: m.id.clone(),
            state: pb::ModelState::from(m.state) as i32,
            files: m
                .files
                .iter()
                .map(|f| pb::ModelFile {
                    path: f.path.clone(),
                    size_bytes: f.size_bytes,
                    sha256: f.sha256.clone(),
                })
                .collect(),
            size_bytes: m.size_bytes,
            error: m.error.clone(),
            resident_bytes: m.resident_bytes,
            warm: m.warm,
        }
    }
}

/// A wire model state as the domain's; `None` for `UNSPECIFIED` or an unknown value.
/// The CLI names a state by this and [`ModelState::as_str`].
pub fn model_state_from_wire(s: i32) -> Option<ModelState> {
    match pb::ModelState::try_from(s).ok()? {
        pb::ModelState::Downloading => Some(ModelState::Downloading),
        pb::ModelState::Ready => Some(ModelState::Ready),
        pb::ModelState::Failed => Some(ModelState::Failed),
        pb::ModelState::Unverified => Some(ModelState::Unverified),
        pb::ModelState::Unspecified => None,
    }
}

/// A wire download phase as the domain's; `None` for `UNSPECIFIED` or an unknown
/// value. The CLI names a phase by this and [`DownloadPhase::as_str`].
pub fn download_phase_from_wire(p: i32) -> Option<DownloadPhase> {
    match pb::DownloadPhase::try_from(p).ok()? {
        pb::DownloadPhase::Resolving => Some(DownloadPhase::Resolving),
        pb::DownloadPhase::Downloading => Some(DownloadPhase::Downloading),
        pb::DownloadPhase::Verifying => Some(DownloadPhase::Verifying),
        pb::DownloadPhase::Done => Some(DownloadPhase::Done),
        pb::DownloadPhase::Failed => Some(DownloadPhase::Failed),
        pb::DownloadPhase::Cancelled => Some(DownloadPhase::Cancelled),
        pb::DownloadPhase::Preloading => Some(DownloadPhase::Preloading),
        pb::DownloadPhase::Unspecified => None,
    }
}

fn model_from_wire(field: &str, m: &pb::Model) -> Checked<ModelEntry> {
    let Some(state) = model_state_from_wire(m.state) else {
        return Err(ConvertError::new(format!("{field}.state"), format!("unknown value {}", m.state)));
    };
    if m.files.len() > MAX_MODEL_FILES {
        return Err(ConvertError::new(
            format!("{field}.files"),
            format!("{} > {MAX_MODEL_FILES}", m.files.len()),
        ));
    }
    let files = m
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let ff = format!("{field}.files[{i}]");
            check_relative_path(&f.path).map_err(|e| ConvertError::new(format!("{ff}.path"), e.0))?;
            let sha256 = f
                .sha256
                .as_deref()
                .map(check_sha256)
                .transpose()
                .map_err(|e| ConvertError::new(format!("{ff}.sha256"), e.0))?;
            Ok(ModelFile { path: f.path.clone(), size_bytes: f.size_bytes, sha256 })
        })
        .collect::<Checked<_>>()?;
    Ok(ModelEntry {
        id: model_id_from_wire(&format!("{field}.id"), &m.id)?,
        state,
        files,
        size_bytes: m.size_bytes,
        error: m.error.as_deref().map(|e| check_long(&format!("{field}.error"), e)).transpose()?,
        // More resident than the size (a file grew under a stale entry): clamped.
        resident_bytes: m.resident_bytes.map(|r| r.min(m.size_bytes)),
        warm: m.warm,
    })
}

/// Models from the wire; ids unique. One bad entry (an invalid field, a repeated id)
/// is dropped with a warning, not the whole message: one catalog entry must not take
/// a whole hive down. Only a list over [`MAX_MODELS`] is an error.
pub fn models_from_wire(field: &str, models: &[pb::Model]) -> Checked<Vec<ModelEntry>> {
    if models.len() > MAX_MODELS {
        return Err(ConvertError::new(field, format!("{} models > {MAX_MODELS}", models.len())));
    }
    let mut seen = std::collections::BTreeSet::new();
    Ok(models
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let model = model_from_wire(&format!("{field}[{i}]"), m)
                .and_then(|model| match seen.insert(model.id.clone()) {
                    true => Ok(model),
                    false => Err(ConvertError::new(field, format!("duplicate model id {}", model.id))),
                })
                .inspect_err(|e| tracing::warn!(error = %e, "model entry dropped"))
                .ok()?;
            Some(model)
        })
        .collect())
}

/// Removed model ids from the wire (an invalid one is dropped with a warning: no
/// valid entry can have it).
pub fn model_ids_from_wire(field: &str, ids: &[String]) -> Checked<Vec<String>> {
    if ids.len() > MAX_MODELS {
        return Err(ConvertError::new(field, format!("{} ids > {MAX_MODELS}", ids.len())));
    }
    Ok(ids
        .iter()
        .filter_map(|id| {
            model_id_from_wire(field, id).inspect_err(|e| tracing::warn!(error = %e, "model id dropped")).ok()
        })
        .collect())
}

impl From<DownloadPhase> for pb::DownloadPhase {
    fn from(p: DownloadPhase) -> Self {
        match p {
            DownloadPhase::Resolving => Self::Resolving,
            DownloadPhase::Downloading => Self::Downloading,
            DownloadPhase::Verifying => Self::Verifying,
            DownloadPhase::Done => Self::Done,
            DownloadPhase::Failed => Self::Failed,
            DownloadPhase::Cancelled => Self::Cancelled,
            DownloadPhase::Preloading => Self::Preloading,
        }
    }
}

impl From<&DownloadProgress> for pb::DownloadProgress {
    fn from(d: &DownloadProgress) -> Self {
        Self {
            model_id: d.model_id.clone(),
            phase: pb::DownloadPhase::from(d.phase) as i32,
            bytes_done: d.bytes_done,
            bytes_total: d.bytes_total,
            speed_bytes_per_s: d.speed_bytes_per_s,
            eta_ms: d.eta_ms,
            error: d.error.clone(),
            attempt: d.attempt,
            updated_at_unix_ms: d.updated_at_unix_ms,
            sources: d
                .sources
                .iter()
                .map(|s| pb::SourceBytes { source: s.source.clone(), bytes: s.bytes })
                .collect(),
        }
    }
}

fn sources_from_wire(field: &str, sources: &[pb::SourceBytes]) -> Checked<Vec<SourceBytes>> {
    if sources.len() > MAX_DOWNLOAD_SOURCES {
        return Err(ConvertError::new(field, format!("{} sources > {MAX_DOWNLOAD_SOURCES}", sources.len())));
    }
    sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if s.source != ORIGIN_SOURCE {
                crate::identity::check_hive_id(&s.source)
                    .map_err(|e| ConvertError::new(format!("{field}[{i}].source"), e.to_string()))?;
            }
            Ok(SourceBytes { source: s.source.clone(), bytes: s.bytes })
        })
        .collect()
}

fn download_from_wire(field: &str, d: &pb::DownloadProgress) -> Checked<DownloadProgress> {
    let Some(phase) = download_phase_from_wire(d.phase) else {
        return Err(ConvertError::new(format!("{field}.phase"), format!("unknown value {}", d.phase)));
    };
    if !d.speed_bytes_per_s.is_finite() || d.speed_bytes_per_s < 0.0 {
        return Err(ConvertError::new(format!("{field}.speed_bytes_per_s"), "must be finite and >= 0"));
    }
    Ok(DownloadProgress {
        model_id: model_id_from_wire(&format!("{field}.model_id"), &d.model_id)?,
        phase,
        bytes_done: d.bytes_done,
        bytes_total: d.bytes_total,
        speed_bytes_per_s: d.speed_bytes_per_s,
        eta_ms: d.eta_ms,
        error: d.error.as_deref().map(|e| check_long(&format!("{field}.error"), e)).transpose()?,
        attempt: d.attempt,
        updated_at_unix_ms: d.updated_at_unix_ms,
        sources: sources_from_wire(&format!("{field}.sources"), &d.sources)?,
    })
}

/// Download records from the wire (a bad record is dropped with a warning, not the
/// whole sample).
pub fn downloads_from_wire(
    field: &str,
    downloads: &[pb::DownloadProgress],
) -> Checked<Vec<DownloadProgress>> {
    if downloads.len() > MAX_MODELS {
        return Err(ConvertError::new(field, format!("{} records > {MAX_MODELS}", downloads.len())));
    }
    Ok(downloads
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            download_from_wire(&format!("{field}[{i}]"), d)
                .inspect_err(|e| tracing::warn!(error = %e, "download record dropped"))
                .ok()
        })
        .collect())
}

impl From<&DiskSpace> for pb::DiskSpace {
    fn from(d: &DiskSpace) -> Self {
        Self { path: d.path.clone(), total_bytes: d.total_bytes, free_bytes: d.free_bytes }
    }
}

/// Disk space from the wire.
pub fn disk_from_wire(field: &str, d: &pb::DiskSpace) -> Checked<DiskSpace> {
    if d.free_bytes > d.total_bytes {
        return Err(ConvertError::new(
            format!("{field}.free_bytes"),
            format!("{} > total_bytes {}", d.free_bytes, d.total_bytes),
        ));
    }
    Ok(DiskSpace {
        path: check_long(&format!("{field}.path"), &d.path)?,
        total_bytes: d.total_bytes,
        free_bytes: d.free_bytes,
    })
}

/// The source of a `FetchModelRequest`, validated.
pub fn source_from_wire(source: Option<&pb::fetch_model_request::Source>) -> Checked<ModelSource> {
    use pb::fetch_model_request::Source;
    match source {
        None => Err(ConvertError::new("source", "is required: urls or hf")),
        Some(Source::Hf(uri)) => parse_hf(uri).map_err(|e| ConvertError::new("source.hf", e.0)),
        Some(Source::Urls(urls)) => {
            if urls.files.is_empty() || urls.files.len() > MAX_MODEL_FILES {
                return Err(ConvertError::new(
                    "source.urls.files",
                    format!("must hold 1..={MAX_MODEL_FILES} files"),
                ));
            }
            let mut paths = std::collections::BTreeSet::new();
            let files = urls
                .files
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let field = format!("source.urls.files[{i}]");
                    let url = check_long(&format!("{field}.url"), &f.url)?;
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(ConvertError::new(
                            format!("{field}.url"),
                            "must start with http:// or https://",
                        ));
                    }
                    let path = match &f.path {
                        Some(p) => {
                            check_model_path(p)
                                .map_err(|e| ConvertError::new(format!("{field}.path"), e.0))?;
                            p.clone()
                        }
                        None => path_from_url(&url).ok_or_else(|| {
                            ConvertError::new(format!("{field}.path"), "is required: the URL names no file")
                        })?,
                    };
                    if !paths.insert(path.clone()) {
                        return Err(ConvertError::new(
                            format!("{field}.path"),
                            format!("{path:?} appears twice"),
                        ));
                    }
                    let sha256 = f
                        .sha256
                        .as_deref()
                        .map(check_sha256)
                        .transpose()
                        .map_err(|e| ConvertError::new(format!("{field}.sha256"), e.0))?;
                    Ok(FileSource { url, path, size_bytes: f.size_bytes, sha256 })
                })
                .collect::<Checked<Vec<FileSource>>>()?;
            if files.iter().filter_map(|f| f.size_bytes).try_fold(0u64, u64::checked_add).is_none() {
                return Err(ConvertError::new(
                    "source.urls.files",
                    "the declared sizes add up past 2^64 bytes",
                ));
            }
            Ok(ModelSource::Urls(files))
        }
    }
}

/// The wire form of a source (for clients such as the queen's CLI).
pub fn source_to_wire(source: &ModelSource) -> pb::fetch_model_request::Source {
    use pb::fetch_model_request::Source;
    match source {
        ModelSource::HuggingFace { repo, revision } => Source::Hf(format!("hf://{repo}@{revision}")),
        ModelSource::Urls(files) => Source::Urls(pb::UrlSource {
            files: files
                .iter()
                .map(|f| pb::FileSource {
                    url: f.url.clone(),
                    path: Some(f.path.clone()),
                    size_bytes: f.size_bytes,
                    sha256: f.sha256.clone(),
                })
                .collect(),
        }),
    }
}

impl From<&ReadBandwidth> for pb::ReadBandwidth {
    fn from(b: &ReadBandwidth) -> Self {
        Self { disk_bytes_per_s: b.disk_bytes_per_s, ram_bytes_per_s: b.ram_bytes_per_s }
    }
}

/// Read bandwidth from the wire: each speed finite and above 0 when set.
pub fn read_bandwidth_from_wire(field: &str, b: &pb::ReadBandwidth) -> Checked<ReadBandwidth> {
    let check = |name: &str, v: Option<f64>| match v {
        Some(x) if !x.is_finite() || x <= 0.0 => {
            Err(ConvertError::new(format!("{field}.{name}"), format!("{x} is not a speed (finite, > 0)")))
        }
        v => Ok(v),
    };
    Ok(ReadBandwidth {
        disk_bytes_per_s: check("disk_bytes_per_s", b.disk_bytes_per_s)?,
        ram_bytes_per_s: check("ram_bytes_per_s", b.ram_bytes_per_s)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, size: u64, resident: Option<u64>, path: &str) -> pb::Model {
        pb::Model {
            id: id.into(),
            state: pb::ModelState::Ready as i32,
            files: vec![pb::ModelFile { path: path.into(), size_bytes: size, sha256: None }],
            size_bytes: size,
            error: None,
            resident_bytes: resident,
            warm: false,
        }
    }

    #[test]
    fn one_bad_entry_does_not_reject_the_catalog() {
        let models = [
            model("good", 10, Some(5), "w.bin"),
            model("grown", 10, Some(20), "w.bin"),
            model("bad-path", 10, None, "../etc/passwd"),
            model(".partial", 10, None, "w.bin"),
            model("good", 10, None, "other.bin"),
        ];
        let out = models_from_wire("models", &models).unwrap();
        let ids: Vec<_> = out.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["good", "grown"], "bad entries and the repeated id dropped");
        assert_eq!(out[1].resident_bytes, Some(10), "resident clamped to the size");
        assert_eq!(model_ids_from_wire("removed", &["a".into(), "../x".into()]).unwrap(), ["a"]);
    }
}
