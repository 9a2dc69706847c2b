//! The `hive` binary as an operator meets it on an ordinary error.

use std::process::Command;

#[test]
fn an_ordinary_error_prints_its_chain_without_a_backtrace() {
    let out = Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env_remove("HIVE_INSECURE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("stack backtrace") && !err.contains("Stack backtrace"), "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains("0.0.0.0"), "names the cause: {err}");
}

/// `hive man --dir` writes hive.1 and a page for every subcommand, and every page any
/// of them refers to (roff writes `hive\-serve(1)`) exists.
#[test]
fn man_writes_a_page_for_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_hive")).args(["man", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["hive.1", "hive-serve.1", "hive-probe.1", "hive-swarm.1", "hive-completions.1", "hive-man.1"]
    {
        assert!(dir.path().join(page).is_file(), "no {page}");
    }
    let referred = rbee_hive::test_support::man_references_resolve(dir.path(), "hive");
    assert!(referred >= 4, "{referred} references");
}
