//! Where a hive may fetch from, end to end: a real hive asked over gRPC to download from
//! internal addresses. The metadata trap runs inside a private network namespace that
//! the test makes itself (`unshare -n`, as root): 169.254.169.254 (and fd00:ec2::254)
//! on that namespace's `lo`, so nothing leaves the machine or even the namespace.

use std::process::Command;

use rbee_hive::models::egress::{EgressRule, parse_allow};
use rbee_hive::test_support::http_files::{FileServer, generated};
use rbee_hive::test_support::{
    TestHive, TestStream, download_of, external_tool, fetch_url, models_config, subscribe,
};
use rbee_proto::v1 as pb;

/// Set in the re-run of a test inside its private network namespace.
const IN_NETNS: &str = "RBEE_TEST_IN_NETNS";

/// Runs test `name` of this binary again inside a new network namespace and checks
/// that it passed there. True when this process already is that re-run (then the
/// caller does the work); false after the re-run, or when namespaces cannot be made
/// here (not root: the test is skipped, unless `RBEE_REQUIRE_TOOLS=1`).
fn in_private_netns(name: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() {
        return true;
    }
    let (Some(unshare), Some(_)) = (
        external_tool("unshare", "apt-get install util-linux"),
        external_tool("ip", "apt-get install iproute2"),
    ) else {
        return false;
    };
    let usable = Command::new(&unshare).args(["-n", "true"]).status().is_ok_and(|s| s.success());
    if !usable {
        let required = std::env::var_os("RBEE_REQUIRE_TOOLS").is_some_and(|v| v == "1");
        assert!(!required, "`unshare -n` fails here (not root?) but RBEE_REQUIRE_TOOLS=1");
        eprintln!("SKIPPED: `unshare -n` fails here (run as root); {name} did not run");
        return false;
    }
    let out = Command::new(unshare)
        .arg("-n")
        .arg(std::env::current_exe().expect("the test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .output()
        .expect("run the test in a network namespace");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("1 passed"), "{name} inside `unshare -n`:\n{said}");
    false
}

/// Brings up the namespace's `lo` and adds `addr` to it; false when it cannot (an
/// IPv6 address where IPv6 is off).
fn add_to_lo(addr: &str) -> bool {
    let ip = |args: &[&str]| Command::new("ip").args(args).status().is_ok_and(|s| s.success());
    assert!(ip(&["link", "set", "lo", "up"]), "bring up lo in the namespace");
    if addr.contains(':') {
        // `nodad`: without it the address stays "tentative" for a moment and a bind to it
        // fails with EADDRNOTAVAIL.
        ip(&["-6", "addr", "add", addr, "dev", "lo", "nodad"])
    } else {
        ip(&["addr", "add", addr, "dev", "lo"])
    }
}

/// Waits for the final record of `model`.
async fn final_record(stream: &mut TestStream, model: &str) -> pb::DownloadProgress {
    stream
        .until(|m| {
            let d = download_of(m, model)?;
            matches!(
                pb::DownloadPhase::try_from(d.phase),
                Ok(pb::DownloadPhase::Done | pb::DownloadPhase::Failed | pb::DownloadPhase::Cancelled)
            )
            .then_some(d)
        })
        .await
}

/// Fetches `url` as `model` and returns how it ended: `Ok(())` when done, else the
/// error the hive reported.
async fn fetch(
    client: &mut pb::hive_client::HiveClient<tonic::transport::Channel>,
    stream: &mut TestStream,
    model: &str,
    url: &str,
) -> Result<(), String> {
    client.fetch_model(fetch_url(model, url, None, None)).await.expect("FetchModel accepts the URL");
    let end = final_record(stream, model).await;
    match pb::DownloadPhase::try_from(end.phase) {
        Ok(pb::DownloadPhase::Done) => Ok(()),
        _ => Err(end.error.unwrap_or_default()),
    }
}

/// Asserts a refusal: it says "destination not allowed", and nothing about an answer.
fn assert_refused(what: &str, end: Result<(), String>) {
    let e = end.expect_err(what);
    assert!(e.contains("destination not allowed"), "{what}: {e}");
    for leak in ["refused", "timed out", "HTTP", "reset", "connect"] {
        assert!(!e.contains(leak), "{what}: the refusal says {leak:?}: {e}");
    }
}

#[tokio::test]
async fn the_metadata_address_is_refused_under_every_spelling_and_behind_a_redirect() {
    if !in_private_netns("the_metadata_address_is_refused_under_every_spelling_and_behind_a_redirect") {
        return;
    }
    assert!(add_to_lo("169.254.169.254/32"), "add the metadata address to lo");
    let trap = FileServer::start_at("169.254.169.254:0".parse().unwrap()).await.expect("bind the trap");
    trap.add("latest/meta-data/iam", b"SECRET-CREDENTIALS".to_vec());
    let port = trap.addr.port();
    let trap6 = if add_to_lo("fd00:ec2::254/128") {
        let t = FileServer::start_at("[fd00:ec2::254]:0".parse().unwrap()).await.expect("bind the v6 trap");
        t.add("latest/meta-data/iam", b"SECRET-CREDENTIALS".to_vec());
        Some(t)
    } else {
        eprintln!("no IPv6 on lo: fd00:ec2::254 is checked by the unit tests only");
        None
    };
    // An allowed server (loopback, opened like `--download-allow 127.0.0.1`).
    let mirror = FileServer::start().await;
    let ok = mirror.add("ok.bin", generated(64 << 10, 1));

    let dir = tempfile::tempdir().unwrap();
    let hive = TestHive::start_with(models_config("egress-hive", dir.path(), None)).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;

    // The hive does download here: from the allowed address, by number and by name.
    assert_eq!(fetch(&mut client, &mut stream, "allowed", &ok).await, Ok(()));
    let by_name = ok.replace("127.0.0.1", "localhost");
    assert_eq!(fetch(&mut client, &mut stream, "allowed-by-name", &by_name).await, Ok(()));

    let path = "latest/meta-data/iam";
    let spellings = [
        format!("http://169.254.169.254:{port}/{path}"),
        format!("http://[::ffff:169.254.169.254]:{port}/{path}"),
        format!("http://2852039166:{port}/{path}"),
        format!("http://0xa9.0xfe.0xa9.0xfe:{port}/{path}"),
        format!("http://169.254.169.254.:{port}/{path}"),
    ];
    for (i, url) in spellings.iter().enumerate() {
        assert_refused(url, fetch(&mut client, &mut stream, &format!("meta-{i}"), url).await);
    }
    // A redirect from the allowed server to the trap is refused at the hop.
    let hop = mirror.redirect("hop.bin", &spellings[0]);
    assert_refused("a redirect to the trap", fetch(&mut client, &mut stream, "redirected", &hop).await);
    if let Some(t) = &trap6 {
        let url = format!("http://[fd00:ec2::254]:{}/{path}", t.addr.port());
        assert_refused(&url, fetch(&mut client, &mut stream, "meta-v6", &url).await);
        assert_eq!(t.requests(), [], "nothing reached the IPv6 trap");
    }
    assert_eq!(trap.requests(), [], "nothing reached the trap");
    for model in ["meta-0", "redirected"] {
        assert!(!dir.path().join(model).exists(), "{model}: nothing was written");
    }
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn by_default_loopback_is_refused_by_address_and_by_name_and_a_named_host_can_be_opened() {
    let server = FileServer::start().await;
    let url = server.add("w.bin", generated(64 << 10, 2));
    let by_name = url.replace("127.0.0.1", "localhost");

    // The default rule: public addresses only.
    let dir = tempfile::tempdir().unwrap();
    let mut config = models_config("egress-default", dir.path(), None);
    config.models.as_mut().unwrap().egress = EgressRule::default();
    let hive = TestHive::start_with(config).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    assert_refused(&url, fetch(&mut client, &mut stream, "by-address", &url).await);
    // A name is checked on the address it resolves to (the resolver hook).
    assert_refused(&by_name, fetch(&mut client, &mut stream, "by-name", &by_name).await);
    assert_eq!(server.requests(), [], "nothing reached the loopback server");
    hive.stop().await.unwrap();

    // `--download-allow localhost` opens that name (an internal mirror by name), not
    // the address by number.
    let dir = tempfile::tempdir().unwrap();
    let mut config = models_config("egress-named", dir.path(), None);
    config.models.as_mut().unwrap().egress = EgressRule::new(vec![parse_allow("localhost").unwrap()]);
    let hive = TestHive::start_with(config).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    assert_eq!(fetch(&mut client, &mut stream, "named", &by_name).await, Ok(()));
    assert_refused(&url, fetch(&mut client, &mut stream, "numbered", &url).await);
    assert_eq!(server.requests().len(), 1, "only the named fetch reached the server");
    hive.stop().await.unwrap();
}

#[tokio::test]
async fn the_hives_own_public_address_is_refused_unless_opened() {
    if !in_private_netns("the_hives_own_public_address_is_refused_unless_opened") {
        return;
    }
    // A "public" address of this host (in the namespace): a service bound to it is the
    // host's own, not the internet's.
    assert!(add_to_lo("11.0.0.1/32"), "add 11.0.0.1 to lo");
    let own = FileServer::start_at("11.0.0.1:0".parse().unwrap()).await.expect("bind 11.0.0.1");
    let url = own.add("w.bin", generated(64 << 10, 3));
    let closed = format!("http://11.0.0.1:{}/w.bin", free_port());

    let dir = tempfile::tempdir().unwrap();
    let hive = TestHive::start_with(models_config("egress-own", dir.path(), None)).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    assert_refused(&url, fetch(&mut client, &mut stream, "own", &url).await);
    // A closed port reads the same: no port scan of the host.
    assert_refused(&closed, fetch(&mut client, &mut stream, "own-closed", &closed).await);
    assert_eq!(own.requests(), [], "nothing reached the host's own service");
    hive.stop().await.unwrap();

    // `--download-allow 11.0.0.1` opens it.
    let dir = tempfile::tempdir().unwrap();
    let mut config = models_config("egress-own-opened", dir.path(), None);
    config.models.as_mut().unwrap().egress = EgressRule::new(vec![parse_allow("11.0.0.1").unwrap()]);
    let hive = TestHive::start_with(config).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    assert_eq!(fetch(&mut client, &mut stream, "opened", &url).await, Ok(()));
    hive.stop().await.unwrap();
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("11.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_refused_name_and_a_name_that_does_not_resolve_read_the_same() {
    if !in_private_netns("a_refused_name_and_a_name_that_does_not_resolve_read_the_same") {
        return;
    }
    // Inside the namespace no DNS server answers: names beyond /etc/hosts fail there.
    assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().is_ok_and(|s| s.success()));
    let server = FileServer::start().await;
    let url = server.add("w.bin", generated(4 << 10, 4));
    let port = server.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = models_config("egress-oracle", dir.path(), None);
    config.models.as_mut().unwrap().egress = EgressRule::default();
    let hive = TestHive::start_with(config).await;
    let mut client = hive.client().await;
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    let refused = fetch(&mut client, &mut stream, "lo", &url.replace("127.0.0.1", "localhost")).await;
    let missing = format!("http://no-such-host.invalid:{port}/w.bin");
    let unresolved = fetch(&mut client, &mut stream, "nx", &missing).await;
    assert_refused("localhost", refused.clone());
    assert_refused("no-such-host.invalid", unresolved.clone());
    let (refused, unresolved) = (refused.unwrap_err(), unresolved.unwrap_err());
    assert_eq!(refused.replace("localhost", "HOST"), unresolved.replace("no-such-host.invalid", "HOST"));
    for class in ["loopback", "dns", "resolve error", "127.0.0.1", "::1"] {
        assert!(!refused.contains(class), "{refused}");
    }
    assert_eq!(server.requests(), []);
    hive.stop().await.unwrap();
}
