//! Reading containers' cgroups (libcontainer writes them): memory and CPU for the node's
//! stats, the OOM killer's count for a container's end, and removing a pod's cgroups once its
//! containers are gone. cgroups v2 where `/sys/fs/cgroup` is unified, v1 otherwise.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the controllers are.
#[derive(Debug)]
pub(super) enum Cgroups {
    /// One hierarchy.
    V2(PathBuf),
    /// One hierarchy per controller, under this root.
    V1(PathBuf),
}

impl Cgroups {
    pub(super) fn detect() -> Cgroups {
        let root = PathBuf::from("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() { Cgroups::V2(root) } else { Cgroups::V1(root) }
    }

    fn file(&self, controller: &str, cgroup: &str, name: &str) -> PathBuf {
        let relative = cgroup.trim_start_matches('/');
        match self {
            Cgroups::V2(root) => root.join(relative).join(name),
            Cgroups::V1(root) => root.join(controller).join(relative).join(name),
        }
    }

    /// The working set, as the kubelet reads it: usage less inactive file pages.
    pub(super) fn working_set(&self, cgroup: &str) -> u64 {
        let (usage, inactive) = match self {
            Cgroups::V2(_) => ("memory.current", "inactive_file"),
            Cgroups::V1(_) => ("memory.usage_in_bytes", "total_inactive_file"),
        };
        let usage: u64 = read_small(&self.file("memory", cgroup, usage)).trim().parse().unwrap_or(0);
        let stat = read_small(&self.file("memory", cgroup, "memory.stat"));
        usage.saturating_sub(field(&stat, inactive).unwrap_or(0))
    }

    /// CPU time used.
    pub(super) fn cpu(&self, cgroup: &str) -> Duration {
        match self {
            Cgroups::V2(_) => {
                let stat = read_small(&self.file("cpu", cgroup, "cpu.stat"));
                Duration::from_micros(field(&stat, "usage_usec").unwrap_or(0))
            }
            Cgroups::V1(_) => {
                let nanos = read_small(&self.file("cpuacct", cgroup, "cpuacct.usage")).trim().parse().unwrap_or(0);
                Duration::from_nanos(nanos)
            }
        }
    }

    /// Whether the OOM killer ended a process of the cgroup.
    pub(super) fn oom_killed(&self, cgroup: &str) -> bool {
        let text = match self {
            Cgroups::V2(_) => read_small(&self.file("memory", cgroup, "memory.events")),
            Cgroups::V1(_) => read_small(&self.file("memory", cgroup, "memory.oom_control")),
        };
        field(&text, "oom_kill").is_some_and(|kills| kills > 0)
    }

    /// Whether the kernel bounds which devices a container's processes may open: v1's
    /// `devices` controller, which libcontainer programs. On v2 that takes an eBPF program,
    /// which this build of libcontainer does not load: a device node a container made itself
    /// (`CAP_MKNOD`) would open the node's own disks there.
    pub(super) fn controls_devices(&self) -> bool {
        match self {
            Cgroups::V2(_) => false,
            Cgroups::V1(root) => root.join("devices").is_dir(),
        }
    }

    /// Whether a memory limit can bound swap too: on v1 only where the kernel accounts for
    /// swap (`memory.memsw.*`), which youki otherwise fails to write.
    pub(super) fn limits_swap(&self) -> bool {
        match self {
            Cgroups::V2(_) => true,
            Cgroups::V1(root) => root.join("memory/memory.memsw.limit_in_bytes").exists(),
        }
    }

    /// Bounds the processes (and threads) of the pod whose cgroup is `pod` (`…/pod<uid>`) to
    /// `max`, as the kubelet's `--pod-max-pids` bounds a pod's cgroup: made here, before the
    /// first of its containers, which are made beneath it. Nothing is bounded where the kernel
    /// has no `pids` controller to bound with.
    pub(super) fn limit_pids(&self, pod: &str, max: u32) -> Result<(), String> {
        let relative = pod.trim_start_matches('/');
        let failed = |path: &Path, e: std::io::Error| format!("bounding the pod's processes ({}): {e}", path.display());
        let dir = match self {
            Cgroups::V1(root) => {
                let hierarchy = root.join("pids");
                if !hierarchy.is_dir() {
                    return Ok(());
                }
                hierarchy.join(relative)
            }
            Cgroups::V2(root) => {
                if !read_small(&root.join("cgroup.controllers")).split_whitespace().any(|c| c == "pids") {
                    return Ok(());
                }
                // Each cgroup above the pod's hands the controller down to the one below. Where
                // one cannot (the agent's cgroup namespace has processes at its root, as in a
                // container), the pod goes unbounded rather than unstarted, as libcontainer
                // hands its controllers down.
                let mut dir = root.clone();
                for part in relative.split('/') {
                    let control = dir.join("cgroup.subtree_control");
                    let handed = read_small(&control).split_whitespace().any(|c| c == "pids");
                    if !handed && let Err(e) = std::fs::write(&control, "+pids") {
                        static SAID: std::sync::Once = std::sync::Once::new();
                        SAID.call_once(|| {
                            tracing::warn!(cgroup = %dir.display(), %e, "pods' processes go unbounded: no pids controller to hand down");
                        });
                        return Ok(());
                    }
                    dir = dir.join(part);
                    std::fs::create_dir_all(&dir).map_err(|e| failed(&dir, e))?;
                }
                dir
            }
        };
        std::fs::create_dir_all(&dir).map_err(|e| failed(&dir, e))?;
        let limit = dir.join("pids.max");
        std::fs::write(&limit, max.to_string()).map_err(|e| failed(&limit, e))
    }

    /// The `flotilla` directory of every hierarchy (v1: each mounted controller's, every one
    /// of which youki puts a container in).
    fn roots(&self) -> Vec<PathBuf> {
        match self {
            Cgroups::V2(root) => vec![root.join("flotilla")],
            Cgroups::V1(root) => std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .map(|hierarchy| hierarchy.path().join("flotilla"))
                .filter(|dir| dir.is_dir())
                .collect(),
        }
    }

    /// Removes the (empty) cgroups of a pod whose containers are gone.
    pub(super) fn remove_pod(&self, pod_uid: &str) {
        let pod = format!("pod{pod_uid}");
        for root in self.roots() {
            for parent in [root.clone(), root.join("burstable"), root.join("besteffort")] {
                remove_tree(&parent.join(&pod));
            }
        }
    }

    /// Removes every pod's cgroups (their containers gone).
    pub(super) fn remove_all(&self) {
        for root in self.roots() {
            remove_tree(&root);
        }
    }
}

/// Reads a small file of a cgroup, empty if it cannot.
fn read_small(path: &Path) -> String {
    let mut text = String::new();
    let _ = std::fs::File::open(path).and_then(|mut f| std::io::Read::read_to_string(&mut f, &mut text));
    text
}

/// Removes a cgroup directory and those beneath it, deepest first (cgroup directories are
/// removed with `rmdir`, and only once empty of processes).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

/// The value of `name` in a flat keyed file (`name value` per line).
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_both_hierarchies() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = Cgroups::V1(dir.path().into());
        let memory = dir.path().join("memory/flotilla/podu/c");
        std::fs::create_dir_all(&memory).unwrap();
        std::fs::write(memory.join("memory.usage_in_bytes"), "1000\n").unwrap();
        std::fs::write(memory.join("memory.stat"), "cache 5\ntotal_inactive_file 300\n").unwrap();
        std::fs::write(memory.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n").unwrap();
        assert_eq!(v1.working_set("/flotilla/podu/c"), 700);
        assert!(v1.oom_killed("/flotilla/podu/c"));
        assert!(!v1.oom_killed("/flotilla/podu/other"));
        let v2 = Cgroups::V2(dir.path().into());
        let unified = dir.path().join("flotilla/podu/c");
        std::fs::create_dir_all(&unified).unwrap();
        std::fs::write(unified.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\n").unwrap();
        std::fs::write(unified.join("memory.events"), "low 0\noom 1\noom_kill 0\n").unwrap();
        assert_eq!(v2.cpu("/flotilla/podu/c"), Duration::from_micros(2500));
        assert!(!v2.oom_killed("/flotilla/podu/c"), "an OOM event without a kill is no OOM kill");
    }

    #[test]
    fn a_pods_processes_are_bounded_at_its_own_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let read = |path: &str| std::fs::read_to_string(dir.path().join(path)).unwrap();
        // v1: in the pids hierarchy, where there is one.
        let v1 = Cgroups::V1(dir.path().into());
        v1.limit_pids("/flotilla/besteffort/podu", 64).unwrap();
        assert!(!dir.path().join("pids").exists(), "no pids hierarchy, nothing bounded");
        std::fs::create_dir(dir.path().join("pids")).unwrap();
        v1.limit_pids("/flotilla/besteffort/podu", 64).unwrap();
        assert_eq!(read("pids/flotilla/besteffort/podu/pids.max"), "64");
        // v2: each cgroup above the pod's hands the controller down.
        let unified = dir.path().join("unified");
        std::fs::create_dir(&unified).unwrap();
        std::fs::write(unified.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        Cgroups::V2(unified.clone()).limit_pids("/flotilla/podg", 128).unwrap();
        assert_eq!(read("unified/cgroup.subtree_control"), "+pids");
        assert_eq!(read("unified/flotilla/cgroup.subtree_control"), "+pids");
        assert_eq!(read("unified/flotilla/podg/pids.max"), "128");
    }
}
