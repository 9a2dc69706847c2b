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

use anyhow::{Result, bail};
use clap::Args;
use rbee_proto::v1 as pb;
use rbee_shared::bytesize::format_bytes;
use rbee_shared::convert::models::{download_phase_from_wire, model_state_from_wire};
use rbee_shared::{DownloadPhase, ModelState};

use super::client::{connect, on_queens, rpc_error, scheduler};
use super::command::{RunCommand, done};
use super::fetch_follow::{percent, speed_eta};
use super::fetch_interrupt::{Interrupted, interrupted};
use super::flags::{ListArgs, QueenUrl};
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
        fetch: Some(pb::FetchModelRequest {
            model_id: args.model.clone(),
            source: Some(source),
            ..Default::default()
        }),
        hive: args.hive.clone().unwrap_or_default(),
        labels: args.labels.iter().cloned().collect(),
        all: args.all,
        no_peers: args.no_peers,
    }
}

/// `queen fetch`: success when the model is ready on the hive, 130 when interrupted;
/// an error naming the hive's reason when the download failed or was cancelled.
pub async fn fetch(args: FetchArgs) -> Result<ExitCode> {
    if args.hive.is_some() != args.labels.is_empty() {
        bail!("give --hive ID or --label K=V (one of them)");
    }
    if args.all && args.labels.is_empty() {
        bail!("--all fetches to every hive matching --label K=V: give --label, not --hive");
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
    super::fetch_follow::follow(
        &answer,
        &mut stream,
        &url,
        Interrupted { model: &args.model, queen: &args.queen, cancel_on_interrupt: args.cancel_on_interrupt },
        args.quiet,
        interrupted,
    )
    .await
}

fn model_state(m: &pb::Model) -> &'static str {
    model_state_from_wire(m.state).map_or("?", ModelState::as_str)
}

/// How many hives hold one model ready, by content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ReadyOn {
    /// Hives holding it ready.
    hives: usize,
    /// Hives per distinct content (every file's path, size and sha256), most first:
    /// more than one entry when the hives disagree.
    contents: Vec<usize>,
}

impl ReadyOn {
    /// "3 hives", or "3 hives (2 contents)" when they disagree.
    fn text(&self) -> String {
        let n = self.hives;
        let mut t = format!("{n} hive{}", if n == 1 { "" } else { "s" });
        if self.contents.len() > 1 {
            t.push_str(&format!(" ({} contents)", self.contents.len()));
        }
        t
    }
}

/// How many hives hold each model ready, and with how many contents (only models some
/// hive holds ready).
fn ready_counts<'a>(rows: &[(&str, &'a pb::Model)]) -> std::collections::BTreeMap<&'a str, ReadyOn> {
    type Content = Vec<(String, u64, Option<String>)>;
    let mut groups: std::collections::BTreeMap<&str, Vec<(Content, usize)>> =
        std::collections::BTreeMap::new();
    for (_, m) in rows.iter().filter(|(_, m)| model_state_from_wire(m.state) == Some(ModelState::Ready)) {
        let mut content: Content =
            m.files.iter().map(|f| (f.path.clone(), f.size_bytes, f.sha256.clone())).collect();
        content.sort();
        let model = groups.entry(m.id.as_str()).or_default();
        match model.iter_mut().find(|(c, _)| *c == content) {
            Some((_, n)) => *n += 1,
            None => model.push((content, 1)),
        }
    }
    groups
        .into_iter()
        .map(|(model, g)| {
            let mut contents: Vec<usize> = g.into_iter().map(|(_, n)| n).collect();
            contents.sort_by_key(|n| std::cmp::Reverse(*n));
            (model, ReadyOn { hives: contents.iter().sum(), contents })
        })
        .collect()
}

/// `queen models`: which hive holds which model, its state and size, then how many
/// hives hold each model ready.
pub async fn models(args: ListArgs) -> Result<()> {
    let hives = all_hives(&args.queen).await?.hives;
    let rows: Vec<(&str, &pb::Model)> = hives
        .iter()
        .flat_map(|h| {
            h.capabilities.iter().flat_map(move |c| c.models.iter().map(move |m| (h.hive_id.as_str(), m)))
        })
        .collect();
    let counts = ready_counts(&rows);
    if args.json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|(hive, m)| {
                let ready = counts.get(m.id.as_str()).cloned().unwrap_or_default();
                serde_json::json!({
                    "hiveId": hive,
                    "model": m,
                    "readyOn": ready.hives,
                    "readyContents": ready.contents,
                })
            })
            .collect();
        rbee_shared::outln!("{}", super::json(&json)?)?;
        return Ok(());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<40} {:<12} {:>12} {:>9}  ERROR",
        "HIVE", "MODEL", "STATE", "SIZE", "RESIDENT"
    );
    for (hive, m) in &rows {
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
    if !counts.is_empty() {
        let _ = writeln!(out, "\n{:<40} {:>8}", "MODEL", "READY ON");
        for (model, n) in &counts {
            let _ = writeln!(out, "{model:<40} {:>8}", n.text());
        }
    }
    rbee_shared::out!("{out}")?;
    Ok(())
}

fn phase_name(d: &pb::DownloadProgress) -> &'static str {
    download_phase_from_wire(d.phase).map_or("?", DownloadPhase::as_str)
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

/// `queen fetch MODEL --from URL|hf://org/repo[@rev] (--hive ID | --label K=V [--all]) [--no-peers]`.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// The model id on the hive, e.g. llama-3.1-8b-q4 or org/repo.
    pub model: String,
    /// Where from: an http(s) URL of one file, or hf://org/repo[@revision].
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// Expected SHA-256 of the file (hex), verified while it downloads.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Declared size of the file (e.g. 4GiB), checked against the hive's free disk first.
    #[arg(long, value_parser = rbee_shared::bytesize::parse_bytes)]
    pub size: Option<u64>,
    /// The hive, by id or address.
    #[arg(long, conflicts_with = "labels")]
    pub hive: Option<String>,
    /// Or any online hive with this label, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = rbee_shared::labels::parse_label)]
    pub labels: Vec<(String, String)>,
    /// With --label: fetch to every online hive that matches, one bar per hive; the queen arranges it so that the origin serves the model about once (docs/models.md, "Weights from peers").
    #[arg(long)]
    pub all: bool,
    /// Fetch from the origin only: the queen hands the hive no peers (hives holding the model).
    #[arg(long)]
    pub no_peers: bool,
    /// No progress bar (the outcome is still printed).
    #[arg(long, env = "QUEEN_QUIET")]
    pub quiet: bool,
    /// On Ctrl-C, cancel the download on the hive (otherwise, on a terminal, ask; if not cancelled it goes on, and the command that cancels it is printed).
    #[arg(long)]
    pub cancel_on_interrupt: bool,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

impl RunCommand for FetchArgs {
    async fn run(self) -> Result<ExitCode> {
        fetch(self).await
    }
}

/// `queen models`.
#[derive(Debug, Clone, Args)]
pub struct ModelsArgs {
    /// Its flags.
    #[command(flatten)]
    pub list: ListArgs,
}

impl RunCommand for ModelsArgs {
    async fn run(self) -> Result<ExitCode> {
        done(models(self.list).await)
    }
}

/// `queen downloads`.
#[derive(Debug, Clone, Args)]
pub struct DownloadsArgs {
    /// Its flags.
    #[command(flatten)]
    pub list: ListArgs,
}

impl RunCommand for DownloadsArgs {
    async fn run(self) -> Result<ExitCode> {
        done(downloads(self.list).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Model states and download phases are named by the domain's `as_str`.
    #[test]
    fn model_states_and_phases_are_named_by_the_domain() {
        use ModelState as M;
        for s in [M::Downloading, M::Ready, M::Failed, M::Unverified] {
            let m = pb::Model { state: pb::ModelState::from(s) as i32, ..Default::default() };
            assert_eq!(model_state(&m), s.as_str());
        }
        use DownloadPhase as P;
        for p in [P::Resolving, P::Downloading, P::Verifying, P::Done, P::Failed, P::Cancelled, P::Preloading]
        {
            let d = pb::DownloadProgress { phase: pb::DownloadPhase::from(p) as i32, ..Default::default() };
            assert_eq!(phase_name(&d), p.as_str());
        }
        assert_eq!(model_state(&pb::Model::default()), "?");
        assert_eq!(phase_name(&pb::DownloadProgress { phase: 99, ..Default::default() }), "?");
    }

    #[test]
    fn ready_counts_count_the_hives_holding_each_model_ready() {
        let m = |id: &str, s: ModelState| pb::Model {
            id: id.into(),
            state: pb::ModelState::from(s) as i32,
            ..Default::default()
        };
        let (a, b, c, d) = (
            m("a", ModelState::Ready),
            m("a", ModelState::Ready),
            m("a", ModelState::Downloading),
            m("b", ModelState::Failed),
        );
        let rows = [("h1", &a), ("h2", &b), ("h3", &c), ("h1", &d)];
        let counts = ready_counts(&rows);
        assert_eq!(counts.into_iter().collect::<Vec<_>>(), [("a", ReadyOn { hives: 2, contents: vec![2] })]);
    }

    #[test]
    fn hives_holding_different_contents_are_counted_apart() {
        // The tester's case: E corrupted, F and G right; "3 hives" hid it.
        let m = |sha: char| pb::Model {
            id: "fan1".into(),
            state: pb::ModelState::from(ModelState::Ready) as i32,
            files: vec![pb::ModelFile {
                path: "w.bin".into(),
                size_bytes: 10,
                sha256: Some(sha.to_string().repeat(64)),
            }],
            ..Default::default()
        };
        let (e, f, g) = (m('b'), m('a'), m('a'));
        let counts = ready_counts(&[("e", &e), ("f", &f), ("g", &g)]);
        let fan1 = &counts["fan1"];
        assert_eq!(fan1, &ReadyOn { hives: 3, contents: vec![2, 1] });
        assert_eq!(fan1.text(), "3 hives (2 contents)");
        assert_eq!(ready_counts(&[("f", &f), ("g", &g)])["fan1"].text(), "2 hives");
    }

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
