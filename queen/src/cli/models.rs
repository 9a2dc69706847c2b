//! `queen fetch`, `queen models`, `queen downloads`: models on the fleet's hives.
//!
//! `fetch` asks the queen (Scheduler.FetchModel) to have a hive download a model, then
//! follows the download on the fleet stream (WatchFleet samples) with a progress bar
//! (bytes, percentage and ETA once the hive knows the total), and ends with the
//! download's outcome: exit 0 when ready, an error when it failed. Ctrl-C (or SIGTERM)
//! exits 130, cancelling the download first with `--cancel-on-interrupt` (or when the
//! operator says so on a terminal): see [`super::fetch_interrupt`].

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rbee_proto::v1 as pb;
use rbee_shared::bytesize::format_bytes;

use super::args::{FetchArgs, ListArgs};
use super::client::{connect, on_queens, rpc_error, scheduler};
use super::fetch_interrupt::{interrupted, on_interrupt};
use super::fleet::all_hives;

/// How often the followed hive's samples come while fetching.
const FOLLOW_INTERVAL_MS: u32 = 250;

/// The fetch request `args` describe.
pub fn fetch_request(args: &FetchArgs) -> pb::ScheduleFetchRequest {
    use pb::fetch_model_request::Source;
    let source = if args.from.starts_with("hf://") {
        Source::Hf(args.from.clone())
    } else {
        Source::Urls(pb::UrlSource {
            files: vec![pb::FileSource {
                url: args.from.clone(),
                path: None,
                size_bytes: args.size,
                sha256: args.sha256.clone(),
            }],
        })
    };
    pb::ScheduleFetchRequest {
        fetch: Some(pb::FetchModelRequest { model_id: args.model.clone(), source: Some(source) }),
        hive: args.hive.clone().unwrap_or_default(),
        labels: args.labels.iter().cloned().collect(),
    }
}

fn bar(quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        None,
        if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() },
    );
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The share done, rounded down (100% only when all is there), e.g. "42%", when the
/// total is known.
fn percent(d: &pb::DownloadProgress) -> Option<String> {
    let total = d.bytes_total.filter(|t| *t > 0)?;
    Some(format!("{}%", u128::from(d.bytes_done.min(total)) * 100 / u128::from(total)))
}

/// Speed and ETA as the hive measured them.
fn speed_eta(d: &pb::DownloadProgress) -> String {
    let speed = format!("{}/s", format_bytes(d.speed_bytes_per_s as u64));
    match d.eta_ms {
        Some(ms) => format!("{speed} ETA {}s", ms.div_ceil(1000)),
        None => speed,
    }
}

/// `queen fetch`: success when the model is ready on the hive, 130 when interrupted;
/// an error naming the hive's reason when the download failed or was cancelled.
pub async fn fetch(args: FetchArgs) -> Result<ExitCode> {
    if args.hive.is_some() != args.labels.is_empty() {
        bail!("give --hive ID or --label K=V (one of them)");
    }
    let interrupted = interrupted()?;
    tokio::pin!(interrupted);
    let setup = async {
        // Subscribe first so that no sample after the hive accepted is missed.
        let (mut fleet, url) = connect(&args.queen).await?;
        let stream = fleet
            .watch_fleet(pb::WatchFleetRequest {
                sample_interval_ms: Some(FOLLOW_INTERVAL_MS),
                ..Default::default()
            })
            .await
            .map_err(|s| rpc_error(&url, s))?
            .into_inner();
        // A write: a follower passes it on to the leader it names.
        let request = fetch_request(&args);
        let answer = on_queens(&args.queen, scheduler, |mut c| {
            let request = request.clone();
            async move { c.fetch_model(request).await }
        })
        .await?;
        anyhow::Ok((url, stream, answer))
    };
    // Ctrl-C while the queen is still being reached ends the command at once.
    let (url, mut stream, answer) = tokio::select! {
        () = &mut interrupted => {
            eprintln!(
                "interrupted before the queen answered; a download may have started: see `queen downloads`"
            );
            return Ok(ExitCode::from(super::fetch_interrupt::INTERRUPTED));
        }
        r = setup => r?,
    };
    let url = &url;
    let result = answer.result.unwrap_or_default();
    let hive = answer.hive_id;
    if result.already_ready {
        rbee_shared::outln!("{} is ready on {hive}", args.model)?;
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if result.joined { "joined the download of" } else { "downloading" };
    eprintln!("{verb} {} on {hive} ({})", args.model, answer.address);
    let bar = bar(args.quiet);
    bar.set_prefix(args.model.clone());
    loop {
        let event = tokio::select! {
            () = &mut interrupted => return Ok(on_interrupt(&args, &hive, &bar).await),
            e = stream.message() => e.map_err(|s| rpc_error(url, s))?,
        };
        let Some(event) = event else { bail!("the queen ended the fleet stream") };
        if let Some(gone) = hive_gone(&event, &hive) {
            bar.abandon_with_message("hive gone");
            bail!(
                "cannot follow the download of {} on {hive}: {gone}; its outcome is unknown (a partial \
                 download resumes when the hive is back: see `queen downloads`)",
                args.model
            );
        }
        let samples: Vec<pb::Sample> = match event.event {
            Some(pb::fleet_event::Event::Snapshot(s)) => {
                s.hives.into_iter().filter(|h| h.hive_id == hive).filter_map(|h| h.latest_sample).collect()
            }
            Some(pb::fleet_event::Event::Sample(s)) if s.hive_id == hive => s.sample.into_iter().collect(),
            _ => Vec::new(),
        };
        for sample in samples.into_iter().filter(|s| s.taken_at_unix_ms >= result.accepted_at_unix_ms) {
            let Some(d) = sample.downloads.iter().find(|d| d.model_id == args.model) else { continue };
            if let Some(total) = d.bytes_total {
                bar.set_length(total);
            }
            bar.set_position(d.bytes_done);
            bar.set_message(match percent(d) {
                Some(p) => format!("{p} {}", speed_eta(d)),
                None => speed_eta(d),
            });
            match pb::DownloadPhase::try_from(d.phase).unwrap_or_default() {
                pb::DownloadPhase::Done => {
                    bar.finish_with_message("ready");
                    rbee_shared::outln!(
                        "{} is ready on {hive} ({})",
                        args.model,
                        format_bytes(d.bytes_done)
                    )?;
                    return Ok(ExitCode::SUCCESS);
                }
                pb::DownloadPhase::Failed => {
                    bar.abandon_with_message("failed");
                    return Err(anyhow!(
                        "downloading {} on {hive} failed: {}",
                        args.model,
                        d.error.as_deref().unwrap_or("no reason given")
                    ));
                }
                pb::DownloadPhase::Cancelled => {
                    bar.abandon_with_message("cancelled");
                    bail!("downloading {} on {hive} was cancelled", args.model);
                }
                _ => {}
            }
        }
    }
}

/// Why the fleet event says the followed hive can no longer report: it was lost or
/// removed. A fetch that waited on it would wait forever.
fn hive_gone(event: &pb::FleetEvent, hive: &str) -> Option<String> {
    use pb::fleet_event::Event;
    let lost = pb::HiveState::Lost as i32;
    match event.event.as_ref()? {
        Event::StateChanged(c) if c.hive_id == hive && c.to == lost => Some(format!(
            "the hive is lost ({})",
            if c.reason.is_empty() { "no reason given" } else { &c.reason }
        )),
        Event::HiveRemoved(r) if r.hive_id == hive => Some("the hive was removed from the fleet".into()),
        Event::Snapshot(s) if s.hives.iter().any(|h| h.hive_id == hive && h.state == lost) => {
            Some("the hive is lost".into())
        }
        _ => None,
    }
}

fn model_state(m: &pb::Model) -> &'static str {
    match m.state() {
        pb::ModelState::Downloading => "downloading",
        pb::ModelState::Ready => "ready",
        pb::ModelState::Failed => "failed",
        pb::ModelState::Unverified => "unverified",
        pb::ModelState::Unspecified => "?",
    }
}

/// `queen models`: which hive holds which model, its state and size.
pub async fn models(args: ListArgs) -> Result<()> {
    let hives = all_hives(&args.queen).await?.hives;
    let rows: Vec<(&str, &pb::Model)> = hives
        .iter()
        .flat_map(|h| {
            h.capabilities.iter().flat_map(move |c| c.models.iter().map(move |m| (h.hive_id.as_str(), m)))
        })
        .collect();
    if args.json {
        let json: Vec<serde_json::Value> =
            rows.iter().map(|(hive, m)| serde_json::json!({ "hiveId": hive, "model": m })).collect();
        rbee_shared::outln!("{}", super::json(&json)?)?;
        return Ok(());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<40} {:<12} {:>12} {:>9}  ERROR",
        "HIVE", "MODEL", "STATE", "SIZE", "RESIDENT"
    );
    for (hive, m) in rows {
        let _ = writeln!(
            out,
            "{hive:<24} {:<40} {:<12} {:>12} {:>9}  {}",
            m.id,
            model_state(m),
            format_bytes(m.size_bytes),
            super::preload::resident_percent(m),
            m.error.as_deref().unwrap_or("")
        );
    }
    rbee_shared::out!("{out}")?;
    Ok(())
}

fn phase_name(d: &pb::DownloadProgress) -> &'static str {
    match d.phase() {
        pb::DownloadPhase::Resolving => "resolving",
        pb::DownloadPhase::Downloading => "downloading",
        pb::DownloadPhase::Verifying => "verifying",
        pb::DownloadPhase::Done => "done",
        pb::DownloadPhase::Failed => "failed",
        pb::DownloadPhase::Cancelled => "cancelled",
        pb::DownloadPhase::Preloading => "preloading",
        pb::DownloadPhase::Unspecified => "?",
    }
}

/// `queen downloads`: running downloads (and those finished in the last minute) per hive.
pub async fn downloads(args: ListArgs) -> Result<()> {
    let hives = all_hives(&args.queen).await?.hives;
    let rows: Vec<(&str, &pb::DownloadProgress)> = hives
        .iter()
        .flat_map(|h| {
            h.latest_sample.iter().flat_map(move |s| s.downloads.iter().map(move |d| (h.hive_id.as_str(), d)))
        })
        .collect();
    if args.json {
        let json: Vec<serde_json::Value> =
            rows.iter().map(|(hive, d)| serde_json::json!({ "hiveId": hive, "download": d })).collect();
        rbee_shared::outln!("{}", super::json(&json)?)?;
        return Ok(());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<40} {:<12} {:>25} {:>22}  ERROR",
        "HIVE", "MODEL", "PHASE", "DONE/TOTAL", "SPEED/ETA"
    );
    for (hive, d) in rows {
        let total = d.bytes_total.map_or_else(|| "?".into(), format_bytes);
        let share = percent(d).map(|p| format!(" {p}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "{hive:<24} {:<40} {:<12} {:>25} {:>22}  {}",
            d.model_id,
            phase_name(d),
            format!("{}/{total}{share}", format_bytes(d.bytes_done)),
            speed_eta(d),
            d.error.as_deref().unwrap_or("")
        );
    }
    rbee_shared::out!("{out}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentage_never_shows_100_before_all_bytes_are_there() {
        let d =
            |done, total| pb::DownloadProgress { bytes_done: done, bytes_total: total, ..Default::default() };
        assert_eq!(percent(&d(996, Some(1000))).as_deref(), Some("99%"));
        assert_eq!(percent(&d(1000, Some(1000))).as_deref(), Some("100%"));
        assert_eq!(percent(&d(u64::MAX - 1, Some(u64::MAX))).as_deref(), Some("99%"));
        assert_eq!(percent(&d(5, None)), None);
        assert_eq!(percent(&d(0, Some(0))), None);
    }
}
