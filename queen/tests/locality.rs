//! Placement where the weights are: three real hives with models directories on the
//! real disk, a real queen, the generated Scheduler client. The model on one busy hive
//! of three draws the placement there; a model on none is placed by load; preloading
//! through the queen moves the weights to RAM (with a load estimate); `Place` with
//! `prefetch` leaves the model fetched and resident on the chosen hive.

mod common;

use std::path::Path;

use common::cli::{args, queen_cli};
use common::scheduling::{GIB, placement, queen_with};
use common::{TestHive, wait_for};
use rbee_hive::test_support::http_files::{FileServer, generated};
use rbee_hive::test_support::model_files::ready_model;
use rbee_proto::v1 as pb;
use rbee_queen::scheduler::SchedulerSettings;

/// The model file size.
const SIZE: usize = 8 << 20;

fn scenario(util: u32) -> String {
    format!(
        "[[gpu]]\nid = \"GPU-0\"\nvram_total = \"24GiB\"\nvram_used = [\"4GiB\"]\nutil_percent = [{util}]\ntemperature_c = [40]\n"
    )
}

async fn hive(id: &str, util: u32, dir: &Path) -> TestHive {
    let mut c = rbee_hive::test_support::config(id, &scenario(util));
    let mut models = rbee_hive::models::ModelsConfig::new(dir);
    models.rescan = std::time::Duration::from_millis(200);
    // Prefetches come from a loopback file server: `--download-allow 127.0.0.1`.
    models.egress = rbee_hive::models::egress::EgressRule::with_loopback();
    c.models = Some(models);
    c.preload.residency_interval = std::time::Duration::from_millis(200);
    TestHive::start_with(c).await
}

fn request(model: &str) -> pb::PlaceRequest {
    pb::PlaceRequest {
        model: model.into(),
        vram_bytes: GIB,
        device_kind: pb::DeviceKind::Cuda as i32,
        dry_run: true,
        ..Default::default()
    }
}

fn model_on<'a>(h: &'a pb::HiveView, id: &str) -> Option<&'a pb::Model> {
    h.capabilities.as_ref()?.models.iter().find(|m| m.id == id)
}

fn resident_share(m: &pb::Model) -> f64 {
    m.resident_bytes.unwrap_or(0) as f64 / m.size_bytes.max(1) as f64
}

#[tokio::test]
async fn place_goes_where_the_weights_are_and_prefetch_makes_them_resident() {
    let dirs: Vec<tempfile::TempDir> =
        (0..3).map(|_| tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()).collect();
    // The holder is the busiest hive: only the weights can draw the placement there.
    ready_model(dirs[2].path(), "held", &[("w.bin", SIZE)]);
    let hives = [
        hive("idle", 5, dirs[0].path()).await,
        hive("calm", 30, dirs[1].path()).await,
        hive("holder", 90, dirs[2].path()).await,
    ];
    let (queen, mut sched) =
        queen_with(hives.iter().map(|h| h.url()).collect(), SchedulerSettings::default()).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "the holder's model measured", |hs| {
        hs.iter().any(|h| model_on(h, "held").is_some_and(|m| m.resident_bytes.is_some()))
    })
    .await;

    let p = placement(sched.place(request("held")).await.unwrap().into_inner());
    assert_eq!(p.hive_id, "holder", "{p:?}");
    assert_eq!(p.weights(), pb::WeightsLocation::Disk, "{p:?}");
    assert_eq!(p.model_bytes, Some(SIZE as u64));
    let p = placement(sched.place(request("nowhere")).await.unwrap().into_inner());
    assert_eq!(p.hive_id, "idle", "a model no hive holds is placed by load: {p:?}");
    assert_eq!(p.weights(), pb::WeightsLocation::Absent);
    assert_eq!(p.estimated_load_ms, None);

    // Preload through the queen twice: the first read times the disk, the second RAM.
    for _ in 0..2 {
        let r = sched
            .preload_model(pb::ScheduleCacheRequest {
                model_id: "held".into(),
                labels: [("zone".to_owned(), "test".to_owned())].into(),
                wait: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.results.len(), 1, "only the holder holds it: {r:?}");
        assert_eq!(r.results[0].hive_id, "holder");
        assert!(
            r.results[0].error.is_none() && r.results[0].resident_bytes >= SIZE as u64 * 95 / 100,
            "{r:?}"
        );
    }
    wait_for(&mut fleet, "the holder's model in RAM, with a RAM read speed", |hs| {
        hs.iter().any(|h| {
            model_on(h, "held").is_some_and(|m| resident_share(m) >= 0.95)
                && h.latest_sample
                    .as_ref()
                    .and_then(|s| s.read_bandwidth)
                    .and_then(|b| b.ram_bytes_per_s)
                    .is_some()
        })
    })
    .await;
    let p = placement(sched.place(request("held")).await.unwrap().into_inner());
    assert_eq!((p.hive_id.as_str(), p.weights()), ("holder", pb::WeightsLocation::Ram), "{p:?}");
    assert!(p.estimated_load_ms.is_some(), "a measured RAM speed gives an estimate: {p:?}");

    // Prefetch: reserve on the least loaded hive, which fetches and preloads.
    let server = FileServer::start().await;
    let url = server.add("p.bin", generated(SIZE, 5));
    let p = placement(
        sched
            .place(pb::PlaceRequest {
                dry_run: false,
                prefetch: true,
                prefetch_from: Some(url),
                ..request("fresh")
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .clone();
    assert_eq!(p.hive_id, "idle", "{p:?}");
    assert!(p.prefetching && !p.reservation_id.is_empty(), "{p:?}");
    wait_for(&mut fleet, "the prefetched model ready and resident on idle", |hs| {
        hs.iter().any(|h| {
            h.hive_id == "idle"
                && model_on(h, "fresh")
                    .is_some_and(|m| m.state() == pb::ModelState::Ready && resident_share(m) >= 0.95)
        })
    })
    .await;

    // A bad source is refused before anything is reserved.
    let e = sched
        .place(pb::PlaceRequest {
            prefetch: true,
            prefetch_from: Some("ftp://x/y".into()),
            ..request("fresh")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // So is a model id a hive would refuse (or that names the hive's own directories):
    // INVALID_ARGUMENT up front, not OK with a prefetch that fails in the background.
    for bad in ["../x", ".partial", "org/.trash"] {
        let e = sched
            .place(pb::PlaceRequest {
                prefetch: true,
                prefetch_from: Some(server.url("p.bin")),
                ..request(bad)
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("model"), "{bad}: {}", e.message());
    }
    queen.stop().await;
}

#[tokio::test]
async fn queen_preload_evict_and_models_show_the_resident_share() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    ready_model(dir.path(), "held", &[("w.bin", SIZE)]);
    let h = hive("cli-hive", 5, dir.path()).await;
    let (queen, _sched) = queen_with(vec![h.url()], SchedulerSettings::default()).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "the model measured", |hs| {
        hs.iter().any(|h| model_on(h, "held").is_some_and(|m| m.resident_bytes.is_some()))
    })
    .await;
    let q = queen.url();

    let (ok, out, err) = queen_cli(args(&["preload", "held", "--hive", "cli-hive", "--queen", &q])).await;
    assert!(ok && out.contains("cli-hive: held 8.0 MiB resident (100%)"), "{out}{err}");
    wait_for(&mut fleet, "the model resident", |hs| {
        hs.iter().any(|h| model_on(h, "held").is_some_and(|m| resident_share(m) >= 0.95))
    })
    .await;
    let (ok, out, err) = queen_cli(args(&["models", "--queen", &q])).await;
    assert!(ok && out.contains("RESIDENT") && out.contains("100%"), "{out}{err}");

    let (ok, out, err) = queen_cli(args(&["evict", "held", "--label", "zone=test", "--queen", &q])).await;
    assert!(ok && out.contains("cli-hive: held 0 B resident (0%)"), "{out}{err}");

    let (ok, out, err) = queen_cli(args(&["preload", "nope", "--hive", "cli-hive", "--queen", &q])).await;
    assert!(!ok && err.contains("model nope is not in the catalog"), "{out}{err}");
    let (ok, _, err) = queen_cli(args(&["preload", "held", "--queen", &q])).await;
    assert!(!ok && err.contains("--hive"), "{err}");
    queen.stop().await;
}
