//! Following the downloads `queen fetch` started, on the fleet stream: one progress bar
//! per hive (indicatif `MultiProgress`), each with where its bytes come from
//! (`DownloadProgress.sources`: "origin" or a peer's hive id), until every hive is ready
//! or has failed. A fan-out's hives that the queen asks later (`deferred`) are followed
//! from the start; if the first hive fails they are never asked.

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rbee_proto::v1 as pb;
use rbee_shared::bytesize::format_bytes;
use tonic::Streaming;

use super::fetch_interrupt::{Interrupted, on_interrupt};

/// How one followed hive ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Ready; the bytes it holds.
    Ready(u64),
    /// Failed, cancelled, refused or gone; why.
    Failed(String),
}

/// One hive whose download is followed.
struct Followed {
    /// Its id.
    hive: String,
    /// Samples older than this (its clock) are of an earlier download.
    accepted_at_unix_ms: u64,
    /// Asked later by the queen, once the first hive shows the files.
    deferred: bool,
    /// A record of this download was seen (it runs on the hive).
    seen: bool,
    /// Its bar.
    bar: ProgressBar,
    /// How it ended, once it has.
    outcome: Option<Outcome>,
}

/// Where the bytes came from, e.g. "from gpu-1 800 MiB, origin 200 MiB" (nothing
/// before the first byte).
pub fn sources_text(d: &pb::DownloadProgress) -> String {
    let parts: Vec<String> = d
        .sources
        .iter()
        .filter(|s| s.bytes > 0)
        .map(|s| format!("{} {}", s.source, format_bytes(s.bytes)))
        .collect();
    if parts.is_empty() { String::new() } else { format!("from {}", parts.join(", ")) }
}

/// How long after the first hive of a fan-out is ready a deferred hive may show no
/// download before `queen fetch --all` reports it not started.
const DEFERRED_START_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The hives of a fetch's answer to follow: the fan-out's results, else the one hive.
/// Hives that are ready already, or refused, end at once.
fn to_follow(
    answer: &pb::ScheduleFetchResponse,
    multi: &MultiProgress,
    quiet: bool,
    model: &str,
) -> Vec<Followed> {
    let results: Vec<pb::HiveFetchResult> = if answer.results.is_empty() {
        vec![pb::HiveFetchResult {
            hive_id: answer.hive_id.clone(),
            address: answer.address.clone(),
            result: answer.result,
            peers: answer.peers.clone(),
            ..Default::default()
        }]
    } else {
        answer.results.clone()
    };
    // The deferred hives' downloads start after the first hive's (same clock on one host; at worst an old record shows briefly).
    let first_accepted = results.iter().find_map(|r| r.result.as_ref()).map_or(0, |r| r.accepted_at_unix_ms);
    results
        .into_iter()
        .map(|r| {
            let bar = multi.add(bar(quiet));
            bar.set_prefix(format!("{model} on {}", r.hive_id));
            let peers =
                if r.peers.is_empty() { String::new() } else { format!(" (peers: {})", r.peers.join(", ")) };
            let (outcome, accepted) = match (&r.result, &r.error) {
                (_, Some(e)) => (Some(Outcome::Failed(format!("was refused: {e}"))), 0),
                (Some(x), None) if x.already_ready => (Some(Outcome::Ready(0)), x.accepted_at_unix_ms),
                (Some(x), None) => {
                    let verb = if x.joined { "joined the download of" } else { "downloading" };
                    multi.suspend(|| eprintln!("{verb} {model} on {} ({}){peers}", r.hive_id, r.address));
                    (None, x.accepted_at_unix_ms)
                }
                (None, None) => {
                    multi.suspend(|| {
                        eprintln!("{model} on {} starts once the first hive has the files{peers}", r.hive_id)
                    });
                    (None, first_accepted)
                }
            };
            match &outcome {
                Some(Outcome::Ready(_)) => bar.finish_with_message("ready"),
                Some(Outcome::Failed(_)) => bar.abandon_with_message("refused"),
                None => {}
            }
            Followed {
                hive: r.hive_id,
                accepted_at_unix_ms: accepted,
                deferred: r.deferred,
                seen: false,
                bar,
                outcome,
            }
        })
        .collect()
}

/// Follows the downloads in `answer` on `stream` until each has ended: success when all
/// are ready, 130 when interrupted, an error naming each hive that failed.
pub async fn follow(
    answer: &pb::ScheduleFetchResponse,
    stream: &mut Streaming<pb::FleetEvent>,
    url: &str,
    interrupt: Interrupted<'_>,
    quiet: bool,
    interrupted: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<ExitCode> {
    let model = interrupt.model;
    let multi = MultiProgress::with_draw_target(if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    if let Some(note) = &answer.peers_note {
        eprintln!("{note}");
    }
    let mut hives = to_follow(answer, &multi, quiet, model);
    for h in hives.iter().filter(|h| h.outcome == Some(Outcome::Ready(0))) {
        rbee_shared::outln!("{model} is ready on {}", h.hive)?;
    }
    let mut interrupted = interrupted;
    let mut first_ready_at: Option<std::time::Instant> = None;
    while hives.iter().any(|h| h.outcome.is_none()) {
        let event = tokio::select! {
            () = &mut interrupted => {
                for h in hives.iter().filter(|h| h.outcome.is_none()) {
                    on_interrupt(interrupt, &h.hive, &h.bar).await;
                }
                return Ok(ExitCode::from(super::fetch_interrupt::INTERRUPTED));
            }
            e = stream.message() => e,
        };
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => return Err(lost_queen(model, url, &hives, "it ended the fleet stream")),
            Err(s) => {
                let why = super::client::rpc_error(url, s).to_string();
                return Err(lost_queen(model, url, &hives, &why));
            }
        };
        for h in hives.iter_mut().filter(|h| h.outcome.is_none()) {
            if let Some(gone) = hive_gone(&event, &h.hive) {
                h.bar.abandon_with_message("hive gone");
                h.outcome = Some(Outcome::Failed(format!(
                    "could not be followed: {gone}; its outcome is unknown (a partial download resumes when the \
                     hive is back: see `queen downloads`)"
                )));
            }
        }
        let samples: Vec<(String, pb::Sample)> = match event.event {
            Some(pb::fleet_event::Event::Snapshot(s)) => {
                s.hives.into_iter().filter_map(|h| Some((h.hive_id, h.latest_sample?))).collect()
            }
            Some(pb::fleet_event::Event::Sample(s)) => s.sample.map(|x| (s.hive_id, x)).into_iter().collect(),
            _ => Vec::new(),
        };
        for (hive, sample) in samples {
            let Some(h) = hives.iter_mut().find(|h| h.hive == hive && h.outcome.is_none()) else { continue };
            if sample.taken_at_unix_ms < h.accepted_at_unix_ms {
                continue;
            }
            let Some(d) = sample.downloads.iter().find(|d| d.model_id == model) else { continue };
            h.seen = true;
            if let Some(o) = progress(h, d) {
                if let Outcome::Ready(bytes) = o {
                    let from = sources_text(d);
                    let from = if from.is_empty() { from } else { format!(", {from}") };
                    multi.suspend(|| {
                        rbee_shared::outln!("{model} is ready on {hive} ({}{from})", format_bytes(bytes))
                    })?;
                }
                h.outcome = Some(o);
            }
        }
        // A fan-out whose first hive failed never asks the deferred ones.
        let first_failed = hives.first().is_some_and(|h| matches!(h.outcome, Some(Outcome::Failed(_))));
        for h in hives.iter_mut().filter(|h| h.deferred && h.outcome.is_none() && first_failed) {
            h.bar.abandon_with_message("not started");
            h.outcome = Some(Outcome::Failed("not started: the first hive's fetch failed".into()));
        }
        // The queen starts the deferred hives once the first has the files; one that
        // shows no download long after the first is ready was refused or never asked
        // (a queen restart): say so instead of waiting forever.
        if first_ready_at.is_none()
            && hives.first().is_some_and(|h| matches!(h.outcome, Some(Outcome::Ready(_))))
        {
            first_ready_at = Some(std::time::Instant::now());
        }
        if first_ready_at.is_some_and(|t| t.elapsed() > DEFERRED_START_WAIT) {
            for h in hives.iter_mut().filter(|h| h.deferred && h.outcome.is_none() && !h.seen) {
                h.bar.abandon_with_message("not started");
                h.outcome = Some(Outcome::Failed(format!(
                    "not started {} s after the first hive was ready (the queen refused it or lost the fan-out: \
                     its log says which); re-run the same command to start it",
                    DEFERRED_START_WAIT.as_secs()
                )));
            }
        }
    }
    let failed: Vec<(&str, &str)> = hives
        .iter()
        .filter_map(|h| match &h.outcome {
            Some(Outcome::Failed(why)) => Some((h.hive.as_str(), why.as_str())),
            _ => None,
        })
        .collect();
    match failed.as_slice() {
        [] => Ok(ExitCode::SUCCESS),
        [(hive, why)] if hives.len() == 1 => Err(anyhow!("downloading {model} on {hive} {why}")),
        _ => Err(anyhow!(
            "downloading {model} failed on {} of {} hives: {}",
            failed.len(),
            hives.len(),
            failed.iter().map(|(h, why)| format!("{h}: {why}")).collect::<Vec<_>>().join("; ")
        )),
    }
}

/// The error when the queen is lost while hives are followed: which hives started
/// (their downloads keep running), which were not asked yet (a fan-out's deferred
/// hives: the queen that stopped was to ask them), and the command that resumes.
fn lost_queen(model: &str, url: &str, hives: &[Followed], why: &str) -> anyhow::Error {
    for h in hives.iter().filter(|h| h.outcome.is_none()) {
        h.bar.abandon_with_message("queen lost");
    }
    let started: Vec<String> = hives
        .iter()
        .filter(|h| !h.deferred || h.seen)
        .map(|h| {
            let state = match &h.outcome {
                Some(Outcome::Ready(_)) => "ready",
                Some(Outcome::Failed(_)) => "failed",
                None => "downloading",
            };
            format!("{} ({state})", h.hive)
        })
        .collect();
    let waiting: Vec<&str> =
        hives.iter().filter(|h| h.deferred && !h.seen).map(|h| h.hive.as_str()).collect();
    let mut text = format!("lost the queen at {url} while following {model} ({why}).");
    if !started.is_empty() {
        text.push_str(&format!(
            "\nstarted on: {}; their downloads keep running on the hives (`queen downloads` shows them).",
            started.join(", ")
        ));
    }
    if !waiting.is_empty() {
        text.push_str(&format!(
            "\nnot started: {} (the queen was to ask them once the first hive had the files; a queen that \
             stops forgets that).",
            waiting.join(", ")
        ));
    }
    text.push_str(&format!(
        "\nto resume, run the same command again once a queen answers: it joins the running downloads and \
         starts the rest:\n  {}",
        command_line(std::env::args())
    ));
    anyhow!(text)
}

/// `args` as a shell command line, each argument quoted where it needs to be.
fn command_line(args: impl Iterator<Item = String>) -> String {
    let quote = |a: String| {
        let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
        if plain { a } else { format!("'{}'", a.replace('\'', "'\\''")) }
    };
    args.map(quote).collect::<Vec<_>>().join(" ")
}

/// Moves `h`'s bar to `d`; how it ended when `d` is final.
fn progress(h: &Followed, d: &pb::DownloadProgress) -> Option<Outcome> {
    if let Some(total) = d.bytes_total {
        h.bar.set_length(total);
    }
    h.bar.set_position(d.bytes_done);
    let mut msg = match percent(d) {
        Some(p) => format!("{p} {}", speed_eta(d)),
        None => speed_eta(d),
    };
    let from = sources_text(d);
    if !from.is_empty() {
        msg = format!("{msg} {from}");
    }
    h.bar.set_message(msg);
    match pb::DownloadPhase::try_from(d.phase).unwrap_or_default() {
        pb::DownloadPhase::Done => {
            h.bar.finish_with_message(format!("ready {from}"));
            Some(Outcome::Ready(d.bytes_done))
        }
        pb::DownloadPhase::Failed => {
            h.bar.abandon_with_message("failed");
            Some(Outcome::Failed(format!("failed: {}", d.error.as_deref().unwrap_or("no reason given"))))
        }
        pb::DownloadPhase::Cancelled => {
            h.bar.abandon_with_message("cancelled");
            Some(Outcome::Failed("was cancelled".into()))
        }
        _ => None,
    }
}

/// A progress bar for one hive's download (hidden when `quiet`).
pub(super) fn bar(quiet: bool) -> ProgressBar {
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
pub(super) fn percent(d: &pb::DownloadProgress) -> Option<String> {
    let total = d.bytes_total.filter(|t| *t > 0)?;
    Some(format!("{}%", u128::from(d.bytes_done.min(total)) * 100 / u128::from(total)))
}

/// Speed and ETA as the hive measured them.
pub(super) fn speed_eta(d: &pb::DownloadProgress) -> String {
    let speed = format!("{}/s", format_bytes(d.speed_bytes_per_s as u64));
    match d.eta_ms {
        Some(ms) => format!("{speed} ETA {}s", ms.div_ceil(1000)),
        None => speed,
    }
}

/// Why the fleet event says the followed hive can no longer report: it was lost or
/// removed. A fetch that waited on it would wait forever.
pub(super) fn hive_gone(event: &pb::FleetEvent, hive: &str) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_command_quotes_what_a_shell_would_split() {
        let args = ["queen", "fetch", "m", "--from", "http://h/a b?x=1&y", "--label", "zone=eu", "it's"];
        assert_eq!(
            command_line(args.iter().map(|s| (*s).to_owned())),
            "queen fetch m --from 'http://h/a b?x=1&y' --label zone=eu 'it'\\''s'"
        );
    }

    #[test]
    fn sources_name_each_one_with_its_bytes() {
        let d = pb::DownloadProgress {
            sources: vec![
                pb::SourceBytes { source: "gpu-1".into(), bytes: 3 * 1024 * 1024 },
                pb::SourceBytes { source: "origin".into(), bytes: 0 },
                pb::SourceBytes { source: "origin".into(), bytes: 1024 },
            ],
            ..Default::default()
        };
        assert_eq!(
            sources_text(&d),
            format!("from gpu-1 {}, origin {}", format_bytes(3 << 20), format_bytes(1024))
        );
        assert_eq!(sources_text(&pb::DownloadProgress::default()), "");
    }
}
