//! `queen top`: a live full-screen view of the fleet, in the spirit of nvitop and k9s.
//! It follows `WatchFleet` (with samples once a second) rather than polling; the
//! reservations of the hive in the detail pane are fetched when the pane opens.
//!
//! - [`model`]: events reduced into rows, sorting, filtering, keys (plain Rust).
//! - [`view`]: drawing the model with ratatui.
//! - here: the terminal, the key reader thread and the event loop.

pub mod model;
pub mod view;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use rbee_proto::v1 as pb;
use tokio::sync::mpsc;

use self::model::{Action, Key, Model};
use super::client::{is_final, on_queens, open_watch, reconnect_backoff, rpc_error, scheduler};
use super::command::{RunCommand, done};
use super::flags::QueenUrl;

/// How often the screen is redrawn without news (sample ages keep counting).
const REDRAW: Duration = Duration::from_secs(1);

/// Samples asked of the watch.
const SAMPLE_INTERVAL_MS: u32 = 1000;

/// A watch being opened (after a backoff delay): the stream and the queen's URL.
type Opening = Pin<Box<dyn Future<Output = Result<(tonic::Streaming<pb::FleetEvent>, String)>> + Send>>;

/// Opens the watch on the queens after `delay`.
fn reopen(queen: &QueenUrl, delay: Duration) -> Opening {
    let queen = queen.clone();
    Box::pin(async move {
        tokio::time::sleep(delay).await;
        open_watch(&queen, watch_request()).await
    })
}

fn watch_request() -> pb::WatchFleetRequest {
    pb::WatchFleetRequest { sample_interval_ms: Some(SAMPLE_INTERVAL_MS), ..Default::default() }
}

/// The next event of the watch, or never while there is none.
async fn next_event(
    watch: &mut Option<tonic::Streaming<pb::FleetEvent>>,
) -> Result<Option<pb::FleetEvent>, tonic::Status> {
    match watch {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

/// The watch being opened, or never while none is.
async fn opened(opening: &mut Option<Opening>) -> Result<(tonic::Streaming<pb::FleetEvent>, String)> {
    match opening {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Runs the view until `q`. When the watch breaks (the queen restarts or goes away) the
/// view stays up, says "reconnecting..." and opens the watch again with backoff on the
/// first `--queen` URL that answers (following the leader a queen names); the queen's
/// snapshot then refreshes the rows. Keys keep working meanwhile.
pub async fn run(args: TopArgs) -> Result<()> {
    // The first connection must work: a wrong URL is reported at once.
    let (first, mut url) = open_watch(&args.queen, watch_request()).await?;
    let mut watch = Some(first);
    let mut opening: Option<Opening> = None;
    let mut backoff = reconnect_backoff();
    let mut model = Model::new(args.label);
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let mut keys = spawn_key_reader();
    let mut redraw = tokio::time::interval(REDRAW);
    let result = loop {
        if let Err(e) = terminal.draw(|f| view::draw(f, &model, Instant::now())) {
            break Err(anyhow::Error::from(e).context("cannot draw"));
        }
        tokio::select! {
            message = next_event(&mut watch) => {
                let why = match message {
                    Ok(Some(event)) => {
                        backoff.reset();
                        model.apply(event, Instant::now());
                        continue;
                    }
                    Ok(None) => anyhow::anyhow!("the queen at {url} ended the watch"),
                    Err(s) => rpc_error(&url, s),
                };
                if is_final(&why) {
                    break Err(why);
                }
                watch = None;
                model.status = format!("reconnecting... ({})", super::error_chain(&why));
                opening = Some(reopen(&args.queen, backoff.next_delay()));
            }
            result = opened(&mut opening) => {
                opening = None;
                match result {
                    Ok((stream, at)) => {
                        url = at;
                        watch = Some(stream);
                        model.new_watch();
                        model.status = format!("reconnected to {url}");
                    }
                    Err(e) if is_final(&e) => break Err(e),
                    Err(e) => {
                        model.status = format!("reconnecting... ({})", super::error_chain(&e));
                        opening = Some(reopen(&args.queen, backoff.next_delay()));
                    }
                }
            }
            key = keys.recv() => match key.map(|k| model.key(k)) {
                None => break Err(anyhow::anyhow!("the terminal's input ended")),
                Some(Action::Quit) => break Ok(()),
                Some(Action::Reservations(address)) => {
                    let request = pb::ListReservationsRequest { page_size: 2000, page_token: String::new() };
                    let listed = on_queens(&args.queen, scheduler, |mut c| {
                        let request = request.clone();
                        async move { c.list_reservations(request).await }
                    })
                    .await;
                    match listed {
                        Ok(r) => model.set_reservations(&address, r.reservations),
                        Err(e) => model.status = format!("reservations: {}", super::error_chain(&e)),
                    }
                }
                Some(Action::None) => {}
            },
            _ = redraw.tick() => {}
        }
    };
    ratatui::restore();
    result
}

/// Reads the terminal's keys on a thread of its own (crossterm's reads block) and
/// sends them on a bounded channel; the thread ends when the loop is gone.
fn spawn_key_reader() -> mpsc::Receiver<Key> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        while !tx.is_closed() {
            match event::poll(Duration::from_millis(200)) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(_) => return,
            }
            let Ok(Event::Key(k)) = event::read() else { continue };
            if k.kind != KeyEventKind::Press {
                continue;
            }
            let key = match k.code {
                KeyCode::Char(c) => Key::Char(c),
                KeyCode::Enter => Key::Enter,
                KeyCode::Esc => Key::Esc,
                KeyCode::Backspace => Key::Backspace,
                KeyCode::Up => Key::Up,
                KeyCode::Down => Key::Down,
                _ => continue,
            };
            if tx.blocking_send(key).is_err() {
                return;
            }
        }
    });
    rx
}

/// `queen top`.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Show only hives with this label, KEY=VALUE (press / to change it in the view).
    #[arg(long = "label", value_name = "KEY=VALUE", env = "QUEEN_TOP_LABEL", value_parser = rbee_shared::labels::parse_label)]
    pub label: Option<(String, String)>,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}

impl RunCommand for TopArgs {
    async fn run(self) -> Result<ExitCode> {
        done(run(self).await)
    }
}
