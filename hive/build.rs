//! Links the release `hive` binary with packed relative relocations (`-z
//! pack-relative-relocs`, DT_RELR; issue 24): its 0.5 MiB `.rela.dyn` table, which the
//! dynamic loader reads whole at every start (so it stays mapped and in the hive's
//! RSS), becomes 10 KiB of `.relr.dyn`. A binary linked so needs glibc 2.36 or later
//! to start, so it is done only where the build host is the target and its glibc is
//! 2.36 or later (`getconf GNU_LIBC_VERSION`); `RBEE_RELR=0` turns it off.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RBEE_RELR");
    println!("cargo:rerun-if-changed=build.rs");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let native = env("HOST") == env("TARGET");
    let release = env("PROFILE") == "release";
    let gnu_linux = env("CARGO_CFG_TARGET_OS") == "linux" && env("CARGO_CFG_TARGET_ENV") == "gnu";
    if !(native && release && gnu_linux) || env("RBEE_RELR") == "0" {
        return;
    }
    if glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the build host's glibc is at least `major.minor`.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    // "glibc 2.36"
    let Some(version) = text.split_whitespace().nth(1) else { return false };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}
