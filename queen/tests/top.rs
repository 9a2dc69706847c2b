//! `queen top`: the model (WatchFleet events reduced into rows, sorting, filtering,
//! keys) as plain functions; the drawing on ratatui's TestBackend; and the real binary
//! in tmux against a real queen and hive, as a person would use it.

mod common;

use std::time::{Duration, Instant};

use common::{TestHive, TestQueen, online, wait_for};
use rbee_hive::test_support::{DEADLINE, ONE_GPU, external_tool};
use rbee_proto::v1 as pb;
use rbee_queen::cli::top::model::{Action, Key, Model, SortKey};
use rbee_queen::cli::top::view;

const GIB: u64 = 1 << 30;

fn view_of(address: &str, id: &str, zone: &str, cpu: f32, used: u64) -> pb::HiveView {
    pb::HiveView {
        address: address.into(),
        hive_id: id.into(),
        state: pb::HiveState::Online as i32,
        health: pb::Health::Healthy as i32,
        capabilities: Some(pb::Capabilities {
            gpus: vec![pb::GpuDevice {
                id: format!("GPU-{id}"),
                index: 0,
                name: "Sim".into(),
                vram_total_bytes: 80 * GIB,
                ..Default::default()
            }],
            labels: [("zone".to_owned(), zone.to_owned())].into(),
            ..Default::default()
        }),
        latest_sample: Some(pb::Sample {
            cpu_percent: Some(cpu),
            ram_total_bytes: 100,
            ram_used_bytes: 50,
            gpus: vec![pb::GpuSample {
                id: format!("GPU-{id}"),
                index: 0,
                vram_used_bytes: Some(used),
                ..Default::default()
            }],
            ..Default::default()
        }),
        sample_age_ms: Some(200),
        ..Default::default()
    }
}

fn event(e: pb::fleet_event::Event) -> pb::FleetEvent {
    pb::FleetEvent { seq: 1, queen_time_unix_ms: 0, event: Some(e), ..Default::default() }
}

fn fleet_model() -> Model {
    let mut m = Model::new(None);
    m.apply(
        event(pb::fleet_event::Event::Snapshot(pb::FleetSnapshot {
            hives: vec![
                view_of("http://a:1", "alpha", "eu", 10.0, 70 * GIB),
                view_of("http://b:1", "beta", "us", 90.0, 10 * GIB),
            ],
            coalesced: false,
            more: false,
            reset: false,
        })),
        Instant::now(),
    );
    m
}

fn names(m: &Model) -> Vec<String> {
    m.visible().iter().map(|r| r.name().to_owned()).collect()
}

#[test]
fn a_snapshot_in_parts_builds_the_whole_fleet() {
    let mut m = fleet_model();
    let part = |hives: Vec<pb::HiveView>, more: bool| {
        event(pb::fleet_event::Event::Snapshot(pb::FleetSnapshot {
            hives,
            coalesced: true,
            more,
            reset: false,
        }))
    };
    m.apply(part(vec![view_of("http://c:1", "gamma", "eu", 1.0, GIB)], true), Instant::now());
    assert_eq!(names(&m), ["gamma"], "the first part replaces the rows");
    m.apply(part(vec![view_of("http://d:1", "delta", "eu", 1.0, GIB)], false), Instant::now());
    assert_eq!(names(&m), ["delta", "gamma"], "the next parts add to them");
    m.apply(part(vec![view_of("http://a:1", "alpha", "eu", 1.0, GIB)], false), Instant::now());
    assert_eq!(names(&m), ["alpha"], "a new snapshot replaces them again");
}

#[test]
fn events_sorting_and_the_label_filter() {
    let mut m = fleet_model();
    assert_eq!(names(&m), ["alpha", "beta"]);
    m.key(Key::Char('s'));
    assert_eq!(m.sort, SortKey::State);
    m.apply(
        event(pb::fleet_event::Event::StateChanged(pb::HiveStateChanged {
            address: "http://b:1".into(),
            hive_id: "beta".into(),
            from: pb::HiveState::Online as i32,
            to: pb::HiveState::Lost as i32,
            reason: "gone".into(),
        })),
        Instant::now(),
    );
    assert_eq!(names(&m), ["beta", "alpha"], "lost hives first");
    m.key(Key::Char('s'));
    m.key(Key::Char('s'));
    assert_eq!(m.sort, SortKey::Cpu);
    assert_eq!(names(&m), ["beta", "alpha"], "busiest first");
    m.key(Key::Char('s'));
    m.key(Key::Char('s'));
    assert_eq!(m.sort, SortKey::VramFree);
    assert_eq!(names(&m), ["alpha", "beta"], "least VRAM free first");

    for c in "/zone=eu".chars() {
        m.key(Key::Char(c));
    }
    assert_eq!(m.key(Key::Enter), Action::None);
    assert_eq!(names(&m), ["alpha"]);
    for c in "/nonsense".chars() {
        m.key(Key::Char(c));
    }
    m.key(Key::Enter);
    assert!(m.status.contains("bad filter"), "{}", m.status);
    assert_eq!(names(&m), ["alpha"], "a bad filter keeps the last good one");
    m.key(Key::Char('c'));
    assert_eq!(names(&m).len(), 2);

    m.apply(
        event(pb::fleet_event::Event::HiveRemoved(pb::HiveRemoved {
            address: "http://a:1".into(),
            hive_id: "alpha".into(),
        })),
        Instant::now(),
    );
    assert_eq!(names(&m), ["beta"]);
    assert_eq!(m.selected.as_deref(), Some("http://b:1"), "the selection moves to a hive still shown");
}

#[test]
fn keys_select_open_the_detail_pane_and_quit() {
    let mut m = fleet_model();
    assert_eq!(m.selected.as_deref(), Some("http://a:1"));
    m.key(Key::Down);
    assert_eq!(m.selected.as_deref(), Some("http://b:1"));
    m.key(Key::Down);
    assert_eq!(m.selected.as_deref(), Some("http://b:1"), "stays on the last row");
    assert_eq!(m.key(Key::Enter), Action::Reservations("http://b:1".into()));
    assert!(m.detail);
    assert_eq!(m.key(Key::Esc), Action::None, "Esc closes the pane first");
    assert!(!m.detail);
    assert_eq!(m.key(Key::Char('q')), Action::Quit);
}

#[test]
fn sample_ages_count_on_between_samples() {
    let m = fleet_model();
    let row = m.visible()[0].clone();
    let later = Instant::now() + Duration::from_secs(3);
    let age = row.age(later).unwrap();
    assert!(age >= Duration::from_millis(3200) && age < Duration::from_secs(4), "{age:?}");
}

fn screen(m: &Model, width: u16, height: u16) -> String {
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| view::draw(f, m, Instant::now())).unwrap();
    let buffer = terminal.backend().buffer().clone();
    (0..height)
        .map(|y| (0..width).map(|x| buffer[(x, y)].symbol().to_owned()).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_table_and_the_detail_pane_are_drawn() {
    let mut m = fleet_model();
    let text = screen(&m, 140, 30);
    assert!(text.contains("2 hives"), "{text}");
    assert!(text.contains("alpha") && text.contains("beta"), "{text}");
    assert!(text.contains("online") && text.contains("healthy"), "{text}");
    assert!(text.contains("90%"), "beta's CPU: {text}");
    // alpha uses 70 of 80 GiB: 9 of 10 cells filled; beta 10 of 80: 1 cell.
    assert!(text.contains("[█████████░]80.0 GiB"), "{text}");
    assert!(text.contains("[█░░░░░░░░░]80.0 GiB"), "{text}");
    m.key(Key::Enter);
    m.set_reservations(
        "http://a:1",
        vec![pb::Reservation {
            id: "r-1".into(),
            address: "http://a:1".into(),
            device_id: "GPU-alpha".into(),
            model: "llama".into(),
            bytes: 8 * GIB,
            ..Default::default()
        }],
    );
    let text = screen(&m, 140, 30);
    assert!(text.contains("detail"), "{text}");
    assert!(text.contains("reservation r-1 llama 8.0 GiB on GPU-alpha"), "{text}");
    assert!(text.contains("labels: zone=eu"), "{text}");
}

/// A tmux server of this test's own, killed when dropped.
struct Tmux {
    tool: std::path::PathBuf,
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(&self.tool).arg("-L").arg(&self.socket).args(args).output().unwrap()
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    async fn until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let screen = self.capture();
            if done(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "the screen never showed {what}:\n{screen}");
            // tmux tells nobody when the pane changes.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[tokio::test]
async fn queen_top_in_tmux_follows_the_fleet_and_quits_on_q() {
    let Some(tool) = external_tool("tmux", "apt-get install tmux") else { return };
    let hive = TestHive::start_named("top-hive", ONE_GPU).await;
    let queen = TestQueen::start(vec![hive.url()]).await;
    let mut client = queen.client().await;
    wait_for(&mut client, "the hive online", |hs| hs.iter().all(online)).await;

    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    let tmux = Tmux { tool, socket: format!("rbee-top-{}", uuid::Uuid::new_v4()) };
    let command = format!(
        "{} top --queen {} 2>{}; echo exit=$? > {}",
        env!("CARGO_BIN_EXE_queen"),
        queen.url(),
        dir.path().join("stderr").display(),
        status.display()
    );
    let out = tmux.run(&["new-session", "-d", "-s", "top", "-x", "160", "-y", "40", &command]);
    assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));

    tmux.until("top-hive online", |s| s.contains("top-hive") && s.contains("online")).await;
    hive.kill().await;
    tmux.until("top-hive lost", |s| s.lines().any(|l| l.contains("top-hive") && l.contains("lost"))).await;

    tmux.run(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + DEADLINE;
    let said = loop {
        if let Ok(s) = std::fs::read_to_string(&status)
            && s.ends_with('\n')
        {
            break s;
        }
        assert!(Instant::now() < deadline, "queen top did not exit after q:\n{}", tmux.capture());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    assert_eq!(said.trim(), "exit=0", "stderr: {stderr}");
    queen.stop().await;
}

/// `queen top` lives through a restart of its queen: the view stays up and says
/// "reconnecting...", then follows the queen that is back on the same address (its
/// snapshot shows the hive again), and still quits on q with exit 0.
#[tokio::test]
async fn queen_top_in_tmux_reconnects_when_the_queen_restarts() {
    let Some(tool) = external_tool("tmux", "apt-get install tmux") else { return };
    let hive = TestHive::start_named("again-hive", ONE_GPU).await;
    let queen = TestQueen::start(vec![hive.url()]).await;
    let addr = queen.addr;
    let mut client = queen.client().await;
    wait_for(&mut client, "the hive online", |hs| hs.iter().all(online)).await;
    drop(client);

    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    let tmux = Tmux { tool, socket: format!("rbee-top-{}", uuid::Uuid::new_v4()) };
    let command = format!(
        "{} top --queen {} 2>{}; echo exit=$? > {}",
        env!("CARGO_BIN_EXE_queen"),
        queen.url(),
        dir.path().join("stderr").display(),
        status.display()
    );
    let out = tmux.run(&["new-session", "-d", "-s", "top", "-x", "160", "-y", "40", &command]);
    assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
    tmux.until("1 hive, followed", |s| {
        s.contains("again-hive") && s.contains("following the fleet (1 hive)")
    })
    .await;

    queen.stop().await;
    tmux.until("reconnecting", |s| s.contains("reconnecting...")).await;
    assert!(!status.exists(), "queen top exited when the queen stopped:\n{}", tmux.capture());

    let queen = TestQueen::start_with(common::fast_config(vec![hive.url()]), addr).await;
    let screen = tmux
        .until("the fleet followed again", |s| {
            s.contains("following the fleet") && !s.contains("reconnecting")
        })
        .await;
    assert!(screen.contains("again-hive"), "{screen}");
    assert!(!screen.contains("1 hives"), "{screen}");

    tmux.run(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + DEADLINE;
    let said = loop {
        if let Ok(s) = std::fs::read_to_string(&status)
            && s.ends_with('\n')
        {
            break s;
        }
        assert!(Instant::now() < deadline, "queen top did not exit after q:\n{}", tmux.capture());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    assert_eq!(said.trim(), "exit=0", "stderr: {stderr}");
    queen.stop().await;
}
