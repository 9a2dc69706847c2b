//! A process's cgroup: which path it is in (`/proc/PID/cgroup`, cgroup v2, v1 or a
//! hybrid of both), the container or systemd unit that path names, and on cgroup v2
//! the group's totals (`memory.current`, `cpu.stat`).

use std::path::Path;

/// The paths in one `/proc/PID/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    /// The unified (v2) path: the `0::PATH` line.
    pub unified: Option<String>,
    /// v1 hierarchies: (controllers, path), e.g. `("memory", "/docker/ID")`.
    pub v1: Vec<(String, String)>,
}

impl CgroupPaths {
    /// Parses the text of `/proc/PID/cgroup` (`ID:CONTROLLERS:PATH` per line).
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                out.unified = Some(path.to_owned());
            } else if !controllers.is_empty() {
                out.v1.push((controllers.to_owned(), path.to_owned()));
            }
        }
        out
    }

    /// The path that says most about the process: on a pure v2 host the unified one;
    /// on a v1 or hybrid host the `memory` hierarchy's, else `cpu`'s, else systemd's
    /// named one, else the unified one.
    pub fn best(&self) -> Option<&str> {
        let v1 = |want: &str| {
            self.v1.iter().find(|(c, _)| c.split(',').any(|c| c == want)).map(|(_, p)| p.as_str())
        };
        if self.v1.is_empty() {
            return self.unified.as_deref();
        }
        v1("memory").or_else(|| v1("cpu")).or_else(|| v1("name=systemd")).or(self.unified.as_deref())
    }
}

/// What a cgroup path names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// `docker`, `containerd`, `cri-o`, `podman` or `kubepods`.
    pub runtime: Option<&'static str>,
    /// The container id.
    pub container_id: Option<String>,
    /// The innermost systemd unit (`*.service` or `*.scope`).
    pub unit: Option<String>,
}

fn is_container_id(s: &str) -> bool {
    (12..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `PREFIX<id>.scope` systemd scopes that container runtimes create.
const SCOPES: &[(&str, &str)] =
    &[("docker-", "docker"), ("cri-containerd-", "containerd"), ("crio-", "cri-o"), ("libpod-", "podman")];

/// `SLICE:RUNTIME:ID` leaves that runtimes write under a systemd cgroup driver.
const COLON_RUNTIMES: &[(&str, &str)] =
    &[("cri-containerd", "containerd"), ("crio", "cri-o"), ("docker", "docker")];

fn container_in(component: &str, parent: Option<&str>, kube: bool) -> Option<(&'static str, String)> {
    if let Some(scope) = component.strip_suffix(".scope") {
        for (prefix, runtime) in SCOPES {
            if let Some(id) = scope.strip_prefix(prefix)
                && is_container_id(id)
            {
                return Some((runtime, id.to_owned()));
            }
        }
    }
    let mut colon = component.rsplitn(3, ':');
    if let (Some(id), Some(runtime), Some(_)) = (colon.next(), colon.next(), colon.next())
        && let Some((_, name)) = COLON_RUNTIMES.iter().find(|(r, _)| *r == runtime)
        && is_container_id(id)
    {
        return Some((name, id.to_owned()));
    }
    if is_container_id(component) {
        match parent {
            Some("docker") => return Some(("docker", component.to_owned())),
            Some("libpod_parent") | Some("machine.slice") => {}
            _ if kube => return Some(("kubepods", component.to_owned())),
            _ => {}
        }
    }
    None
}

/// What a cgroup path names: the innermost container and systemd unit in it.
pub fn owner(path: &str) -> Owner {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let kube = parts.iter().any(|p| p.starts_with("kubepods"));
    let mut out = Owner::default();
    for (i, part) in parts.iter().enumerate().rev() {
        if out.runtime.is_none()
            && let Some((runtime, id)) = container_in(part, i.checked_sub(1).map(|p| parts[p]), kube)
        {
            out.runtime = Some(runtime);
            out.container_id = Some(id);
        }
        if out.unit.is_none() && (part.ends_with(".service") || part.ends_with(".scope")) {
            out.unit = Some((*part).to_owned());
        }
    }
    out
}

/// A cgroup v2 group's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// `memory.current`, bytes.
    pub memory_bytes: Option<u64>,
    /// `cpu.stat` `usage_usec`.
    pub cpu_usage_usec: Option<u64>,
}

/// `usage_usec` from the text of a cgroup v2 `cpu.stat`.
pub fn parse_cpu_usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse().ok())
}

/// True when `root` (normally `/sys/fs/cgroup`) is a cgroup v2 (unified) mount: a
/// hybrid host mounts v2 elsewhere (`unified/`) and v1 hierarchies here.
pub fn is_unified(root: &Path) -> bool {
    root.join("cgroup.controllers").is_file()
}

/// The totals of the v2 group at `path` (a `/proc/PID/cgroup` unified path) under
/// `root`; `None` for a path that would leave `root`.
pub fn totals(root: &Path, path: &str) -> Option<Totals> {
    let relative = path.trim_start_matches('/');
    if relative.split('/').any(|c| c == ".." || c == ".") {
        return None;
    }
    let dir = root.join(relative);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    Some(Totals {
        memory_bytes: read("memory.current").and_then(|t| t.trim().parse().ok()),
        cpu_usage_usec: read("cpu.stat").as_deref().and_then(parse_cpu_usage_usec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c0a7e2b9d8c6e5a3f1b0d9e8c7a6b5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c";

    #[test]
    fn container_scopes_and_cgroupfs_paths() {
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), "docker"),
            (format!("/docker/{ID}"), "docker"),
            (format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"), "containerd"),
            (format!("/kubepods.slice/kubepods-besteffort.slice/crio-{ID}.scope"), "cri-o"),
            (format!("/kubepods/burstable/pod0b1c/{ID}"), "kubepods"),
            (
                format!(
                    "/system.slice/containerd.service/kubepods-besteffort-pod1.slice:cri-containerd:{ID}"
                ),
                "containerd",
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                "podman",
            ),
        ];
        for (path, runtime) in cases {
            let o = owner(&path);
            assert_eq!(o.runtime, Some(runtime), "{path}");
            assert_eq!(o.container_id.as_deref(), Some(ID), "{path}");
        }
    }

    #[test]
    fn units_without_containers() {
        let o = owner("/system.slice/ollama.service");
        assert_eq!((o.runtime, o.unit.as_deref()), (None, Some("ollama.service")));
        let o = owner("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(o.unit.as_deref(), Some("session-3.scope"));
        assert_eq!(owner("/"), Owner::default());
        // A conmon scope is not the container.
        assert_eq!(owner(&format!("/machine.slice/libpod-conmon-{ID}.scope")).runtime, None);
    }

    #[test]
    fn hybrid_hosts_prefer_the_memory_hierarchy() {
        let text = format!(
            "12:memory:/docker/{ID}\n4:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/system.slice/docker.service\n"
        );
        let p = CgroupPaths::parse(&text);
        assert_eq!(p.best(), Some(format!("/docker/{ID}").as_str()));
        assert_eq!(
            CgroupPaths::parse("0::/system.slice/x.service\n").best(),
            Some("/system.slice/x.service")
        );
        assert_eq!(CgroupPaths::parse("nonsense").best(), None);
    }

    #[test]
    fn totals_never_leave_the_root() {
        assert_eq!(totals(Path::new("/sys/fs/cgroup"), "/../../etc"), None);
        assert_eq!(parse_cpu_usage_usec("usage_usec 1234\nuser_usec 1000\n"), Some(1234));
    }
}
