//! The queen's network edges, end to end: which addresses a client can make it dial,
//! what a failed dial shows, one hive per address however it is spelt, what reflection
//! lists, how an ordinary CLI error looks, and small-reply latency on a reused connection.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rbee_proto::v1 as pb;
use rbee_queen::QueenConfig;
use rbee_queen::admission::{AdmissionSettings, AllowList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Text that only the dialed target knows; it must never reach a queen client.
const SECRET: &str = "SECRET-METADATA-iam-role-credentials-0123456789";

fn allow_ten_only(hives: Vec<String>) -> QueenConfig {
    QueenConfig {
        admission: AdmissionSettings {
            allow: AllowList::new(vec!["10.0.0.0/8".parse().unwrap()]),
            ..AdmissionSettings::default()
        },
        ..fast_config(hives)
    }
}

#[tokio::test]
async fn add_hive_outside_the_allow_list_is_refused() {
    let hive = TestHive::start_named("inside-loopback", ONE_GPU).await;
    let queen = TestQueen::start_with(allow_ten_only(vec![]), "127.0.0.1:0".parse().unwrap()).await;
    let mut fleet = queen.client().await;
    for address in [
        hive.addr.to_string(),
        format!("127.1:{}", hive.addr.port()),
        format!("[::ffff:127.0.0.1]:{}", hive.addr.port()),
        "169.254.169.254:80".to_owned(),
    ] {
        let err = fleet.add_hive(pb::AddHiveRequest { address: address.clone() }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{address}: {err:?}");
        assert!(err.message().contains("allow-list"), "{address}: {}", err.message());
    }
    let hives = fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap().into_inner().hives;
    assert!(hives.is_empty(), "nothing outside the allow-list is managed: {hives:#?}");
}

#[tokio::test]
async fn hives_from_the_queens_own_config_are_dialed_whatever_the_allow_list() {
    let hive = TestHive::start_named("configured", ONE_GPU).await;
    let queen = TestQueen::start_with(allow_ten_only(vec![hive.url()]), "127.0.0.1:0".parse().unwrap()).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "the configured hive online", |hs| hs.len() == 1 && hs.iter().all(online)).await;
}

/// A target that answers every connection with an HTTP/1.1 error page carrying [`SECRET`].
async fn http1_error_page() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let body = format!("<html><body>500: {SECRET}</body></html>");
                let reply = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

/// A target that speaks HTTP/2 but answers every call with HTTP 500, [`SECRET`] in a
/// header, in `grpc-message` and in the body.
#[derive(Clone)]
struct LeakyH2;

impl tonic::server::NamedService for LeakyH2 {
    const NAME: &'static str = "rbee.v1.Hive";
}

impl tower::Service<http::Request<tonic::body::Body>> for LeakyH2 {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        let response = http::Response::builder()
            .status(500)
            .header("content-type", "text/plain")
            .header("x-secret", SECRET)
            .header("grpc-status", "13")
            .header("grpc-message", format!("{SECRET} {}", "x".repeat(2000)))
            .body(tonic::body::Body::new(format!("page: {SECRET}")))
            .unwrap();
        std::future::ready(Ok(response))
    }
}

async fn h2_error_page() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LeakyH2)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn a_dial_error_never_shows_the_targets_response_body() {
    let h1 = http1_error_page().await;
    let h2 = h2_error_page().await;
    let queen = TestQueen::start(vec![]).await;
    let mut fleet = queen.client().await;
    for target in [h1, h2] {
        fleet.add_hive(pb::AddHiveRequest { address: target.to_string() }).await.unwrap();
    }
    let hives = wait_for(&mut fleet, "both dials to fail", |hs| {
        hs.len() == 2 && hs.iter().all(|h| h.last_error.is_some())
    })
    .await;
    for h in &hives {
        let shown = format!("{h:?}");
        assert!(!shown.contains("SECRET"), "the target's answer leaked into ListHives: {shown}");
        let error = h.last_error.as_deref().unwrap_or_default();
        eprintln!("{}: {error}", h.address);
        assert!(error.len() <= 300, "a dial error is short: {} bytes: {error}", error.len());
    }
    let h2_view = hives.iter().find(|h| h.address.ends_with(&format!(":{}", h2.port()))).unwrap();
    let error = h2_view.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("Internal"), "the status code is kept: {error}");
}

#[tokio::test]
async fn loopback_aliases_are_one_hive() {
    let hive = TestHive::start_named("aliased", ONE_GPU).await;
    let queen = TestQueen::start(vec![]).await;
    let mut fleet = queen.client().await;
    let port = hive.addr.port();
    let mut added = vec![];
    for alias in [
        format!("127.0.0.1:{port}"),
        format!("127.1:{port}"),
        format!("2130706433:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
    ] {
        let r = fleet.add_hive(pb::AddHiveRequest { address: alias.clone() }).await.unwrap().into_inner();
        assert_eq!(r.hive.unwrap().address, format!("http://127.0.0.1:{port}"), "{alias}");
        added.push(r.added);
    }
    assert_eq!(added, [true, false, false, false], "only the first spelling adds a hive");
    let hives = wait_for(&mut fleet, "the hive online", |hs| hs.iter().any(online)).await;
    assert_eq!(hives.len(), 1, "{hives:#?}");
    let got = fleet.get_hive(pb::GetHiveRequest { hive: format!("2130706433:{port}") }).await.unwrap();
    assert_eq!(got.into_inner().hive_id, "aliased");
}

#[tokio::test]
async fn reflection_lists_only_the_services_the_queen_serves() {
    let queen = TestQueen::start(vec![]).await;
    let _ = queen.client().await;
    let names = rbee_hive::test_support::reflected_services(&queen.url()).await;
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "rbee.v1.Fleet",
            "rbee.v1.Scheduler",
        ]
    );
    // v1alpha (what grpcurl 1.8.x speaks) lists the same.
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let channel = tonic::transport::Endpoint::from_shared(queen.url()).unwrap().connect().await.unwrap();
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("not a service list: {answer:?}");
        };
        let mut alpha: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        alpha.sort();
        assert_eq!(alpha, names);
    }
    // Every listed service can be described (so grpcurl can call it).
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Endpoint::from_shared(queen.url()).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    for name in names {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(name.clone())),
        };
        let mut answers =
            client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        assert!(
            matches!(answer.message_response, Some(MessageResponse::FileDescriptorResponse(_))),
            "{name}: {answer:?}"
        );
    }
}

#[test]
fn an_ordinary_cli_error_prints_its_chain_without_a_backtrace() {
    let out = Command::new(env!("CARGO_BIN_EXE_queen"))
        .args(["hives", "--queen", "http://127.0.0.1:1"])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env_remove("QUEEN_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("stack backtrace") && !err.contains("Stack backtrace"), "{err}");
    assert!(err.starts_with("error: cannot reach the queen at http://127.0.0.1:1"), "{err}");
    assert!(err.to_lowercase().contains("refused") || err.contains("connect"), "names the cause: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

/// Nagle's algorithm against a delayed ACK held small replies ~40 ms on a reused
/// connection; with TCP_NODELAY on both ends a ListHives round trip is well under that.
#[tokio::test]
async fn list_hives_is_quick_on_a_reused_connection() {
    let hives = [TestHive::start_named("n1", ONE_GPU).await, TestHive::start_named("n2", ONE_GPU).await];
    let queen = TestQueen::start(hives.iter().map(TestHive::url).collect()).await;
    let mut fleet = queen.client().await;
    wait_for(&mut fleet, "online", |hs| hs.len() == 2 && hs.iter().all(online)).await;
    let mut took = vec![];
    for _ in 0..41 {
        let start = Instant::now();
        fleet.list_hives(pb::ListHivesRequest::default()).await.unwrap();
        took.push(start.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    eprintln!("median ListHives on a reused connection: {median:?}");
    assert!(median < Duration::from_millis(20), "median ListHives {median:?} (all: {took:?})");
}
