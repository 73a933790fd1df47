//! The OCI runtime: ordinary container images run as Linux processes in namespaces and
//! cgroups, by youki's `libcontainer`, with no daemon and no shim per pod.
//!
//! - A pod's **sandbox** is a network namespace (its loopback up), a UTS namespace (hostname =
//!   the pod's name) and an IPC namespace, kept by bind mounts, which its containers join; each
//!   container has its own mount and PID namespaces.
//! - A container's **root filesystem** is its image's snapshot (`images::container`) as the
//!   lower layer of an overlay, with a writable layer of its own.
//! - It is **created** by the helper process (`helper.rs`); the agent, a child subreaper,
//!   inherits its init process when the helper exits, **starts** it (libcontainer's start, no
//!   fork), and waits for its end on a pidfd, which also carries the stop signals, so that a
//!   reused pid is never signalled.
//! - Its **output** is two pipes the agent reads into the CRI log.
//! - Its **cgroup** is `/flotilla[/<qos>]/pod<uid>/<id>`, as the kubelet's `kubepods` tree;
//!   its memory and CPU are read from there, and an OOM kill is told by its counter.

mod cgroup;
pub(crate) mod helper;
mod spec;

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_wasm::{OutputSink, Requests, Stream};
use futures::FutureExt;
use futures::future::BoxFuture;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};
use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;

use super::{ContainerRuntime, ContainerUsage, Control, Created, Exit, ExitReason, Launch, Meter, Started};
use crate::images::container::snapshot;
use crate::images::{Image, ImageStore, Kind};
use crate::logs::ContainerLog;
use cgroup::Cgroups;

/// The `RuntimeClass` handler of Linux containers.
pub(crate) const HANDLER: &str = "oci";

/// How long a container's output may still arrive after it exits (its pipes close when the
/// last process of its PID namespace ends, at once unless something else holds them).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// Runs Linux containers.
#[derive(Debug, Clone)]
pub(crate) struct OciRuntime(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    /// The program whose `oci-helper` creates containers and sandboxes: the agent's own.
    helper: PathBuf,
    store: ImageStore,
    /// `bundles/<id>/` (`config.json`, `rootfs`, the overlay's layers), `sandboxes/<pod uid>/`.
    dir: PathBuf,
    /// libcontainer's state of each container.
    state: PathBuf,
    cgroups: Arc<Cgroups>,
    /// The sandbox of each pod with a container here, by pod uid.
    sandboxes: Mutex<HashMap<String, PathBuf>>,
}

impl OciRuntime {
    /// A runtime keeping its state under `dir`, creating containers with `helper`. Makes the
    /// agent a child subreaper, so that containers' init processes become its children.
    pub(crate) fn new(helper: PathBuf, store: ImageStore, dir: PathBuf) -> Result<OciRuntime, String> {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(|e| format!("becoming the containers' subreaper: {e}"))?;
        for sub in ["bundles", "sandboxes", "state"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("creating {}: {e}", dir.join(sub).display()))?;
        }
        Ok(OciRuntime(Arc::new(Shared {
            helper,
            store,
            state: dir.join("state"),
            dir,
            cgroups: Arc::new(Cgroups::detect()),
            sandboxes: Mutex::default(),
        })))
    }
}

impl Shared {
    /// Runs one step of the helper: its failure, as it wrote it.
    fn helper(&self, args: &[&str], stdout: Option<OwnedFd>, stderr: Option<OwnedFd>) -> Result<(), String> {
        let errors = tempfile::NamedTempFile::new_in(&self.dir).map_err(|e| format!("running the helper: {e}"))?;
        let mut command = std::process::Command::new(&self.helper);
        command.arg("oci-helper").args(args).arg("--error-file").arg(errors.path());
        command.stdin(std::process::Stdio::null());
        command.stdout(stdout.map_or_else(std::process::Stdio::null, std::process::Stdio::from));
        command.stderr(stderr.map_or_else(std::process::Stdio::null, std::process::Stdio::from));
        let status = command.status().map_err(|e| format!("running {}: {e}", self.helper.display()))?;
        if status.success() {
            return Ok(());
        }
        let written = std::fs::read_to_string(errors.path()).unwrap_or_default();
        Err(if written.is_empty() { format!("the OCI helper failed: {status}") } else { written })
    }

    /// The pod's sandbox, made by its first container.
    fn sandbox(&self, launch: &Launch) -> Result<PathBuf, String> {
        let mut sandboxes = self.sandboxes.lock().expect("sandboxes lock");
        if let Some(dir) = sandboxes.get(&launch.pod_uid) {
            return Ok(dir.clone());
        }
        let dir = self.dir.join("sandboxes").join(&launch.pod_uid);
        let dir_text = dir.to_string_lossy().into_owned();
        self.helper(&["sandbox", "--dir", &dir_text, "--hostname", &launch.pod_name], None, None)
            .map_err(|e| format!("creating the pod's sandbox: {e}"))?;
        sandboxes.insert(launch.pod_uid.clone(), dir.clone());
        Ok(dir)
    }

    /// Everything one container's create does, off the async threads.
    fn create_blocking(&self, image: &Image, launch: Launch) -> Result<OciRun, String> {
        if launch.security.privileged {
            return Err("privileged containers are not allowed on this node".into());
        }
        let snapshot = snapshot(&self.store, image)?;
        let sandbox = self.sandbox(&launch)?;
        let bundle = self.dir.join("bundles").join(&launch.id);
        let rootfs = bundle.join("rootfs");
        for dir in [bundle.join("upper"), bundle.join("work"), rootfs.clone()] {
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        // The overlay's root takes the upper layer's mode: the image's `/`, not the node's 0700.
        let root_mode = std::fs::metadata(&snapshot.rootfs).map_err(|e| format!("reading the image's root: {e}"))?;
        std::fs::set_permissions(bundle.join("upper"), root_mode.permissions())
            .map_err(|e| format!("creating the container's layer: {e}"))?;
        let mut run = OciRun {
            id: launch.id.clone(),
            bundle: bundle.clone(),
            state: self.state.clone(),
            cgroup: cgroup_path(&launch),
            cgroups: self.cgroups.clone(),
            process: None,
            output: launch.output.clone(),
            pipes: None,
            removed: false,
        };
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            snapshot.rootfs.display(),
            bundle.join("upper").display(),
            bundle.join("work").display()
        );
        let options = std::ffi::CString::new(options).map_err(|_| "an overlay path holds a NUL byte".to_string())?;
        rustix::mount::mount("overlay", &rootfs, "overlay", rustix::mount::MountFlags::empty(), options.as_c_str())
            .map_err(|e| format!("mounting the container's root filesystem (overlay): {e}"))?;
        let read = |path: &str| std::fs::read_to_string(rootfs.join(path)).unwrap_or_default();
        let image_user = spec::image_user(
            snapshot.config.user.as_deref().unwrap_or_default(),
            &read("etc/passwd"),
            &read("etc/group"),
        )?;
        let id = |value: Option<i64>, what: &str| -> Result<Option<u32>, String> {
            value.map(|v| u32::try_from(v).map_err(|_| format!("{what} {v} is not a user or group id"))).transpose()
        };
        // A `runAsUser` without a `runAsGroup` takes that user's group from the image's
        // /etc/passwd, as containerd does (root's when it has none).
        let uid = id(launch.security.run_as_user, "runAsUser")?;
        let group_of = |uid: u32| spec::image_user(&uid.to_string(), &read("etc/passwd"), "").map_or(0, |(_, gid)| gid);
        let user = match (uid, id(launch.security.run_as_group, "runAsGroup")?) {
            (Some(uid), Some(gid)) => (uid, gid),
            (Some(uid), None) => (uid, group_of(uid)),
            (None, Some(gid)) => (image_user.0, gid),
            (None, None) => image_user,
        };
        let agent = std::process::id();
        let mounts = launch
            .mounts
            .iter()
            .map(|m| (PathBuf::from(format!("/proc/{agent}/fd/{}", raw_fd(&m.dir))), m.path.clone(), m.read_only))
            .collect();
        let inputs = spec::Inputs {
            image: snapshot.config,
            command: launch.command,
            args: launch.args,
            env: launch.env,
            working_dir: launch.working_dir,
            user,
            read_only_root: launch.security.read_only_root,
            add_capabilities: launch.security.add_capabilities,
            drop_capabilities: launch.security.drop_capabilities,
            no_new_privileges: launch.security.allow_privilege_escalation == Some(false),
            rootfs: rootfs.clone(),
            mounts,
            network_ns: sandbox.join("net"),
            uts_ns: sandbox.join("uts"),
            ipc_ns: sandbox.join("ipc"),
            cgroup: run.cgroup.clone(),
            memory_limit: launch.memory_limit,
            cpu_limit: launch.cpu_limit,
            cpu_request: launch.cpu_request,
            pids_limit: None,
        };
        let config = spec::spec(&inputs)?;
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&config).expect("a spec serialises"))
            .map_err(|e| format!("writing the container's config: {e}"))?;
        let (stdout_read, stdout_write) = std::io::pipe().map_err(|e| format!("creating the output pipes: {e}"))?;
        let (stderr_read, stderr_write) = std::io::pipe().map_err(|e| format!("creating the output pipes: {e}"))?;
        let pid_file = bundle.join("pid");
        let (bundle_text, state_text, pid_text) =
            (bundle.to_string_lossy(), self.state.to_string_lossy(), pid_file.to_string_lossy());
        self.helper(
            &["create", "--root", &state_text, "--bundle", &bundle_text, "--id", &launch.id, "--pid-file", &pid_text],
            Some(stdout_write.into()),
            Some(stderr_write.into()),
        )?;
        // The volumes' handles were needed until the container's mounts were made.
        drop(launch.mounts);
        run.pipes = Some((stdout_read.into(), stderr_read.into()));
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .and_then(Pid::from_raw)
            .ok_or("the container's pid file is unreadable")?;
        let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())
            .map_err(|e| format!("opening the container's process: {e}"))?;
        run.process = Some(Arc::new(pidfd));
        Ok(run)
    }
}

fn raw_fd(file: &std::fs::File) -> i32 {
    use std::os::fd::AsRawFd;
    file.as_raw_fd()
}

/// `/flotilla[/<qos>]/pod<uid>/<id>`: Guaranteed pods directly under the root, as upstream's.
fn cgroup_path(launch: &Launch) -> String {
    match launch.qos {
        "Guaranteed" => format!("/flotilla/pod{}/{}", launch.pod_uid, launch.id),
        qos => format!("/flotilla/{}/pod{}/{}", qos.to_lowercase(), launch.pod_uid, launch.id),
    }
}

impl ContainerRuntime for OciRuntime {
    fn handler(&self) -> &'static str {
        HANDLER
    }

    fn version(&self) -> String {
        "youki://0.7.0".into()
    }

    fn runs(&self, kind: Kind) -> bool {
        kind == Kind::Container
    }

    fn create(&self, image: Image, launch: Launch) -> BoxFuture<'_, Result<Box<dyn Created>, String>> {
        let shared = self.0.clone();
        async move {
            // Dropped before it is done (the pod stopped meanwhile), what it made is removed
            // when its result is dropped.
            let created = tokio::task::spawn_blocking(move || shared.create_blocking(&image, launch))
                .await
                .map_err(|e| format!("creating the container: {e}"))??;
            Ok(Box::new(created) as Box<dyn Created>)
        }
        .boxed()
    }

    fn release(&self, pod_uid: &str) {
        let Some(dir) = self.0.sandboxes.lock().expect("sandboxes lock").remove(pod_uid) else { return };
        let cgroups = self.0.cgroups.clone();
        let pod_uid = pod_uid.to_string();
        tokio::task::spawn_blocking(move || {
            for kind in ["net", "uts", "ipc"] {
                let _ = rustix::mount::unmount(dir.join(kind), rustix::mount::UnmountFlags::DETACH);
            }
            let _ = std::fs::remove_dir_all(&dir);
            cgroups.remove_pod(&pod_uid);
        });
    }
}

/// A container created, then started: its init process, its output, and where it lives.
#[derive(Debug)]
struct OciRun {
    id: String,
    bundle: PathBuf,
    state: PathBuf,
    cgroup: String,
    cgroups: Arc<Cgroups>,
    /// Its init process's pidfd, once created.
    process: Option<Arc<OwnedFd>>,
    output: Arc<ContainerLog>,
    /// The read ends of its stdout and stderr.
    pipes: Option<(OwnedFd, OwnedFd)>,
    /// Whether it was removed.
    removed: bool,
}

impl OciRun {
    /// Removes the container: its processes (if they still run), state, cgroup, root
    /// filesystem and bundle. Whatever of it was made, up to all of it.
    fn remove(&mut self) {
        if std::mem::replace(&mut self.removed, true) {
            return;
        }
        if let Some(pidfd) = self.process.take() {
            // Gone and reaped already when it ended by itself: both calls then fail at once.
            let _ = rustix::process::pidfd_send_signal(&*pidfd, Signal::KILL);
            let _ = rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED);
        }
        if let Ok(mut container) = libcontainer::container::Container::load(self.state.join(&self.id)) {
            let _ = container.delete(true);
        }
        let _ = rustix::mount::unmount(self.bundle.join("rootfs"), rustix::mount::UnmountFlags::DETACH);
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

impl Drop for OciRun {
    /// A run whose create or start failed, or whose exit future was dropped (the agent
    /// stopping), is removed here; one that ended was removed already. (An agent that stops
    /// takes its containers with it: re-adopting them is not done yet.)
    fn drop(&mut self) {
        self.remove();
    }
}

impl Created for OciRun {
    fn start(mut self: Box<Self>) -> BoxFuture<'static, Result<Started, String>> {
        async move {
            let state = self.state.join(&self.id);
            tokio::task::spawn_blocking(move || {
                libcontainer::container::Container::load(state)
                    .and_then(|mut c| c.start())
                    .map_err(|e| format!("starting the container: {e}"))
            })
            .await
            .map_err(|e| format!("starting the container: {e}"))??;
            let pidfd = self.process.clone().expect("a created container has its process");
            let (stdout, stderr) = self.pipes.take().expect("a created container has its pipes");
            let pumps =
                [pump(stdout, Stream::Stdout, self.output.clone()), pump(stderr, Stream::Stderr, self.output.clone())];
            let control = Arc::new(OciControl { pidfd: pidfd.clone() });
            let meter = Arc::new(OciMeter { cgroups: self.cgroups.clone(), cgroup: self.cgroup.clone() });
            let usage = ContainerUsage { meter, requests: Requests::new(), started: jiff::Timestamp::now() };
            let exit = async move {
                let status = wait(&pidfd).await;
                for pump in pumps {
                    let _ = tokio::time::timeout(OUTPUT_DRAIN, pump).await;
                }
                let mut run = self;
                tokio::task::spawn_blocking(move || {
                    // As the kubelet: a container the kernel's OOM killer ended is OOMKilled.
                    let oom = run.cgroups.oom_killed(&run.cgroup);
                    run.remove();
                    match status {
                        Ok(code) if oom => Exit { code, reason: ExitReason::OomKilled, message: None },
                        Ok(code) => Exit::exited(code),
                        Err(message) => Exit { code: 128, reason: ExitReason::Error, message: Some(message) },
                    }
                })
                .await
                .unwrap_or_else(|e| Exit {
                    code: 128,
                    reason: ExitReason::Error,
                    message: Some(e.to_string()),
                })
            };
            Ok(Started { control, usage, exit: exit.boxed() })
        }
        .boxed()
    }
}

/// Copies one of a container's output pipes into its log until the pipe closes.
fn pump(fd: OwnedFd, stream: Stream, log: Arc<ContainerLog>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else { return };
        let mut buffer = vec![0; 16 << 10];
        while let Ok(n) = pipe.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            log.write(stream, &buffer[..n]);
        }
    })
}

/// The exit of the process behind `pidfd` (a child of the agent): its code as upstream shows
/// it (128 + the signal for one killed by a signal).
async fn wait(pidfd: &Arc<OwnedFd>) -> Result<i32, String> {
    let owned = pidfd.as_fd().try_clone_to_owned().map_err(|e| format!("waiting for the container: {e}"))?;
    // Deprecated for a `T` whose descriptor could change or close under it; an `OwnedFd` is
    // owned by the `AsyncFd` for its whole life, which is what `register` asks (unsafely).
    #[allow(deprecated)]
    let readable = AsyncFd::new(owned).map_err(|e| format!("waiting for the container: {e}"))?;
    loop {
        let mut guard = readable.readable().await.map_err(|e| format!("waiting for the container: {e}"))?;
        match rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED | WaitIdOptions::NOHANG) {
            Ok(Some(status)) => {
                if let Some(code) = status.exit_status() {
                    return Ok(code);
                }
                if let Some(signal) = status.terminating_signal() {
                    return Ok(128 + signal);
                }
                return Err("the container's process ended in a way that is neither an exit nor a signal".into());
            }
            Ok(None) => guard.clear_ready(),
            Err(e) => return Err(format!("waiting for the container: {e}")),
        }
    }
}

#[derive(Debug)]
struct OciControl {
    pidfd: Arc<OwnedFd>,
}

impl Control for OciControl {
    fn terminate(&self) -> bool {
        rustix::process::pidfd_send_signal(&*self.pidfd, Signal::TERM).is_ok()
    }

    fn kill(&self) {
        let _ = rustix::process::pidfd_send_signal(&*self.pidfd, Signal::KILL);
    }
}

#[derive(Debug)]
struct OciMeter {
    cgroups: Arc<Cgroups>,
    cgroup: String,
}

impl Meter for OciMeter {
    fn memory(&self) -> u64 {
        self.cgroups.working_set(&self.cgroup)
    }

    fn cpu(&self) -> Duration {
        self.cgroups.cpu(&self.cgroup)
    }
}

/// Reads a small file of a cgroup, empty if it cannot.
fn read_small(path: &Path) -> String {
    let mut text = String::new();
    let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    text
}
