//! Transport security and hostile input, end to end: mutual TLS between queen and
//! hive, bearer tokens on the queen's API, size limits, spoofing, safe defaults.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use rbee_proto::v1 as pb;
use rbee_proto::v1::fleet_client::FleetClient;
use rbee_proto::v1::hive_client::HiveClient;
use rbee_proto::v1::scheduler_client::SchedulerClient;
use rbee_queen::QueenConfig;
use rbee_queen::api::auth::Tokens;
use rbee_queen::link::HiveTls;
use tonic::transport::{Channel, Endpoint};

const READ: &str = "read-token-aaaaaaaaaaaaaaaa";
const WRITE: &str = "write-token-bbbbbbbbbbbbbbbb";

/// A development PKI as `queen certs` makes it: hive certificates for `localhost` and
/// for `127.0.0.1` (each names only its host, as SAN and CN).
fn certs(dir: &Path) {
    rbee_shared::certs::generate(
        dir,
        &["localhost".into(), "127.0.0.1".into()],
        &["localhost".into(), "127.0.0.1".into()],
    )
    .unwrap();
}

/// A mutual-TLS hive with id `id`, serving the certificate made for `localhost`.
async fn tls_hive(dir: &Path, id: &str) -> TestHive {
    tls_hive_with_cert(dir, id, "localhost").await
}

/// A mutual-TLS hive with id `id`, serving the certificate made for `cert_name`.
async fn tls_hive_with_cert(dir: &Path, id: &str, cert_name: &str) -> TestHive {
    let mut config = hive_config(id, ONE_GPU, None);
    config.tls = Some(
        rbee_shared::tls::server_config(
            &dir.join(format!("hive-{cert_name}.pem")),
            &dir.join(format!("hive-{cert_name}.key")),
            Some(&dir.join("queen-ca.pem")),
        )
        .unwrap(),
    );
    TestHive::start_with(config).await
}

fn secure_queen_config(dir: &Path, hives: Vec<String>) -> QueenConfig {
    let mut link = fast_link();
    link.hive_tls = Some(
        HiveTls::from_pem_files(
            &dir.join("hive-ca.pem"),
            Some((&dir.join("queen.pem"), &dir.join("queen.key"))),
        )
        .unwrap(),
    );
    QueenConfig {
        tls: Some(
            rbee_shared::tls::server_config(&dir.join("queen.pem"), &dir.join("queen.key"), None).unwrap(),
        ),
        tokens: Tokens::new(Some(READ), Some(WRITE)),
        link,
        ..fast_config(hives)
    }
}

async fn tls_channel(
    url: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tls_config(rbee_shared::tls::client_config(ca, identity).unwrap())
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
}

/// True when the hive refuses a client: at the TLS handshake, or on its first call.
async fn hive_refuses(channel: Result<Channel, tonic::transport::Error>) -> bool {
    match channel {
        Err(_) => true,
        Ok(ch) => HiveClient::new(ch).discover(pb::DiscoverRequest {}).await.is_err(),
    }
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    rbee_shared::bearer::authorize(&mut r, token).unwrap();
    r
}

#[tokio::test]
async fn a_mutual_tls_fleet_works_and_plaintext_or_strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    // The hive id is the name its certificate carries (ids are bound to certificates).
    let hive = tls_hive(dir.path(), "localhost").await;
    let hive_url = format!("https://localhost:{}", hive.addr.port());
    let queen = TestQueen::start_with(
        secure_queen_config(dir.path(), vec![hive_url.clone()]),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let queen_url = format!("https://localhost:{}", queen.addr.port());

    // The queen reaches the hive over mutual TLS; a client reaches the queen over TLS with a token.
    let channel = tls_channel(&queen_url, &dir.path().join("queen-ca.pem"), None).await.unwrap();
    let mut fleet = FleetClient::new(channel);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let hs = fleet
            .list_hives(with_token(pb::ListHivesRequest::default(), READ))
            .await
            .unwrap()
            .into_inner()
            .hives;
        if hs.iter().any(|h| h.state() == pb::HiveState::Online && h.hive_id == "localhost") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the TLS hive never came online: {hs:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Plaintext against TLS ports fails (at the handshake or on the first call).
    let plain =
        Endpoint::from_shared(format!("http://127.0.0.1:{}", hive.addr.port())).unwrap().connect().await;
    assert!(hive_refuses(plain).await, "plaintext Discover on a TLS port");
    let plain =
        Endpoint::from_shared(format!("http://127.0.0.1:{}", queen.addr.port())).unwrap().connect().await;
    let refused = match plain {
        Err(_) => true,
        Ok(ch) => {
            FleetClient::new(ch).list_hives(with_token(pb::ListHivesRequest::default(), READ)).await.is_err()
        }
    };
    assert!(refused, "plaintext on the queen's TLS port");

    // A client without a certificate, or with one from another CA, is refused by the hive.
    let hive_ca = dir.path().join("hive-ca.pem");
    assert!(hive_refuses(tls_channel(&hive_url, &hive_ca, None).await).await, "no client certificate");
    let other = tempfile::tempdir().unwrap();
    certs(other.path());
    let stranger = tls_channel(
        &hive_url,
        &hive_ca,
        Some((&other.path().join("queen.pem"), &other.path().join("queen.key"))),
    )
    .await;
    assert!(hive_refuses(stranger).await, "a certificate from another CA");
    // The right queen certificate is accepted.
    let ok = tls_channel(
        &hive_url,
        &hive_ca,
        Some((&dir.path().join("queen.pem"), &dir.path().join("queen.key"))),
    )
    .await
    .unwrap();
    assert!(HiveClient::new(ok).discover(pb::DiscoverRequest {}).await.is_ok());
}

#[tokio::test]
async fn the_queen_checks_the_hive_certificate_names_the_host_it_dials() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let hive = tls_hive(dir.path(), "named").await;
    // The hive's certificate names "localhost" only; dialing 127.0.0.1 must fail verification.
    let by_ip = format!("https://127.0.0.1:{}", hive.addr.port());
    let queen = TestQueen::start_with(
        secure_queen_config(dir.path(), vec![by_ip.clone()]),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let ch = tls_channel(
        &format!("https://localhost:{}", queen.addr.port()),
        &dir.path().join("queen-ca.pem"),
        None,
    )
    .await
    .unwrap();
    let mut fleet = FleetClient::new(ch);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let h = fleet
            .get_hive(with_token(pb::GetHiveRequest { hive: by_ip.clone() }, READ))
            .await
            .unwrap()
            .into_inner();
        if h.state() == pb::HiveState::Lost && h.last_error.is_some() {
            assert!(h.hive_id.is_empty(), "never discovered");
            break;
        }
        assert_ne!(h.state(), pb::HiveState::Online, "a hive whose certificate does not name it came online");
        assert!(tokio::time::Instant::now() < deadline, "no verdict: {h:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn with_mutual_tls_a_hive_cannot_claim_an_id_its_certificate_lacks() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    // The impostor holds a valid hive certificate, but for 127.0.0.1, and claims "localhost".
    let impostor = tls_hive_with_cert(dir.path(), "localhost", "127.0.0.1").await;
    let impostor_url = format!("https://127.0.0.1:{}", impostor.addr.port());
    let real = tls_hive(dir.path(), "localhost").await;
    let real_url = format!("https://localhost:{}", real.addr.port());
    let mut config = secure_queen_config(dir.path(), vec![impostor_url.clone()]);
    config.tls = None;
    config.tokens = Tokens::default();
    let queen = TestQueen::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let mut fleet = queen.client().await;

    // Alone and first, the impostor is still refused, with the reason in ListHives.
    let hives = wait_for(&mut fleet, "a verdict on the impostor", |hs| {
        hs.iter().any(|h| h.last_error.is_some() || online(h))
    })
    .await;
    let shown = &hives[0];
    assert_ne!(shown.state(), pb::HiveState::Online, "an impostor came online: {shown:#?}");
    let reason = shown.last_error.as_deref().unwrap_or_default();
    assert!(reason.contains("hive id \"localhost\" is not in the hive's TLS certificate"), "{reason}");
    assert!(reason.contains("\"127.0.0.1\""), "names what the certificate carries: {reason}");
    assert!(shown.health_reasons.iter().any(|r| r.contains("TLS certificate")), "{shown:#?}");

    // The hive whose certificate carries the id gets it.
    fleet.add_hive(pb::AddHiveRequest { address: real_url.clone() }).await.unwrap();
    let hives = wait_for(&mut fleet, "the real hive online", |hs| {
        hs.iter().any(|h| h.address == real_url && online(h) && h.hive_id == "localhost")
    })
    .await;
    let impostor_view = hives.iter().find(|h| h.address == impostor_url).unwrap();
    assert!(impostor_view.hive_id.is_empty(), "the impostor never held the id: {impostor_view:#?}");
}

#[tokio::test]
async fn tokens_gate_the_api_by_role() {
    let hive = TestHive::start_named("tok", ONE_GPU).await;
    let config =
        QueenConfig { tokens: Tokens::new(Some(READ), Some(WRITE)), ..fast_config(vec![hive.url()]) };
    let queen = TestQueen::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let ch = Endpoint::from_shared(queen.url()).unwrap().connect().await.unwrap();
    let mut fleet = FleetClient::new(ch.clone());
    let mut sched = SchedulerClient::new(ch);

    let none = fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated);
    let wrong = fleet
        .list_hives(with_token(pb::ListHivesRequest::default(), "wrong-token-cccccccccccccc"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert!(fleet.list_hives(with_token(pb::ListHivesRequest::default(), READ)).await.is_ok());

    let place = pb::PlaceRequest { vram_bytes: 1 << 30, ..Default::default() };
    let denied = sched.place(with_token(place.clone(), READ)).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(denied.message().contains("write token"), "{}", denied.message());
    assert!(sched.place(with_token(place, WRITE)).await.is_ok(), "the write token places");
    let remove =
        fleet.remove_hive(with_token(pb::RemoveHiveRequest { hive: "tok".into() }, READ)).await.unwrap_err();
    assert_eq!(remove.code(), tonic::Code::PermissionDenied);
    let announce = fleet
        .announce(pb::AnnounceRequest { address: "http://127.0.0.1:9".into(), hive_id: String::new() })
        .await
        .unwrap_err();
    assert_eq!(announce.code(), tonic::Code::Unauthenticated);

    // Health stays open (it reveals nothing about the fleet).
    let ch = Endpoint::from_shared(queen.url()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    assert!(health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_ok());
}

#[tokio::test]
async fn oversized_messages_are_refused_and_the_server_keeps_serving() {
    let queen = TestQueen::start(vec![]).await;
    let mut fleet = queen.client().await;
    let huge = pb::AddHiveRequest { address: "x".repeat(200 * 1024) };
    let err = fleet.add_hive(huge).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(fleet.list_hives(pb::ListHivesRequest::default()).await.is_ok());
    let long = pb::AddHiveRequest { address: format!("http://{}:1", "a".repeat(300)) };
    let err = fleet.add_hive(long).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn an_announce_that_claims_another_hives_id_is_refused() {
    let real = TestHive::start_named("the-real-one", ONE_GPU).await;
    let queen = TestQueen::start(vec![real.url()]).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "online", |hs| hs.iter().all(online)).await;
    let spoof = fleet
        .announce(pb::AnnounceRequest {
            address: "http://127.0.0.1:9".into(),
            hive_id: "the-real-one".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(spoof.code(), tonic::Code::PermissionDenied);
    assert!(spoof.message().contains("already managed"), "{}", spoof.message());
    assert_eq!(fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives.len(), 1);
}

#[tokio::test]
async fn announces_are_rate_limited() {
    let queen = TestQueen::start(vec![]).await;
    let mut fleet = queen.client().await;
    let mut limited = false;
    for i in 0..200 {
        let r = fleet
            .announce(pb::AnnounceRequest {
                address: format!("http://127.0.0.1:{}", 10_000 + i),
                hive_id: String::new(),
            })
            .await;
        if let Err(s) = r {
            assert_eq!(s.code(), tonic::Code::ResourceExhausted);
            limited = true;
            break;
        }
    }
    assert!(limited, "200 announces in a burst were all accepted");
}

#[test]
fn binaries_refuse_a_public_bind_without_auth() {
    let queen = env!("CARGO_BIN_EXE_queen");
    let out = Command::new(queen)
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("QUEEN_READ_TOKEN")
        .env_remove("QUEEN_WRITE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on 0.0.0.0:0 without TLS and tokens"), "{err}");
}
