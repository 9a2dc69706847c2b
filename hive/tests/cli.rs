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
