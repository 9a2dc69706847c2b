//! The fleet simulator at a few hundred hives against a real queen, with faults: kill
//! a fraction (they go lost), silence a fraction with the connection held (stale,
//! then lost), restart a fraction with a new epoch (restarted, online again), and
//! hot-plug a GPU into a fraction (their capabilities change). Everyone else stays
//! online. Set RBEE_SCALE_HIVES to change the size (default 300).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::TestQueen;
use rbee_hive::swarm::{Action, Amount, Swarm, SwarmConfig};
use rbee_proto::v1 as pb;
use rbee_proto::v1::fleet_client::FleetClient;
use rbee_queen::QueenConfig;
use rbee_queen::fleet::{FleetSettings, Thresholds};
use rbee_queen::link::LinkSettings;
use tokio::time::Instant;
use tonic::transport::Channel;

/// How long the whole fleet may take to come online, and each fault to show.
const FLEET_DEADLINE: Duration = Duration::from_secs(40);

fn hives() -> usize {
    std::env::var("RBEE_SCALE_HIVES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}

/// Every hive the queen lists, all pages, by hive id.
async fn fleet(client: &mut FleetClient<Channel>) -> HashMap<String, pb::HiveView> {
    let mut all = HashMap::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_hives(pb::ListHivesRequest { page_size: 1000, page_token: token })
            .await
            .expect("ListHives")
            .into_inner();
        all.extend(page.hives.into_iter().map(|h| (h.hive_id.clone(), h)));
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

/// Polls the fleet until `done` says how many hives are still wrong is 0, or fails
/// with that count and one example after the deadline.
async fn until(
    client: &mut FleetClient<Channel>,
    what: &str,
    mut wrong: impl FnMut(&HashMap<String, pb::HiveView>) -> Vec<String>,
) -> Duration {
    let start = Instant::now();
    loop {
        let view = fleet(client).await;
        let bad = wrong(&view);
        if bad.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < FLEET_DEADLINE,
            "{what}: {} hives still wrong after {FLEET_DEADLINE:?}, e.g. {:?}",
            bad.len(),
            view.get(&bad[0])
        );
        // ListHives of hundreds of full views is not free: look once a second.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn gpus(h: &pb::HiveView) -> usize {
    h.capabilities.as_ref().map_or(0, |c| c.gpus.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_with_faults_comes_out_right() {
    let n = hives();
    let swarm_config = SwarmConfig {
        count: n,
        gpus: 2,
        cores: 4,
        id_prefix: "scale".into(),
        sample_interval: Duration::from_secs(1),
        ..SwarmConfig::default()
    };
    let started = Instant::now();
    let mut swarm = Swarm::start(swarm_config).await.expect("the swarm starts");
    let settings = FleetSettings {
        // The test machine's own load must not make hives degraded.
        thresholds: Thresholds { cpu_degraded_percent: 101.0, ..Default::default() },
        sample_interval: Duration::from_secs(1),
        stale_after_missed: 3,
        lost_timeout: Duration::from_secs(5),
        ..FleetSettings::default()
    };
    let link = LinkSettings {
        connect_timeout: Duration::from_secs(3),
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        ..LinkSettings::default()
    };
    let queen = TestQueen::start_with(
        QueenConfig { link, ..QueenConfig::new(settings, swarm.urls()) },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let mut client = queen.client().await.max_decoding_message_size(64 << 20);
    let took = until(&mut client, "all online", |v| {
        let mut bad: Vec<String> =
            v.values().filter(|h| h.state() != pb::HiveState::Online).map(|h| h.hive_id.clone()).collect();
        if v.len() < n {
            bad.push(format!("only {} of {n} listed", v.len()));
        }
        bad
    })
    .await;
    eprintln!("{n} hives online {took:?} after the queen started ({:?} with the swarm)", started.elapsed());
    let before = fleet(&mut client).await;

    let killed = swarm.apply(Action::Kill, Amount::Fraction(0.1)).await.unwrap();
    let silenced = swarm.apply(Action::Silence, Amount::Fraction(0.1)).await.unwrap();
    let restarted = swarm.apply(Action::Restart, Amount::Fraction(0.1)).await.unwrap();
    let plugged = swarm.apply(Action::HotPlug, Amount::Fraction(0.1)).await.unwrap();
    assert_eq!(killed.len(), n / 10);
    let id = |i: &usize| swarm.id(*i).to_owned();
    let (killed, silenced, restarted, plugged): (Vec<String>, Vec<String>, Vec<String>, Vec<String>) = (
        killed.iter().map(id).collect(),
        silenced.iter().map(id).collect(),
        restarted.iter().map(id).collect(),
        plugged.iter().map(id).collect(),
    );

    let took = until(&mut client, "the view after the faults", |v| {
        let state = |id: &str| v.get(id).map(|h| h.state());
        let mut bad = Vec::new();
        for id in &killed {
            if state(id) != Some(pb::HiveState::Lost) {
                bad.push(id.clone());
            }
        }
        for id in &restarted {
            let h = &v[id];
            let old = before[id].identity.as_ref().map(|i| i.epoch.clone());
            if h.state() != pb::HiveState::Online || h.identity.as_ref().map(|i| i.epoch.clone()) == old {
                bad.push(id.clone());
            }
        }
        for id in &plugged {
            if gpus(&v[id]) != 3 || v[id].state() != pb::HiveState::Online {
                bad.push(id.clone());
            }
        }
        for (id, h) in v {
            let touched = killed.contains(id) || silenced.contains(id) || restarted.contains(id);
            if !touched && h.state() != pb::HiveState::Online {
                bad.push(id.clone());
            }
        }
        bad
    })
    .await;
    eprintln!("kills lost, restarts and hot-plugs seen within {took:?}");
    let counters = fleet(&mut client).await;
    for id in &restarted {
        assert!(counters[id].counters.as_ref().unwrap().restarts >= 1, "{id} counted its restart");
    }

    // Silence holds the connection: the hive goes stale (3 missed samples), then lost
    // after the lost timeout, for want of samples (it then reconnects, and the cycle
    // repeats while it stays silent).
    let mut seen_stale = std::collections::HashSet::new();
    let took = until(&mut client, "silenced hives stale, then lost for want of samples", |v| {
        let mut bad = Vec::new();
        for id in &silenced {
            let h = &v[id];
            if h.state() == pb::HiveState::Stale {
                seen_stale.insert(id.clone());
            }
            let starved = h.last_error.as_deref().is_some_and(|e| e.contains("no sample applied"));
            if !starved || h.state() == pb::HiveState::Online && h.sample_age_ms.is_some_and(|a| a < 1500) {
                bad.push(id.clone());
            }
        }
        bad
    })
    .await;
    assert!(!seen_stale.is_empty(), "silenced hives were seen stale on the way");
    eprintln!("silenced hives lost for want of samples within {took:?} more");
    drop(client);
    queen.stop().await;
    swarm.stop().await;
}
