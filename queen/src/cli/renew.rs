//! `queen renew ID --ttl 10m`: extend an active reservation (Scheduler.Renew), as a
//! worker loading a large model keeps its reservation alive.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use rbee_proto::v1 as pb;

use super::client::{on_queens, scheduler};
use super::command::{RunCommand, done};
use super::flags::QueenUrl;

/// `queen renew ID --ttl 10m`.
#[derive(Debug, Clone, Args)]
pub struct RenewArgs {
    /// The reservation id.
    pub id: String,
    /// It expires this long from now (1ms..=1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

/// `queen renew ID --ttl D`.
pub async fn renew(args: RenewArgs) -> Result<()> {
    let request = pb::RenewRequest {
        reservation_id: args.id.clone(),
        ttl_ms: u32::try_from(args.ttl.as_millis()).unwrap_or(u32::MAX),
    };
    let resp = on_queens(&args.queen, scheduler, |mut c| {
        let request = request.clone();
        async move { c.renew(request).await }
    })
    .await?;
    let expires = resp.reservation.map_or(0, |r| r.expires_at_unix_ms);
    rbee_shared::outln!("renewed {}: expires at {expires} ms since the epoch", args.id)?;
    Ok(())
}

impl RunCommand for RenewArgs {
    async fn run(self) -> Result<ExitCode> {
        done(renew(self).await)
    }
}
