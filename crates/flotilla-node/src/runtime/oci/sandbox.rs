//! Pods' sandboxes: each pod's network, UTS and IPC namespaces, kept by bind mounts at
//! `sandboxes/<pod uid>/{net,uts,ipc}` (and its PID namespace at `pid`, with its pause process,
//! when its containers share their processes), made by the pod's first container and removed
//! once the pod is done. A pod released while one of its containers was still being made (its worker
//! stopped it meanwhile) gets no new sandbox: the make is refused, not leaked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a released pod is remembered, so that a container still being made for it when it
/// was released makes no sandbox again.
const REMEMBER_RELEASED: Duration = Duration::from_secs(3600);

/// The namespaces a sandbox keeps.
pub(super) const NAMESPACES: [&str; 3] = ["net", "uts", "ipc"];
/// The PID namespace of a sandbox whose containers share their processes
/// (`shareProcessNamespace`), and the id of its first process, the pause.
pub(super) const PID_NAMESPACE: &str = "pid";
pub(super) const PAUSE: &str = "pause";
/// The pause's id while it is written.
pub(super) const PARTIAL_PAUSE: &str = ".pause";
/// The files a sandbox gives its containers, at `/etc/<name>`, as the kubelet does.
pub(super) const FILES: [&str; 3] = ["hosts", "hostname", "resolv.conf"];

#[derive(Debug, Default)]
enum State {
    #[default]
    None,
    Ready(PathBuf),
    Released(Instant),
}

/// Every pod's sandbox on the node.
#[derive(Debug, Default)]
pub(super) struct Sandboxes {
    /// By pod uid; each behind its own lock, so that making one (a helper process) holds up
    /// nothing but that pod.
    pods: Mutex<HashMap<String, Arc<Mutex<State>>>>,
}

impl Sandboxes {
    fn entry(&self, pod_uid: &str) -> Arc<Mutex<State>> {
        let mut pods = self.pods.lock().expect("sandboxes lock");
        pods.retain(|_, state| !matches!(*state.lock().expect("sandbox lock"), State::Released(at) if at.elapsed() > REMEMBER_RELEASED));
        pods.entry(pod_uid.to_string()).or_default().clone()
    }

    /// The pod's sandbox directory, made by `make` (which is given it) if there is none yet.
    pub(super) fn get_or_make(
        &self,
        pod_uid: &str,
        dir: PathBuf,
        make: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<PathBuf, String> {
        let entry = self.entry(pod_uid);
        let mut state = entry.lock().expect("sandbox lock");
        match &*state {
            State::Ready(dir) => Ok(dir.clone()),
            State::Released(_) => Err("the pod has stopped on this node".into()),
            State::None => match make(&dir) {
                Ok(()) => {
                    *state = State::Ready(dir.clone());
                    Ok(dir)
                }
                Err(err) => {
                    // Whatever of it was made goes.
                    remove(&dir);
                    Err(err)
                }
            },
        }
    }

    /// The sandbox `dir` of the pod `pod_uid`, made by an earlier run of the agent, is the
    /// pod's still.
    pub(super) fn adopt(&self, pod_uid: &str, dir: PathBuf) {
        *self.entry(pod_uid).lock().expect("sandbox lock") = State::Ready(dir);
    }

    /// The pod is done: its sandbox goes, and none is made for it again (blocking).
    pub(super) fn release(&self, pod_uid: &str) {
        let entry = self.entry(pod_uid);
        let mut state = entry.lock().expect("sandbox lock");
        if let State::Ready(dir) = &*state {
            remove(dir);
        }
        *state = State::Released(Instant::now());
    }
}

/// The files of a pod's sandbox, as the kubelet writes them: `/etc/hosts` with the pod's
/// address under its hostname, `/etc/hostname`, and `/etc/resolv.conf` pointing at the
/// cluster DNS with the pod's search path (`dnsPolicy: ClusterFirst`).
pub(super) fn files(launch: &super::Launch) -> [(&'static str, String); 3] {
    let hosts = format!(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{}\t{}\n",
        launch.pod_ip, launch.hostname
    );
    let domain = flotilla_net::dns::CLUSTER_DOMAIN;
    let resolv = match launch.dns {
        Some(server) => format!(
            "search {}.svc.{domain} svc.{domain} {domain}\nnameserver {server}\noptions ndots:5\n",
            launch.namespace
        ),
        None => String::new(),
    };
    [("hosts", hosts), ("hostname", format!("{}\n", launch.hostname)), ("resolv.conf", resolv)]
}

/// Removes a sandbox directory: its pause process (and every process left in its PID
/// namespace with it), its namespaces' mounts, then its files (never recursively, so that a
/// mount that would not go is never walked into). Blocking.
pub(super) fn remove(dir: &Path) {
    if let Some(pause) = pause(dir) {
        pause.kill_and_forget();
    }
    let _ = std::fs::remove_file(dir.join(PAUSE));
    let _ = std::fs::remove_file(dir.join(PARTIAL_PAUSE));
    super::network::PodInterface::detach(dir);
    for file in FILES {
        let _ = std::fs::remove_file(dir.join(file));
    }
    for kind in NAMESPACES.into_iter().chain([PID_NAMESPACE]) {
        let _ = rustix::mount::unmount(dir.join(kind), rustix::mount::UnmountFlags::DETACH);
        let _ = std::fs::remove_file(dir.join(kind));
    }
    let _ = std::fs::remove_dir(dir);
}

/// The PID namespace a container of a pod that shares its processes joins: its sandbox's,
/// while its pause runs. A sandbox made before the node honoured `shareProcessNamespace` has
/// none, and its containers have their own, as they had.
pub(super) fn shared_pids(dir: &Path) -> Result<Option<PathBuf>, String> {
    let kept = dir.join(PID_NAMESPACE);
    if !kept.exists() {
        return Ok(None);
    }
    match pause(dir) {
        Some(_) => Ok(Some(kept)),
        None => Err("the pod's shared PID namespace is gone: its pause process ended, and every process in it \
                     with it; delete the pod to run it again"
            .into()),
    }
}

/// The sandbox's pause process, if it has one that still runs: the process its `pause` file
/// names, if that process is in the PID namespace the sandbox keeps (a pid taken since by
/// another process is not; nor can a process of the namespace have it, since the pause's end
/// ends them all).
fn pause(dir: &Path) -> Option<super::Process> {
    use std::os::unix::fs::MetadataExt;
    let pid: i32 = std::fs::read_to_string(dir.join(PAUSE)).ok()?.trim().parse().ok()?;
    let kept = std::fs::metadata(dir.join(PID_NAMESPACE)).ok()?;
    // Opened before its namespace is looked at, so that the process checked is the one signalled.
    // The keeper that reaps it records its end beside the containers' (`<runtime>/exits`).
    let runtime_dir = dir.parent()?.parent()?;
    let process = super::Process::open(pid, runtime_dir, false).ok()?;
    let found = std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok()?;
    (found.dev() == kept.dev() && found.ino() == kept.ino()).then_some(process)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_pod_gets_no_new_sandbox_and_a_failed_one_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let sandboxes = Sandboxes::default();
        let dir = root.path().join("p1");
        let failed = sandboxes.get_or_make("p1", dir.clone(), |dir| {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("net"), "").unwrap();
            Err("no".into())
        });
        assert!(failed.is_err());
        assert!(!dir.exists(), "a failed make leaves nothing");
        let made = sandboxes.get_or_make("p1", dir.clone(), |dir| std::fs::create_dir(dir).map_err(|e| e.to_string()));
        assert_eq!(made.unwrap(), dir);
        let again = sandboxes.get_or_make("p1", dir.clone(), |_| panic!("made twice"));
        assert_eq!(again.unwrap(), dir);
        sandboxes.release("p1");
        assert!(!dir.exists());
        let late = sandboxes.get_or_make("p1", dir.clone(), |_| panic!("made after its pod was released"));
        assert!(late.unwrap_err().contains("stopped"));
    }
}
