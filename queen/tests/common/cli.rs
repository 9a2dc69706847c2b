//! The `queen` binary as an operator runs it, from async tests.

/// Runs `queen ARGS` (without the caller's `QUEEN_TOKEN`) on a blocking thread:
/// success, stdout, stderr.
pub async fn queen_cli(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_queen"))
            .args(&args)
            .env_remove("QUEEN_TOKEN")
            .output()
            .expect("run queen");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    })
    .await
    .unwrap()
}

/// `&str` arguments as the owned list [`queen_cli`] takes.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}
