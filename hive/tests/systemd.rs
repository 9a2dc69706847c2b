//! `deploy/systemd/rbee-hive.service` passes `systemd-analyze verify` (a copy whose
//! ExecStart is the hive binary just built: verify needs the program to exist), and the
//! example environment file names only variables the hive reads.

use std::path::Path;

use clap::CommandFactory;
use rbee_hive::config::Cli;
use rbee_hive::test_support::{check_env_example, systemd_verify};

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
