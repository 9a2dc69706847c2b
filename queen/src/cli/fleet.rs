//! `queen hives`, `hive`, `watch`, `add`, `remove`: the fleet, from a running queen.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use rbee_proto::v1 as pb;

use super::client::{connect, fleet, is_final, on_queens, open_watch, reconnect_backoff, rpc_error};
use super::command::{RunCommand, done};
use super::flags::{ListArgs, QueenUrl};
use super::render::{render_detail, render_event, render_table};

/// Every hive, walking ListHives' pages.
pub(super) async fn all_hives(queen: &QueenUrl) -> Result<pb::ListHivesResponse> {
    let (mut client, url) = connect(queen).await?;
    let mut all = pb::ListHivesResponse::default();
    loop {
        let page_token = std::mem::take(&mut all.next_page_token);
        let page = client
            .list_hives(pb::ListHivesRequest { page_size: 0, page_token })
            .await
            .map_err(|s| rpc_error(&url, s))?
            .into_inner();
        all.hives.extend(page.hives);
        all.queen_time_unix_ms = page.queen_time_unix_ms;
        all.next_page_token = page.next_page_token;
        if all.next_page_token.is_empty() {
            return Ok(all);
        }
    }
}

/// `queen hives`.
pub async fn hives(args: ListArgs) -> Result<()> {
    let resp = all_hives(&args.queen).await?;
    if args.json {
        rbee_shared::outln!("{}", super::json(&resp)?)?;
    } else {
        rbee_shared::out!("{}", render_table(&resp.hives))?;
    }
    Ok(())
}

/// `queen hive ID`.
pub async fn hive(args: HiveArgs) -> Result<()> {
    let request = pb::GetHiveRequest { hive: args.hive.clone() };
    let view = on_queens(&args.queen, fleet, |mut c| {
        let request = request.clone();
        async move { c.get_hive(request).await }
    })
    .await?;
    if args.json {
        rbee_shared::outln!("{}", super::json(&view)?)?;
    } else {
        rbee_shared::out!("{}", render_detail(&view))?;
    }
    Ok(())
}

/// `queen watch`: one line per event until interrupted. When the watch breaks (the
/// queen restarts, its certificate rotates, the network drops) it says
/// "reconnecting..." on stderr and opens it again, with backoff, on the first of the
/// `--queen` URLs that answers (following the leader a queen names); the queen's
/// snapshot then resumes the stream. It asks to resume after the last event it printed
/// (`resume_after_seq`): the queen sends just the events missed meanwhile, or a snapshot
/// flagged as a reset when it no longer holds them (or is another queen). Only the
/// first connection, and an answer that no retry can change (a refused token, a bad
/// request), end it with an error.
pub async fn watch(args: WatchArgs) -> Result<()> {
    let mut request = pb::WatchFleetRequest {
        sample_interval_ms: args.samples.map(|i| i.as_millis_u32()),
        ..Default::default()
    };
    let mut backoff = reconnect_backoff();
    let mut connected_once = false;
    // Nobody reads any more (`queen watch | head -1`): done, quietly.
    let gone = rbee_shared::stdout::reader_gone();
    // One listener for the whole command: a Ctrl-C between two waits is not lost.
    let interrupted = rbee_shared::shutdown::shutdown_signal();
    tokio::pin!(gone, interrupted);
    loop {
        let opened = tokio::select! {
            () = &mut gone => return Ok(()),
            () = &mut interrupted => return Ok(()),
            opened = open_watch(&args.queen, request) => opened,
        };
        let why = match opened {
            Ok((mut stream, url)) => {
                if connected_once {
                    rbee_shared::stdout::note(&format!("reconnected to the queen at {url}"));
                }
                connected_once = true;
                loop {
                    let event = tokio::select! {
                        () = &mut gone => return Ok(()),
                        () = &mut interrupted => return Ok(()),
                        event = stream.message() => event,
                    };
                    match event {
                        Ok(Some(e)) => {
                            backoff.reset();
                            // Resume after it on a reconnect (0: a queen that numbers no
                            // events); not from the middle of a snapshot in parts.
                            let partial =
                                matches!(&e.event, Some(pb::fleet_event::Event::Snapshot(s)) if s.more);
                            request.resume_after_seq =
                                (e.queen_epoch != 0 && !partial).then_some(e.fleet_seq);
                            request.resume_epoch = e.queen_epoch;
                            if args.json {
                                rbee_shared::outln!("{}", super::json_line(&e)?)?;
                            } else {
                                rbee_shared::outln!("{}", render_event(&e))?;
                            }
                        }
                        Ok(None) => break anyhow::anyhow!("the queen at {url} ended the watch"),
                        Err(s) => break rpc_error(&url, s),
                    }
                }
            }
            Err(e) if !connected_once || is_final(&e) => return Err(e),
            Err(e) => e,
        };
        if is_final(&why) {
            return Err(why);
        }
        let delay = backoff.next_delay();
        rbee_shared::stdout::note(&format!("reconnecting... ({})", super::error_chain(&why)));
        tokio::select! {
            () = &mut gone => return Ok(()),
            () = &mut interrupted => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// `queen add ADDR`.
pub async fn add(args: AddArgs) -> Result<()> {
    let request = pb::AddHiveRequest { address: args.address.clone() };
    let resp = on_queens(&args.queen, fleet, |mut c| {
        let request = request.clone();
        async move { c.add_hive(request).await }
    })
    .await?;
    let address = resp.hive.map(|h| h.address).unwrap_or_default();
    rbee_shared::outln!("{} {address}", if resp.added { "added" } else { "already managed:" })?;
    Ok(())
}

/// `queen remove ID`.
pub async fn remove(args: RemoveArgs) -> Result<()> {
    let request = pb::RemoveHiveRequest { hive: args.hive.clone() };
    let resp = on_queens(&args.queen, fleet, |mut c| {
        let request = request.clone();
        async move { c.remove_hive(request).await }
    })
    .await?;
    rbee_shared::outln!("removed {}", resp.address)?;
    Ok(())
}

/// `queen hives`.
#[derive(Debug, Clone, Args)]
pub struct HivesArgs {
    /// Its flags.
    #[command(flatten)]
    pub list: ListArgs,
}

impl RunCommand for HivesArgs {
    async fn run(self) -> Result<ExitCode> {
        done(hives(self.list).await)
    }
}

/// `queen hive ID`.
#[derive(Debug, Clone, Args)]
pub struct HiveArgs {
    /// Hive id or address.
    pub hive: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Also print each hive's newest sample at most this often (e.g. 1s).
    #[arg(long)]
    pub samples: Option<rbee_shared::SampleInterval>,
    /// Print each event as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen add ADDR`.
#[derive(Debug, Clone, Args)]
pub struct AddArgs {
    /// The hive's address, e.g. http://10.0.0.5:7835.
    /// The queen dials it only inside its allow-list (`queen serve --allow`).
    pub address: String,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen remove ID`.
#[derive(Debug, Clone, Args)]
pub struct RemoveArgs {
    /// Hive id or address.
    pub hive: String,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

impl RunCommand for HiveArgs {
    async fn run(self) -> Result<ExitCode> {
        done(hive(self).await)
    }
}

impl RunCommand for WatchArgs {
    async fn run(self) -> Result<ExitCode> {
        done(watch(self).await)
    }
}

impl RunCommand for AddArgs {
    async fn run(self) -> Result<ExitCode> {
        done(add(self).await)
    }
}

impl RunCommand for RemoveArgs {
    async fn run(self) -> Result<ExitCode> {
        done(remove(self).await)
    }
}
