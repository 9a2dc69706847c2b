//! What `/proc/PID` says of one process: its name, CPU time, resident memory and the
//! reservation it was started for. Every reader returns `None` for what it cannot
//! read (the process exited, or the hive may not read it).
//!
//! The reservation comes from the worker's secret tag, `RBEE_RESERVATION_TOKEN`: the
//! hive reports the id the token stands for ([`rbee_shared::gpu_process::reservation_id_of_token`])
//! and never the token. `RBEE_RESERVATION_ID` is not read: the id is public, so a
//! process naming it proves nothing, and such a worker is an untagged process.

use std::path::Path;

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`, 100 on every Linux ABI the
/// hive builds for).
pub const USER_HZ: u64 = 100;

/// The environment variable that ties a worker to its reservation: its secret token.
pub const RESERVATION_ENV: &str = rbee_shared::gpu_process::RESERVATION_TOKEN_ENV;

/// Longest token taken from an environment (longer ones are ignored).
const MAX_RESERVATION_TOKEN: usize = 128;

/// User + system CPU time, in clock ticks, from the text of `/proc/PID/stat`.
///
/// The command name (field 2) is in parentheses and may itself hold spaces and `)`, so
/// the fields are counted after the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name: state (3) ... utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// `VmRSS` in bytes, from the text of `/proc/PID/status` (absent for kernel threads).
pub fn parse_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// The process name from `/proc/PID/comm` (at most 15 bytes, newline-terminated).
pub fn parse_comm(comm: &str) -> Option<String> {
    let name = comm.trim_end_matches('\n');
    (!name.is_empty()).then(|| name.chars().filter(|c| !c.is_control()).collect())
}

/// The reservation id that the `RBEE_RESERVATION_TOKEN` in the raw bytes of
/// `/proc/PID/environ` (NUL-separated `KEY=VALUE`) stands for. A value that is empty,
/// too long or not printable ASCII is ignored. The token itself is not kept.
pub fn parse_reservation_id(environ: &[u8]) -> Option<String> {
    let key = RESERVATION_ENV.as_bytes();
    let value = environ.split(|b| *b == 0).find_map(|kv| {
        let v = kv.strip_prefix(key)?;
        v.strip_prefix(b"=")
    })?;
    let ok = !value.is_empty()
        && value.len() <= MAX_RESERVATION_TOKEN
        && value.iter().all(|b| b.is_ascii_graphic());
    ok.then(|| rbee_shared::gpu_process::reservation_id_of_token(value))
}

/// One reading of a process from `/proc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcReading {
    /// `comm`.
    pub name: Option<String>,
    /// User + system CPU ticks.
    pub cpu_ticks: Option<u64>,
    /// Resident memory, bytes.
    pub rss_bytes: Option<u64>,
    /// The raw `/proc/PID/cgroup` text.
    pub cgroup: Option<String>,
    /// The reservation id its `RBEE_RESERVATION_TOKEN` stands for, where the
    /// environment is readable.
    pub reservation_id: Option<String>,
}

/// Reads process `pid` under `proc_root` (normally `/proc`). A permission error on
/// `environ` (another user's process) leaves the reservation unknown, nothing more.
pub fn read(proc_root: &Path, pid: u32) -> ProcReading {
    let dir = proc_root.join(pid.to_string());
    let text = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    ProcReading {
        name: text("comm").as_deref().and_then(parse_comm),
        cpu_ticks: text("stat").as_deref().and_then(parse_cpu_ticks),
        rss_bytes: text("status").as_deref().and_then(parse_rss_bytes),
        cgroup: text("cgroup"),
        reservation_id: std::fs::read(dir.join("environ")).ok().as_deref().and_then(parse_reservation_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 1 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn rss_is_kib_times_1024_and_absent_without_the_line() {
        assert_eq!(parse_rss_bytes("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2 << 20));
        assert_eq!(parse_rss_bytes("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn reservation_ids_come_only_from_the_token_variable() {
        use rbee_shared::gpu_process::reservation_id_of_token as id_of;
        let env = b"PATH=/bin\0RBEE_RESERVATION_TOKENX=no\0RBEE_RESERVATION_TOKEN=t-1\0";
        assert_eq!(parse_reservation_id(env), Some(id_of(b"t-1")));
        assert_eq!(parse_reservation_id(b"RBEE_RESERVATION_TOKEN=\0"), None);
        assert_eq!(parse_reservation_id(b"RBEE_RESERVATION_TOKEN=a b\0"), None);
        assert_eq!(parse_reservation_id(b"HOME=/\0"), None);
    }

    #[test]
    fn a_public_reservation_id_alone_tags_nothing() {
        // Anyone who may list reservations knows the id: naming it proves nothing.
        assert_eq!(parse_reservation_id(b"RBEE_RESERVATION_ID=r-1\0"), None);
        // A guessed token stands for some other id, never the one it sits beside.
        let forged = b"RBEE_RESERVATION_ID=r-1\0RBEE_RESERVATION_TOKEN=r-1\0";
        assert_ne!(parse_reservation_id(forged).as_deref(), Some("r-1"));
    }
}
