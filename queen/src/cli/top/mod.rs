//! `queen top`: a live full-screen view of the fleet, in the spirit of nvitop and k9s.
//! It follows `WatchFleet` (with samples once a second) rather than polling; the
//! reservations of the hive in the detail pane are fetched when the pane opens.
//!
//! - [`model`]: events reduced into rows, sorting, filtering, keys (plain Rust).
//! - [`view`]: drawing the model with ratatui.
//! - here: the terminal, the key reader thread and the event loop.

pub mod model;
pub mod view;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use rbee_proto::v1 as pb;
use tokio::sync::mpsc;

use self::model::{Action, Key, Model};
use super::args::TopArgs;
use super::client::{connect, connect_scheduler, rpc_error};

/// How often the screen is redrawn without news (sample ages keep counting).
const REDRAW: Duration = Duration::from_secs(1);

/// Samples asked of the watch.
const SAMPLE_INTERVAL_MS: u32 = 1000;

/// Runs the view until `q`.
pub async fn run(args: TopArgs) -> Result<()> {
    let (mut fleet, url) = connect(&args.queen).await?;
    let (mut scheduler, _) = connect_scheduler(&args.queen).await?;
    let mut watch = fleet
        .watch_fleet(pb::WatchFleetRequest { sample_interval_ms: Some(SAMPLE_INTERVAL_MS) })
        .await
        .map_err(|s| rpc_error(&url, s))?
        .into_inner();
    let mut model = Model::new(args.label);
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let mut keys = spawn_key_reader();
    let mut redraw = tokio::time::interval(REDRAW);
    let result = loop {
        if let Err(e) = terminal.draw(|f| view::draw(f, &model, Instant::now())) {
            break Err(anyhow::Error::from(e).context("cannot draw"));
        }
        tokio::select! {
            message = watch.message() => match message {
                Ok(Some(event)) => model.apply(event, Instant::now()),
                Ok(None) => break Err(anyhow::anyhow!("the queen at {url} ended the watch")),
                Err(s) => break Err(rpc_error(&url, s)),
            },
            key = keys.recv() => match key.map(|k| model.key(k)) {
                None => break Err(anyhow::anyhow!("the terminal's input ended")),
                Some(Action::Quit) => break Ok(()),
                Some(Action::Reservations(address)) => {
                    match scheduler.list_reservations(pb::ListReservationsRequest { page_size: 2000, page_token: String::new() }).await {
                        Ok(r) => model.set_reservations(&address, r.into_inner().reservations),
                        Err(s) => model.status = format!("reservations: {}", s.message()),
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
