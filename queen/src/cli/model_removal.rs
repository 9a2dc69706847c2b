//! `queen cancel-fetch` and `queen rm-model`: stop a download, or delete a model and its
//! files, on hives through the queen (Scheduler.CancelFetch / DeleteModel), with the
//! queen's write token; and the command `queen fetch` prints to cancel what it follows.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use rbee_proto::v1 as pb;

use super::client::{on_queens, scheduler};
use super::command::{RunCommand, done};
use super::flags::QueenUrl;

/// `queen cancel-fetch|rm-model MODEL (--hive ID | --label K=V)`.
#[derive(Debug, Clone, Args)]
pub struct ModelRemovalArgs {
    /// The model id on the hives.
    pub model: String,
    /// The hive, by id or address.
    #[arg(long, conflicts_with = "labels", required_unless_present = "labels")]
    pub hive: Option<String>,
    /// Or every online hive with this label that downloads (cancel-fetch) or has (rm-model) the model, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = rbee_shared::labels::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Print the ScheduleModelResponse as JSON.
    #[arg(long)]
    pub json: bool,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

fn request(args: &ModelRemovalArgs) -> pb::ScheduleModelRequest {
    pb::ScheduleModelRequest {
        model_id: args.model.clone(),
        hive: args.hive.clone().unwrap_or_default(),
        labels: args.labels.iter().cloned().collect(),
    }
}

/// The answer, one line per hive; an error when any hive refused.
fn report(done: &str, verb: &str, model: &str, r: &pb::ScheduleModelResponse, json: bool) -> Result<()> {
    if json {
        rbee_shared::outln!("{}", super::json(r)?)?;
    }
    for h in &r.results {
        match &h.error {
            Some(e) => eprintln!("{}: {verb} {model} failed: {e}", h.hive_id),
            None if !json => rbee_shared::outln!("{}: {model} {done}", h.hive_id)?,
            None => {}
        }
    }
    let failed = r.results.iter().filter(|h| h.error.is_some()).count();
    if failed > 0 {
        bail!("{verb} failed on {failed} of {} hives", r.results.len());
    }
    Ok(())
}

/// Sends `request` as CancelFetch (or DeleteModel, with `delete`) to the leader.
pub(super) async fn send(
    queen: &QueenUrl,
    request: pb::ScheduleModelRequest,
    delete: bool,
) -> Result<pb::ScheduleModelResponse> {
    // A write: a follower passes it on to the leader it names.
    on_queens(queen, scheduler, |mut c| {
        let request = request.clone();
        async move { if delete { c.delete_model(request).await } else { c.cancel_fetch(request).await } }
    })
    .await
}

/// `queen cancel-fetch MODEL (--hive ID | --label K=V)`.
pub async fn cancel_fetch(args: ModelRemovalArgs) -> Result<()> {
    let r = send(&args.queen, request(&args), false).await?;
    report("download cancelled", "cancel-fetch", &args.model, &r, args.json)
}

/// `queen rm-model MODEL (--hive ID | --label K=V)`.
pub async fn rm_model(args: ModelRemovalArgs) -> Result<()> {
    let r = send(&args.queen, request(&args), true).await?;
    report("deleted", "rm-model", &args.model, &r, args.json)
}

/// The exact command that cancels the download of `model` on `hive` through the same
/// queens (and CA and token file) as `queen`.
pub fn cancel_command(model: &str, hive: &str, queen: &QueenUrl) -> String {
    let mut words =
        vec!["queen".to_owned(), "cancel-fetch".into(), quote(model), "--hive".into(), quote(hive)];
    words.extend(["--queen".into(), quote(&queen.url)]);
    if let Some(ca) = &queen.ca {
        words.extend(["--ca".into(), quote(&ca.display().to_string())]);
    }
    if let Some(token) = &queen.token_file {
        words.extend(["--token-file".into(), quote(&token.display().to_string())]);
    }
    words.join(" ")
}

/// `s` as one POSIX shell word.
fn quote(s: &str) -> String {
    let plain = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:,=@+%".contains(&b));
    if plain { s.to_owned() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

/// `queen cancel-fetch`.
#[derive(Debug, Clone, Args)]
pub struct CancelFetchArgs {
    /// Its flags.
    #[command(flatten)]
    pub removal: ModelRemovalArgs,
}

impl RunCommand for CancelFetchArgs {
    async fn run(self) -> Result<ExitCode> {
        done(cancel_fetch(self.removal).await)
    }
}

/// `queen rm-model`.
#[derive(Debug, Clone, Args)]
pub struct RmModelArgs {
    /// Its flags.
    #[command(flatten)]
    pub removal: ModelRemovalArgs,
}

impl RunCommand for RmModelArgs {
    async fn run(self) -> Result<ExitCode> {
        done(rm_model(self.removal).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cancel_command_names_the_same_queens_and_quotes_what_needs_it() {
        let q = QueenUrl {
            url: "http://127.0.0.1:7833,http://10.0.0.2:7833".into(),
            ca: Some("/etc/rbee/queen ca.pem".into()),
            token_file: None,
        };
        assert_eq!(
            cancel_command("org/llama-3", "gpu-7", &q),
            "queen cancel-fetch org/llama-3 --hive gpu-7 --queen http://127.0.0.1:7833,http://10.0.0.2:7833 \
             --ca '/etc/rbee/queen ca.pem'"
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
