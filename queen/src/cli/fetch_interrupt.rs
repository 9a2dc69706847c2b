//! Ctrl-C (or SIGTERM) on `queen fetch`: the command exits 130, and the download on the
//! hive is either cancelled through the queen (`--cancel-on-interrupt`, or "y" to the
//! question asked when stdin and stderr are a terminal) or left running, with the exact
//! `queen cancel-fetch ...` command that cancels it printed.

use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use indicatif::ProgressBar;
use rbee_proto::v1 as pb;

use super::flags::QueenUrl;
use super::model_removal;

/// The exit status after an interrupt (128 + SIGINT), as shells report Ctrl-C.
pub(super) const INTERRUPTED: u8 = 130;

/// Longest the cancel after an interrupt may take before the command gives up on it.
const CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves on SIGINT or SIGTERM. Listening starts when this is called, not when the
/// future is first polled, so no interrupt after the call is missed.
pub(super) fn interrupted() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Whether an answer to a yes/no question (default no) is yes.
fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Asks `question` on the terminal: true on "y" or "yes"; false on anything else, on
/// end of input, or on another interrupt.
async fn ask(question: &str) -> bool {
    let Ok(again) = interrupted() else { return false };
    eprint!("{question} [y/N] ");
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A plain thread: a read of the terminal cannot be cancelled, and the process must
    // not wait for it on exit (the runtime waits for its blocking pool).
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = tx.send(std::io::stdin().read_line(&mut line).map(|_| line));
    });
    tokio::select! {
        answer = rx => matches!(answer, Ok(Ok(line)) if is_yes(&line)),
        () = again => {
            eprintln!();
            false
        }
    }
}

/// What an interrupted `queen fetch` was doing: its model, its queen, and whether
/// `--cancel-on-interrupt` was given.
#[derive(Clone, Copy)]
pub(super) struct Interrupted<'a> {
    /// The model id.
    pub model: &'a str,
    /// The queen.
    pub queen: &'a QueenUrl,
    /// `--cancel-on-interrupt`.
    pub cancel_on_interrupt: bool,
}

/// After an interrupt: cancels the download of `args.model` on `hive` (with
/// `--cancel-on-interrupt`, or when the operator says so), or says how. Always 130.
pub(super) async fn on_interrupt(args: Interrupted<'_>, hive: &str, bar: &ProgressBar) -> ExitCode {
    let command = model_removal::cancel_command(args.model, hive, args.queen);
    bar.abandon_with_message("interrupted");
    let cancel = args.cancel_on_interrupt
        || (std::io::stdin().is_terminal()
            && std::io::stderr().is_terminal()
            && ask(&format!("Cancel the download of {} on {hive}?", args.model)).await);
    if !cancel {
        eprintln!("interrupted; the download of {} goes on on {hive}. To cancel it: {command}", args.model);
        return ExitCode::from(INTERRUPTED);
    }
    let request = pb::ScheduleModelRequest {
        model_id: args.model.to_owned(),
        hive: hive.to_owned(),
        labels: Default::default(),
    };
    let sent = async {
        let Ok(again) = interrupted() else {
            return model_removal::send(args.queen, request, false).await.map(Some);
        };
        tokio::select! {
            r = tokio::time::timeout(CANCEL_TIMEOUT, model_removal::send(args.queen, request, false)) => {
                r.map_err(|_| anyhow::anyhow!("no answer in {} s", CANCEL_TIMEOUT.as_secs()))?.map(Some)
            }
            // A second interrupt: stop waiting for the cancel.
            () = again => Ok(None),
        }
    };
    match sent.await {
        Ok(None) => {
            eprintln!("interrupted again; the cancel may not have reached {hive}. To retry: {command}")
        }
        Ok(Some(r)) if r.results.iter().all(|h| h.error.is_none()) => {
            eprintln!("interrupted; cancelled the download of {} on {hive}", args.model);
        }
        Ok(Some(r)) => {
            let errors: Vec<&str> = r.results.iter().filter_map(|h| h.error.as_deref()).collect();
            eprintln!("interrupted; cancelling failed: {}. To retry: {command}", errors.join("; "));
        }
        Err(e) => eprintln!("interrupted; cancelling failed: {e:#}. To retry: {command}"),
    }
    ExitCode::from(INTERRUPTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_yes_cancels() {
        for yes in ["y\n", "Y", " yes ", "YES\r\n"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yess", "ja"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }
}
