//! `deploy/systemd/rbee-hive.service` passes `systemd-analyze verify` (a copy whose
//! ExecStart is the hive binary just built: verify needs the program to exist); a hive
//! started with the unit's environment (no systemd needed) has a working models
//! directory; and the example environment file names only variables the hive reads.

use std::path::Path;

use clap::CommandFactory;
use rbee_hive::cli::Cli;
use rbee_hive::test_support::{
    HiveProcess, TestStream, as_sample, check_env_example, subscribe, systemd_verify,
};
use rbee_proto::v1::hive_client::HiveClient;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd");

#[test]
fn the_hive_unit_verifies() {
    let unit = Path::new(DEPLOY).join("rbee-hive.service");
    let Some((ok, said)) =
        systemd_verify(&unit, "/usr/local/bin/hive", Path::new(env!("CARGO_BIN_EXE_hive")))
    else {
        return;
    };
    assert!(ok, "systemd-analyze verify rbee-hive.service:\n{said}");
}

/// The unit's `Environment=` variables with `%S` (systemd's state root, `/var/lib`)
/// replaced by `state_root`, and its `StateDirectory=` names.
fn unit_environment(unit: &str, state_root: &Path) -> (Vec<(String, String)>, Vec<String>) {
    let (mut env, mut dirs) = (Vec::new(), Vec::new());
    for line in unit.lines().map(str::trim) {
        if let Some(kv) = line.strip_prefix("Environment=") {
            let kv = kv.trim_matches('"').replace("%S", &state_root.display().to_string());
            let (k, v) = kv.split_once('=').expect("Environment=KEY=VALUE");
            env.push((k.to_owned(), v.to_owned()));
        } else if let Some(names) = line.strip_prefix("StateDirectory=") {
            dirs.extend(names.split_whitespace().map(str::to_owned));
        }
    }
    (env, dirs)
}

/// Under `DynamicUser` and `ProtectSystem=strict` only the state directory is writable, so
/// the hive, started with just the unit's environment and a home nobody can write in
/// (`/proc`: not even root can make a directory there), must still find a models
/// directory it can use: its samples report the models disk only when downloads are on.
#[tokio::test]
async fn a_hive_started_with_the_units_environment_has_a_models_directory() {
    let unit = std::fs::read_to_string(Path::new(DEPLOY).join("rbee-hive.service")).unwrap();
    let root = tempfile::tempdir().unwrap();
    let (env, dirs) = unit_environment(&unit, root.path());
    assert!(!dirs.is_empty(), "the unit has no StateDirectory=");
    for dir in &dirs {
        // What systemd does for StateDirectory= before ExecStart.
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    let mut envs: Vec<(&str, &std::ffi::OsStr)> =
        env.iter().map(|(k, v)| (k.as_str(), std::ffi::OsStr::new(v))).collect();
    envs.push(("HOME", "/proc".as_ref()));
    envs.push(("XDG_DATA_HOME", "".as_ref()));
    let hive = HiveProcess::spawn(Path::new(env!("CARGO_BIN_EXE_hive")), &["--demo".as_ref()], &envs);
    let mut client = HiveClient::connect(hive.url()).await.unwrap();
    let mut stream = TestStream::open(&mut client, subscribe(100)).await;
    let mut samples = Vec::new();
    while samples.len() < 3 {
        samples.push(stream.until(as_sample).await);
        if samples.last().unwrap().models_disk.is_some() {
            break;
        }
    }
    let disk = samples.last().unwrap().models_disk.clone().unwrap_or_else(|| {
        panic!(
            "the hive runs without a models directory (downloads off) under the unit's environment {env:?}"
        )
    });
    assert!(
        Path::new(&disk.path).starts_with(root.path()),
        "models at {} are outside the unit's StateDirectory",
        disk.path
    );
    assert!(Path::new(&disk.path).is_dir(), "{}", disk.path);
}

#[test]
fn the_example_env_file_names_real_variables() {
    check_env_example(&Path::new(DEPLOY).join("hive.env.example"), "HIVE_", &Cli::command(), 10);
}

#[test]
fn completions_and_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hive"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("hive") && text.contains("metrics-listen"), "{shell}: {text}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hive")).arg("man").output().unwrap();
    assert!(out.status.success());
    let roff = String::from_utf8(out.stdout).unwrap();
    assert!(roff.contains(".TH hive"), "{roff}");
}
