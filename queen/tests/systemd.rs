//! `deploy/systemd/rbee-queen.service` passes `systemd-analyze verify` (a copy whose
//! ExecStart is the queen binary just built: verify needs the program to exist); a
//! broken unit does not (the check is live); the example environment file names only
//! variables the queen reads; completions and the man page are generated.

use std::path::Path;

use clap::CommandFactory;
use rbee_hive::test_support::{check_env_example, systemd_verify};
use rbee_queen::cli::Cli;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd");
const QUEEN: &str = env!("CARGO_BIN_EXE_queen");

#[test]
fn the_queen_unit_verifies_and_a_broken_one_does_not() {
    let unit = Path::new(DEPLOY).join("rbee-queen.service");
    let Some((ok, said)) = systemd_verify(&unit, "/usr/local/bin/queen", Path::new(QUEEN)) else { return };
    assert!(ok, "systemd-analyze verify rbee-queen.service:\n{said}");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("rbee-queen.service");
    let text = std::fs::read_to_string(&unit)
        .unwrap()
        .replace("NoNewPrivileges=yes", "NoNewPrivileges=yes\nNoSuchKey=1");
    std::fs::write(&broken, text).unwrap();
    let (ok, said) = systemd_verify(&broken, "/usr/local/bin/queen", Path::new(QUEEN)).unwrap();
    assert!(!ok && said.contains("NoSuchKey"), "{said}");
}

#[test]
fn the_example_env_file_names_real_variables() {
    check_env_example(&Path::new(DEPLOY).join("queen.env.example"), "QUEEN_", &Cli::command(), 8);
}

#[test]
fn completions_and_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(QUEEN).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("queen") && text.contains("metrics-listen") && text.contains("top"),
            "{shell}: {text}"
        );
    }
    let out = std::process::Command::new(QUEEN).arg("man").output().unwrap();
    assert!(out.status.success());
    let roff = String::from_utf8(out.stdout).unwrap();
    assert!(roff.contains(".TH queen"), "{roff}");
}
