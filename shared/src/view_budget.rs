//! Budgets on one hive's view, so that the fleet view stays readable by a default
//! gRPC client (4 MiB a message) however many hives, models or downloads there are,
//! and whatever a hostile hive sends. Both ends apply them: the hive to what it sends,
//! the queen to what it accepts (it never trusts the hive to have done so).
//!
//! What is cut is said, one line per cut, in [`crate::Sample::cuts`]; the queen turns
//! those lines into a Degraded reason. The figures are stated in docs/protocol.md,
//! "Budgets".

use std::collections::BTreeMap;

use crate::{DownloadProgress, ModelEntry, ModelState, Sample};

/// Most catalog entries one hive publishes.
pub const MAX_CATALOG_ENTRIES: usize = 1024;
/// Most failed catalog entries one hive publishes (the hive also ages them out).
pub const MAX_FAILED_ENTRIES: usize = 32;
/// Most bytes (as encoded on the wire, about) of one hive's published catalog.
pub const MAX_CATALOG_BYTES: usize = 1024 * 1024;
/// Most records per list in one sample (downloads, and preloads).
pub const MAX_RECORDS: usize = 64;
/// Most GPU processes listed in one sample, over all its GPUs (the rest are counted
/// as unlisted, with their VRAM): the hive's default of 32 per GPU, for 32 GPUs.
pub const MAX_PROCESSES: usize = 1024;
/// Longest error text kept in a record or a catalog entry.
pub const MAX_ERROR_BYTES: usize = 256;
/// Most cut lines one sample carries, and the longest one.
pub const MAX_CUTS: usize = 8;
/// Longest cut line.
pub const MAX_CUT_BYTES: usize = 256;
/// Most bytes of a hive's Discover answer.
pub const MAX_DISCOVER_BYTES: usize = 2 * 1024 * 1024;
/// Most bytes of one message of a fleet-wide answer (a ListHives page, one WatchFleet
/// event): under the 4 MiB default every gRPC client accepts, with room to spare.
pub const MAX_ANSWER_BYTES: usize = 3 * 1024 * 1024;

/// About the bytes an entry takes on the wire (never less).
pub fn entry_bytes(e: &ModelEntry) -> usize {
    let files: usize =
        e.files.iter().map(|f| f.path.len() + f.sha256.as_ref().map_or(0, |s| s.len() + 2) + 20).sum();
    e.id.len() + e.error.as_ref().map_or(0, |s| s.len() + 3) + 40 + files
}

/// `s` cut to at most `max` bytes on a character boundary, control characters replaced.
pub fn bounded(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Cuts a catalog to its budgets and returns what was cut. In order: failed entries
/// beyond [`MAX_FAILED_ENTRIES`], entries beyond [`MAX_CATALOG_ENTRIES`] (ready ones
/// are kept first), then while over [`MAX_CATALOG_BYTES`] the file lists of the
/// largest entries (their sizes stay), then whole entries (not ready first).
pub fn cut_catalog(models: &mut BTreeMap<String, ModelEntry>) -> Vec<String> {
    let mut cuts = Vec::new();
    for e in models.values_mut() {
        if let Some(error) = e.error.as_mut().filter(|s| s.len() > MAX_ERROR_BYTES) {
            *error = bounded(error, MAX_ERROR_BYTES);
        }
    }
    let failed: Vec<String> =
        models.values().filter(|e| e.state == ModelState::Failed).map(|e| e.id.clone()).collect();
    if failed.len() > MAX_FAILED_ENTRIES {
        for id in &failed[MAX_FAILED_ENTRIES..] {
            models.remove(id);
        }
        cuts.push(format!("catalog: kept {MAX_FAILED_ENTRIES} of {} failed entries", failed.len()));
    }
    let total = models.len();
    if total > MAX_CATALOG_ENTRIES {
        drop_entries(models, |m| m.len() <= MAX_CATALOG_ENTRIES);
        cuts.push(format!("catalog: kept {} of {total} entries", models.len()));
    }
    let mut bytes: usize = models.values().map(entry_bytes).sum();
    if bytes > MAX_CATALOG_BYTES {
        let mut by_files: Vec<(usize, String)> =
            models.values().filter(|e| !e.files.is_empty()).map(|e| (e.files.len(), e.id.clone())).collect();
        by_files.sort_by(|a, b| b.cmp(a));
        let mut stripped = 0;
        for (_, id) in by_files {
            if bytes <= MAX_CATALOG_BYTES {
                break;
            }
            if let Some(e) = models.get_mut(&id) {
                let before = entry_bytes(e);
                e.files = Vec::new();
                bytes -= before - entry_bytes(e);
                stripped += 1;
            }
        }
        cuts.push(format!(
            "catalog: file lists of {stripped} models left out (over {MAX_CATALOG_BYTES} bytes)"
        ));
    }
    if bytes > MAX_CATALOG_BYTES {
        let before = models.len();
        drop_entries(models, |m| m.values().map(entry_bytes).sum::<usize>() <= MAX_CATALOG_BYTES);
        cuts.push(format!(
            "catalog: kept {} of {before} entries (over {MAX_CATALOG_BYTES} bytes)",
            models.len()
        ));
    }
    cuts
}

/// Removes entries, not-ready ones first and then from the end of the id order, until
/// `fits` says the catalog fits.
fn drop_entries(
    models: &mut BTreeMap<String, ModelEntry>,
    fits: impl Fn(&BTreeMap<String, ModelEntry>) -> bool,
) {
    let mut order: Vec<String> =
        models.values().filter(|e| e.state != ModelState::Ready).map(|e| e.id.clone()).rev().collect();
    order.extend(models.values().filter(|e| e.state == ModelState::Ready).map(|e| e.id.clone()).rev());
    for id in order {
        if fits(models) {
            return;
        }
        models.remove(&id);
    }
}

/// Cuts a list of download (or preload) records to [`MAX_RECORDS`]: running ones are
/// kept first, then the most recently updated; the kept ones stay in model id order.
/// Error texts are bounded. Returns the cut line, if any.
pub fn cut_records(records: &mut Vec<DownloadProgress>, what: &str) -> Option<String> {
    for r in records.iter_mut() {
        if let Some(error) = r.error.as_mut().filter(|s| s.len() > MAX_ERROR_BYTES) {
            *error = bounded(error, MAX_ERROR_BYTES);
        }
    }
    let total = records.len();
    if total <= MAX_RECORDS {
        return None;
    }
    records.sort_by(|a, b| {
        (a.phase.is_final(), std::cmp::Reverse(a.updated_at_unix_ms))
            .cmp(&(b.phase.is_final(), std::cmp::Reverse(b.updated_at_unix_ms)))
    });
    records.truncate(MAX_RECORDS);
    records.sort_by(|a, b| a.model_id.cmp(&b.model_id));
    Some(format!("{what}: kept {MAX_RECORDS} of {total} records"))
}

/// Keeps at most `MAX_CUTS - own` of a sender's cut lines, so that `own` lines of the
/// receiver's fit after them.
pub fn room_for_own_cuts(cuts: &mut Vec<String>, own: usize) {
    cuts.truncate(MAX_CUTS.saturating_sub(own));
}

/// Cut lines from the wire: at most [`MAX_CUTS`], each at most [`MAX_CUT_BYTES`], one line.
pub fn cuts_from_wire(cuts: &[String]) -> Vec<String> {
    cuts.iter().take(MAX_CUTS).map(|c| bounded(c, MAX_CUT_BYTES)).collect()
}

/// Adds a cut line, keeping at most [`MAX_CUTS`] (the newest line replaces the last).
/// A receiver that adds its own lines to a sender's first makes room with
/// [`room_for_own_cuts`], so a sender's lines cannot push them out.
pub fn push_cut(cuts: &mut Vec<String>, cut: String) {
    if cuts.len() >= MAX_CUTS {
        cuts.truncate(MAX_CUTS - 1);
    }
    cuts.push(bounded(&cut, MAX_CUT_BYTES));
}

/// Cuts the GPU process lists of a sample to [`MAX_PROCESSES`] in all (an equal share
/// per GPU, the ones using the most VRAM kept): the processes left out are counted as
/// unlisted, their VRAM with them, so the accounting stays whole.
pub fn cut_processes(sample: &mut Sample) -> Option<String> {
    let total: usize = sample.gpus.iter().filter_map(|g| g.processes.as_ref()).map(|p| p.listed.len()).sum();
    if total <= MAX_PROCESSES {
        return None;
    }
    let share = (MAX_PROCESSES / sample.gpus.len().max(1)).max(1);
    for p in sample.gpus.iter_mut().filter_map(|g| g.processes.as_mut()) {
        if p.listed.len() > share {
            let tail = p.listed.split_off(share);
            let vram = tail.iter().filter_map(|x| x.used_vram_bytes).fold(0u64, u64::saturating_add);
            p.unlisted = p.unlisted.saturating_add(u32::try_from(tail.len()).unwrap_or(u32::MAX));
            p.unlisted_vram_bytes = p.unlisted_vram_bytes.saturating_add(vram);
        }
    }
    let kept: usize = sample.gpus.iter().filter_map(|g| g.processes.as_ref()).map(|p| p.listed.len()).sum();
    Some(format!("gpu processes: listed {kept} of {total}"))
}

/// The most cut lines [`cut_sample`] adds.
pub const SAMPLE_CUT_LINES: usize = 3;

/// Cuts a sample's record and process lists to their budgets, adding a line for each cut.
pub fn cut_sample(sample: &mut Sample) {
    let cuts = [
        cut_records(&mut sample.downloads, "downloads"),
        cut_records(&mut sample.preloads, "preloads"),
        cut_processes(sample),
    ];
    for cut in cuts.into_iter().flatten() {
        push_cut(&mut sample.cuts, cut);
    }
    if sample.cuts.len() > MAX_CUTS {
        sample.cuts.truncate(MAX_CUTS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DownloadPhase, ModelFile};

    fn entry(id: &str, state: ModelState, files: usize) -> ModelEntry {
        ModelEntry {
            id: id.into(),
            state,
            files: (0..files)
                .map(|i| ModelFile {
                    path: format!("file-{i:05}.bin"),
                    size_bytes: 1,
                    sha256: Some("a".repeat(64)),
                })
                .collect(),
            size_bytes: files as u64,
            error: (state == ModelState::Failed).then(|| "x".repeat(2000)),
            resident_bytes: None,
            warm: false,
        }
    }

    #[test]
    fn a_flood_of_failed_entries_is_cut_and_ready_models_stay() {
        let mut models = BTreeMap::new();
        for i in 0..3000 {
            let e = entry(&format!("bad-{i:04}"), ModelState::Failed, 0);
            models.insert(e.id.clone(), e);
        }
        let ready = entry("good", ModelState::Ready, 3);
        models.insert(ready.id.clone(), ready);
        let cuts = cut_catalog(&mut models);
        assert_eq!(cuts, ["catalog: kept 32 of 3000 failed entries"]);
        assert_eq!(models.len(), 33);
        assert!(models.contains_key("good"));
        assert!(models.values().all(|e| e.error.as_ref().is_none_or(|s| s.len() <= MAX_ERROR_BYTES)));
    }

    #[test]
    fn a_catalog_over_its_bytes_loses_file_lists_first_then_entries() {
        let mut models = BTreeMap::new();
        // 16,000 files in one model: ~1.7 MB of file list.
        let big = entry("huge/repo", ModelState::Ready, 16_000);
        models.insert(big.id.clone(), big);
        models.insert("small".into(), entry("small", ModelState::Ready, 2));
        let cuts = cut_catalog(&mut models);
        assert!(cuts[0].contains("file lists of 1 models"), "{cuts:?}");
        assert!(models["huge/repo"].files.is_empty());
        assert_eq!(models["huge/repo"].size_bytes, 16_000, "its size stays");
        assert_eq!(models["small"].files.len(), 2);
        assert!(models.values().map(entry_bytes).sum::<usize>() <= MAX_CATALOG_BYTES);

        let mut many = BTreeMap::new();
        for i in 0..5000 {
            let e = entry(
                &format!("m-{i:04}"),
                if i % 2 == 0 { ModelState::Ready } else { ModelState::Downloading },
                0,
            );
            many.insert(e.id.clone(), e);
        }
        let cuts = cut_catalog(&mut many);
        assert_eq!(cuts, ["catalog: kept 1024 of 5000 entries"]);
        assert!(many.values().all(|e| e.state == ModelState::Ready), "ready entries are kept first");
    }

    #[test]
    fn process_lists_are_cut_and_the_vram_they_use_stays_counted() {
        use crate::{GpuProcess, GpuProcesses, GpuSample};
        let proc = |pid: u32| GpuProcess {
            pid,
            used_vram_bytes: Some(10),
            name: Some("n".repeat(200)),
            ..GpuProcess::default()
        };
        let gpu = |id: &str| GpuSample {
            id: id.into(),
            processes: Some(GpuProcesses {
                listed: (0..2048).map(proc).collect(),
                unlisted: 1,
                unlisted_vram_bytes: 5,
            }),
            ..GpuSample::default()
        };
        let mut sample = Sample { gpus: vec![gpu("a"), gpu("b")], ..Sample::default() };
        cut_sample(&mut sample);
        assert_eq!(sample.cuts, ["gpu processes: listed 1024 of 4096"]);
        for g in &sample.gpus {
            let p = g.processes.as_ref().unwrap();
            assert_eq!((p.listed.len(), p.unlisted), (512, 1 + 1536));
            assert_eq!(p.listed_vram_bytes() + p.unlisted_vram_bytes, 2048 * 10 + 5, "no VRAM disappears");
        }
    }

    #[test]
    fn records_keep_the_running_ones_and_say_what_was_cut() {
        let record = |i: u64, phase| DownloadProgress {
            model_id: format!("m-{i:05}"),
            phase,
            bytes_done: 0,
            bytes_total: None,
            speed_bytes_per_s: 0.0,
            eta_ms: None,
            error: Some("e".repeat(800)),
            attempt: 1,
            updated_at_unix_ms: i,
            sources: Vec::new(),
        };
        let mut sample = Sample {
            downloads: (0..4096).map(|i| record(i, DownloadPhase::Failed)).collect(),
            ..Sample::default()
        };
        sample.downloads.push(record(0, DownloadPhase::Downloading));
        sample.downloads[1].model_id = "running".into();
        sample.downloads[1].phase = DownloadPhase::Downloading;
        sample.cuts = (0..20).map(|i| format!("hive cut {i}")).collect();
        sample.cuts = cuts_from_wire(&sample.cuts);
        cut_sample(&mut sample);
        assert_eq!(sample.downloads.len(), MAX_RECORDS);
        assert!(sample.downloads.iter().any(|r| r.model_id == "running"));
        assert!(sample.downloads.iter().all(|r| r.error.as_ref().unwrap().len() == MAX_ERROR_BYTES));
        assert_eq!(sample.cuts.len(), MAX_CUTS);
        assert_eq!(sample.cuts.last().unwrap(), "downloads: kept 64 of 4097 records");
    }
}
