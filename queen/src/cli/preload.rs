//! `queen preload` and `queen evict`: have hives keep a model in RAM or drop it, through
//! the queen (Scheduler.PreloadModel / EvictModel); and the resident column of
//! `queen models`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use rbee_proto::v1 as pb;
use rbee_shared::bytesize::format_bytes;

use super::client::{on_queens, scheduler};
use super::command::{RunCommand, done};
use super::flags::QueenUrl;

/// A model's resident share as `queen models` shows it (`-` when not measured).
pub fn resident_percent(m: &pb::Model) -> String {
    match m.resident_bytes {
        Some(r) if m.size_bytes > 0 => format!("{:.0}%", r as f64 * 100.0 / m.size_bytes as f64),
        _ => "-".into(),
    }
}

fn request(args: &CacheArgs, wait: bool) -> pb::ScheduleCacheRequest {
    pb::ScheduleCacheRequest {
        model_id: args.model.clone(),
        hive: args.hive.clone().unwrap_or_default(),
        labels: args.labels.iter().cloned().collect(),
        wait,
    }
}

/// The answer, one line per hive; an error when any hive refused.
fn report(verb: &str, model: &str, r: &pb::ScheduleCacheResponse, json: bool) -> Result<()> {
    if json {
        rbee_shared::outln!("{}", super::json(r)?)?;
    } else {
        let mut out = String::new();
        for h in &r.results {
            match &h.error {
                Some(e) => eprintln!("{}: {verb} {model} failed: {e}", h.hive_id),
                None => {
                    let share = if h.size_bytes > 0 {
                        format!(" ({:.0}%)", h.resident_bytes as f64 * 100.0 / h.size_bytes as f64)
                    } else {
                        String::new()
                    };
                    let _ = write!(
                        out,
                        "{}: {model} {} resident{share}",
                        h.hive_id,
                        format_bytes(h.resident_bytes)
                    );
                    if !h.evicted.is_empty() {
                        let _ = write!(out, "; evicted {}", h.evicted.join(", "));
                    }
                    out.push('\n');
                }
            }
        }
        rbee_shared::out!("{out}")?;
    }
    let failed = r.results.iter().filter(|h| h.error.is_some()).count();
    if failed > 0 {
        bail!("{verb} failed on {failed} of {} hives", r.results.len());
    }
    Ok(())
}

/// `queen preload MODEL (--hive ID | --label K=V)`.
pub async fn preload(args: CacheArgs) -> Result<()> {
    // A write: a follower passes it on to the leader it names.
    let req = request(&args, !args.no_wait);
    let r = on_queens(&args.queen, scheduler, |mut c| {
        let req = req.clone();
        async move { c.preload_model(req).await }
    })
    .await?;
    report("preload", &args.model, &r, args.json)
}

/// `queen evict MODEL (--hive ID | --label K=V)`.
pub async fn evict(args: CacheArgs) -> Result<()> {
    // A write: a follower passes it on to the leader it names.
    let req = request(&args, false);
    let r = on_queens(&args.queen, scheduler, |mut c| {
        let req = req.clone();
        async move { c.evict_model(req).await }
    })
    .await?;
    report("evict", &args.model, &r, args.json)
}

/// `queen preload|evict MODEL (--hive ID | --label K=V)`.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// The model id on the hives.
    pub model: String,
    /// The hive, by id or address.
    #[arg(long, conflicts_with = "labels", required_unless_present = "labels")]
    pub hive: Option<String>,
    /// Or every online hive with this label that holds the model, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = rbee_shared::labels::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Return at once instead of when the preloads are done.
    #[arg(long)]
    pub no_wait: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen preload`.
#[derive(Debug, Clone, Args)]
pub struct PreloadArgs {
    /// Its flags.
    #[command(flatten)]
    pub cache: CacheArgs,
}

impl RunCommand for PreloadArgs {
    async fn run(self) -> Result<ExitCode> {
        done(preload(self.cache).await)
    }
}

/// `queen evict`.
#[derive(Debug, Clone, Args)]
pub struct EvictArgs {
    /// Its flags.
    #[command(flatten)]
    pub cache: CacheArgs,
}

impl RunCommand for EvictArgs {
    async fn run(self) -> Result<ExitCode> {
        done(evict(self.cache).await)
    }
}
