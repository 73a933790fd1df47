//! The OCI runtime: ordinary container images run as Linux processes in namespaces and
//! cgroups, by youki's `libcontainer`, with no daemon and no shim per pod.
//!
//! - A pod's **sandbox** is a network namespace (its loopback up), a UTS namespace (hostname =
//!   the pod's name) and an IPC namespace, kept by bind mounts, which its containers join; each
//!   container has its own mount and PID namespaces, unless the pod shares its processes
//!   (`shareProcessNamespace`): then the sandbox keeps a PID namespace too, whose first process
//!   is the pod's pause.
//! - A container's **root filesystem** is its image's snapshot (`images::container`) as the
//!   lower layer of an overlay, with a writable layer of its own.
//! - It is **created** by the helper process (`helper.rs`), which the keeper (`keeper.rs`, one
//!   small process per node that outlives the agent) runs: the keeper, a child subreaper,
//!   inherits its init process when the helper exits, reaps it when it ends and records how.
//!   The agent **starts** it (libcontainer's start, no fork), signals it through a pidfd (a
//!   reused pid is never signalled), and learns its end when the pidfd turns readable, from the
//!   keeper's record.
//! - Its **output** is two FIFOs in its bundle, which it holds open for reading too (a write
//!   never fails for want of a reader) and the agent reads into the CRI log.
//! - An agent that starts **adopts** what an earlier one left: a container still running (its
//!   bundle, its pod's sandbox) waits for its pod's worker to take it up as the run its status
//!   shows, with no restart; one that ended meanwhile ends with the code the keeper recorded.
//!   What no pod takes up once the node's pods are listed is removed.
//! - Its **cgroup** is `/flotilla[/<qos>]/pod<uid>/<id>`, as the kubelet's `kubepods` tree;
//!   its memory and CPU are read from there, and an OOM kill is told by its counter.

mod cgroup;
pub(crate) mod helper;
mod keeper;
mod network;
mod sandbox;
mod seccomp;
mod spec;

use std::collections::HashSet;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_wasm::{OutputSink, Requests, Stream};
use futures::FutureExt;
use futures::future::BoxFuture;
use rustix::fs::OFlags;
use rustix::mount::UnmountFlags;
use rustix::process::{Pid, PidfdFlags, Signal};
use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;

use super::{
    ContainerRuntime, ContainerUsage, Control, CreateError, Created, EXEC_OUTPUT, Executed, Exit, ExitReason, Launch,
    LeftRun, Meter, Spawned, Started, Streams,
};
use crate::images::container::snapshot;
use crate::images::{Image, ImageStore, Kind};
use crate::logs::ContainerLog;
use cgroup::Cgroups;
use keeper::Keeper;
use sandbox::Sandboxes;

/// The `RuntimeClass` handler of Linux containers.
pub(crate) const HANDLER: &str = "oci";

/// The FIFOs in a container's bundle its output goes to: stdout, stderr.
const OUTPUT: [&str; 2] = ["stdout", "stderr"];
/// How long the keeper may take to record a container's end once it has ended.
const EXIT_RECORD: Duration = Duration::from_secs(5);
/// How long a container's output may still arrive after it exits (its FIFOs have no writer
/// once the last process of its PID namespace ends, at once unless something else holds them).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// What of a container's output is read once it has ended without waiting for its log: more
/// than its pipe holds.
const DRAIN_BYTES: usize = 1 << 20;
/// How long the agent waits for the keeper's answer to a step: longer than the keeper lets the
/// step run, so that a step that took too long has been killed (and is not still at work on
/// what the agent then removes) when the agent hears of it.
const HELPER_TIMEOUT: Duration = Duration::from_secs(keeper::STEP_TIMEOUT.as_secs() + 5);
/// The most of an image's `/etc/passwd` or `/etc/group` the agent reads.
const MAX_USER_TABLE: u64 = 1 << 20;

/// The capabilities a container may add beyond the default set. With no user namespace yet
/// (and a pod free to ask for no seccomp profile), a capability such as `SYS_ADMIN` would reach
/// the host; the pod's own network is all `NET_ADMIN` governs.
const ADDABLE_CAPABILITIES: [&str; 1] = ["CAP_NET_ADMIN"];

/// Runs Linux containers.
#[derive(Debug, Clone)]
pub(crate) struct OciRuntime(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    /// The program whose `oci-helper` creates containers and sandboxes: the agent's own.
    helper: PathBuf,
    store: ImageStore,
    /// `bundles/<id>/` (`config.json`, `rootfs`, the overlay's layers, the volumes' mount
    /// points), `sandboxes/<pod uid>/`.
    dir: PathBuf,
    /// libcontainer's state of each container.
    state: PathBuf,
    cgroups: Arc<Cgroups>,
    sandboxes: Sandboxes,
    /// The node's pod range: pods' addresses, and its first, their gateway.
    pod_range: flotilla_api::Cidr,
    /// The processes a pod's containers may have together (`--pod-max-pids`), if bounded.
    pod_max_pids: Option<u32>,
    /// Creates the containers, and is their parent.
    keeper: Keeper,
    /// Containers an earlier run of the agent left running, until their pods' workers adopt
    /// them (or the pods are found gone): by id.
    adoptable: std::sync::Mutex<std::collections::HashMap<String, LeftBehind>>,
    /// Every container created or adopted and not yet removed: its pod's uid, by id. A run
    /// whose exit future is dropped leaves its container running: its pod's release removes it.
    containers: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

/// A container an earlier run of the agent left.
#[derive(Debug)]
struct LeftBehind {
    run: OciRun,
    pod_uid: String,
    /// Whose run it is, if its spec says (one an earlier version of the agent made does not).
    labels: Option<spec::RunLabels>,
    /// When it was made.
    created: jiff::Timestamp,
    /// How it ended, if it ended while no agent watched.
    ended: Option<Ended>,
}

/// How a container that ended while no agent watched ended.
#[derive(Debug, Clone, Copy)]
struct Ended {
    code: i32,
    /// The kernel's OOM killer ended it.
    oom: bool,
}

impl OciRuntime {
    /// A runtime keeping its state under `dir`, running commands in containers with `helper`,
    /// keeping for adoption what an earlier run of the agent left running, and removing the
    /// rest of what it left.
    pub(crate) fn new(
        helper: PathBuf,
        store: ImageStore,
        dir: PathBuf,
        pod_range: flotilla_api::Cidr,
        pod_max_pids: Option<u32>,
    ) -> Result<OciRuntime, String> {
        if pod_range.network.is_loopback() {
            let node_loopback: flotilla_api::Cidr = network::NODE_LOOPBACK.parse().expect("a CIDR");
            if pod_range.overlaps(node_loopback) {
                return Err(format!(
                    "the pod range {pod_range} overlaps the node's own loopback addresses ({node_loopback}), which \
                     containers may not reach"
                ));
            }
            network::guard_node_loopback()?;
        }
        // The agent is no subreaper: an `exec` helper killed half-way (a probe given up) would
        // leave it the command's process, a zombie that nothing reaps and that keeps the
        // container's PID namespace, and so the container, from ever ending.
        for sub in ["bundles", "sandboxes", "state", keeper::EXITS] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("creating {}: {e}", dir.join(sub).display()))?;
        }
        let shared = Shared {
            helper,
            store,
            state: dir.join("state"),
            dir: dir.clone(),
            cgroups: Arc::new(Cgroups::detect()),
            sandboxes: Sandboxes::default(),
            pod_range,
            pod_max_pids,
            keeper: Keeper::new(dir.clone()),
            adoptable: Default::default(),
            containers: Default::default(),
        };
        shared.collect_garbage();
        Ok(OciRuntime(Arc::new(shared)))
    }
}

impl Shared {
    /// Takes up what an earlier run of the agent left: a container still running is kept for
    /// its pod's worker to adopt, with its bundle and its pod's sandbox; everything else of
    /// theirs goes (a container that was created but never started, one that ended, bundles and
    /// sandboxes of no such container, empty cgroups).
    fn collect_garbage(&self) {
        let entries = |dir: &Path| std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path());
        let mut adoptable = self.adoptable.lock().expect("adoptable lock");
        for state in entries(&self.state) {
            let Ok(mut container) = libcontainer::container::Container::load(state.clone()) else {
                let _ = std::fs::remove_dir_all(&state);
                continue;
            };
            match self.left_behind(&container) {
                Some(left) => {
                    self.containers.lock().expect("containers lock").insert(left.run.id.clone(), left.pod_uid.clone());
                    adoptable.insert(left.run.id.clone(), left);
                }
                // Kills what still runs (through its cgroup), and removes its cgroup and state.
                None => {
                    let _ = container.delete(true);
                    let _ = std::fs::remove_dir_all(&state);
                }
            }
        }
        let name = |path: &Path| path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        for bundle in entries(&self.dir.join("bundles")) {
            if !adoptable.contains_key(&name(&bundle)) {
                remove_bundle(&bundle);
            }
        }
        for dir in entries(&self.dir.join("sandboxes")) {
            let uid = name(&dir);
            if adoptable.values().any(|left| left.pod_uid == uid) {
                self.sandboxes.adopt(&uid, dir);
            } else {
                sandbox::remove(&dir);
            }
        }
        self.cgroups.remove_all();
    }

    /// A container an earlier agent started, as a run to adopt: one that still runs (the
    /// process its state names, if that process is in its cgroup still: a pid taken by another
    /// process since is not it), or one that ended while no agent watched, whose end the keeper
    /// recorded. Its cgroup and its pod come from its spec.
    fn left_behind(&self, container: &libcontainer::container::Container) -> Option<LeftBehind> {
        use libcontainer::container::ContainerStatus;
        let id = container.id().to_string();
        let pid = container.pid()?.as_raw();
        let bundle = self.dir.join("bundles").join(&id);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).ok()?).ok()?;
        let cgroup = config["linux"]["cgroupsPath"].as_str()?.to_string();
        // The pod's uid names its cgroup (`…/pod<uid>/<id>`) and its sandbox.
        let pod_uid = cgroup.rsplit('/').nth(1)?.strip_prefix("pod")?.to_string();
        let labels = spec::RunLabels::of(&config).filter(|labels| labels.pod_uid == pod_uid);
        let created = container
            .created()
            .and_then(|at| jiff::Timestamp::new(at.timestamp(), at.timestamp_subsec_nanos() as i32).ok())
            .unwrap_or_else(jiff::Timestamp::now);
        let (process, ended) = match container.status() {
            ContainerStatus::Running => {
                let in_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
                if !in_cgroup.lines().any(|line| line.ends_with(&cgroup)) {
                    return None;
                }
                (Some(Process::open(pid, &self.dir, false).ok()?), None)
            }
            ContainerStatus::Stopped => {
                let record = self.dir.join(keeper::EXITS).join(pid.to_string());
                let code = std::fs::read_to_string(&record).ok()?.trim().parse().ok()?;
                let _ = std::fs::remove_file(&record);
                // Read now: the empty cgroups go before any worker adopts it.
                (None, Some(Ended { code, oom: self.cgroups.oom_killed(&cgroup) }))
            }
            _ => return None,
        };
        let run = OciRun {
            id,
            helper: self.helper.clone(),
            bundle,
            state: self.state.clone(),
            cgroup,
            cgroups: self.cgroups.clone(),
            process,
            // Its log is its worker's to give.
            output: Arc::new(ContainerLog::discarding()),
            output_fifos: Vec::new(),
            containers: self.containers.clone(),
            started: false,
            exit_read: false,
            removed: false,
        };
        Some(LeftBehind { run, pod_uid, labels, created, ended })
    }

    /// Kills and removes the container `id`, whose run was let go of while it ran. Blocking.
    fn remove_container(&self, id: &str) {
        let state = self.state.join(id);
        if let Ok(mut container) = libcontainer::container::Container::load(state.clone()) {
            if let Some(process) = container.pid().and_then(|pid| Process::open(pid.as_raw(), &self.dir, false).ok()) {
                process.kill_and_forget();
            }
            let _ = container.delete(true);
        }
        let _ = std::fs::remove_dir_all(&state);
        remove_bundle(&self.dir.join("bundles").join(id));
        self.containers.lock().expect("containers lock").remove(id);
    }

    /// The pod's sandbox, made by its first container: its namespaces, its interface, and
    /// the files its containers see at `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`.
    fn sandbox(&self, launch: &Launch) -> Result<PathBuf, String> {
        let dir = self.dir.join("sandboxes").join(&launch.pod_uid);
        let interface = network::PodInterface::new(&launch.pod_uid, launch.pod_ip, self.pod_range);
        self.sandboxes
            .get_or_make(&launch.pod_uid, dir, |dir| {
                let errors = tempfile::Builder::new()
                    .prefix(".sandbox-")
                    .tempfile_in(&self.dir)
                    .map_err(|e| format!("running the helper: {e}"))?;
                let (dir_text, errors_text) = (dir.to_string_lossy(), errors.path().to_string_lossy());
                let mut args = vec!["sandbox", "--dir", &dir_text, "--hostname", &launch.hostname];
                let network = interface.helper_args();
                args.extend(network.iter().map(String::as_str));
                if launch.share_pids {
                    args.push("--share-pids");
                }
                args.extend(["--error-file", &errors_text]);
                // Through the keeper, which a shared PID namespace's first process is left to.
                match self.keeper.run_step(&args, HELPER_TIMEOUT)? {
                    0 => {}
                    code => return Err(step_failure(errors.path(), format!("exit code {code}"))),
                }
                interface.attach(dir)?;
                for (name, content) in sandbox::files(launch) {
                    std::fs::write(dir.join(name), content).map_err(|e| format!("writing /etc/{name}: {e}"))?;
                }
                Ok(())
            })
            .map_err(|e| format!("creating the pod's sandbox: {e}"))
    }

    /// Everything one container's create does, off the async threads.
    fn create_blocking(&self, image: &Image, launch: Launch) -> Result<OciRun, CreateError> {
        if launch.security.privileged {
            return Err(CreateError::Config("privileged containers are not allowed on this node".into()));
        }
        // The kubelet's `--seccomp-default`: a container that names no profile runs under
        // `RuntimeDefault`.
        let seccomp = match launch.security.seccomp.as_deref() {
            None | Some("RuntimeDefault") => true,
            Some("Unconfined") => false,
            Some(other) => {
                return Err(CreateError::Config(format!(
                    "seccomp profile type {other:?} is not supported on this node (it runs RuntimeDefault and \
                     Unconfined)"
                )));
            }
        };
        let failed = CreateError::Failed;
        let snapshot = snapshot(&self.store, image).map_err(failed)?;
        let bundle = self.dir.join("bundles").join(&launch.id);
        let rootfs = bundle.join("rootfs");
        // From here on, what is made is removed when `run` is dropped, unless it starts.
        let mut run = OciRun {
            id: launch.id.clone(),
            helper: self.helper.clone(),
            bundle: bundle.clone(),
            state: self.state.clone(),
            cgroup: cgroup_path(&launch),
            cgroups: self.cgroups.clone(),
            process: None,
            output: launch.output.clone(),
            output_fifos: Vec::new(),
            containers: self.containers.clone(),
            started: false,
            exit_read: false,
            removed: false,
        };
        for dir in [bundle.join("upper"), bundle.join("work"), bundle.join("mounts"), rootfs.clone()] {
            std::fs::create_dir_all(&dir).map_err(|e| failed(format!("creating {}: {e}", dir.display())))?;
        }
        // The overlay's root takes the upper layer's mode: the image's `/`, not the node's 0700.
        let root_mode =
            std::fs::metadata(&snapshot.rootfs).map_err(|e| failed(format!("reading the image's root: {e}")))?;
        std::fs::set_permissions(bundle.join("upper"), root_mode.permissions())
            .map_err(|e| failed(format!("creating the container's layer: {e}")))?;
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            snapshot.rootfs.display(),
            bundle.join("upper").display(),
            bundle.join("work").display()
        );
        let options = std::ffi::CString::new(options).map_err(|_| failed("an overlay path holds a NUL byte".into()))?;
        // No device node in it opens a device (its `/dev` is a mount of its own).
        rustix::mount::mount("overlay", &rootfs, "overlay", rustix::mount::MountFlags::NODEV, options.as_c_str())
            .map_err(|e| failed(format!("mounting the container's root filesystem (overlay): {e}")))?;
        let user = user(&rootfs, &snapshot.config, &launch)?;
        // Each volume is bound from the handle the node opened to a mount point of the
        // bundle's, which is what the container's spec names: a path the node owns, which no
        // container can swap for a link (youki resolves a mount's source by name).
        let mut mounts = Vec::new();
        for (i, mount) in launch.mounts.iter().enumerate() {
            let point = bundle.join("mounts").join(i.to_string());
            // A file is bound from the handle the node held it by, onto a file.
            let created = match &mount.file {
                None => std::fs::create_dir(&point),
                Some(_) => std::fs::File::create_new(&point).map(drop),
            };
            created.map_err(|e| failed(format!("creating {}: {e}", point.display())))?;
            let source = mount.file.as_ref().map_or_else(|| mount.dir.as_raw_fd(), |f| f.file.as_raw_fd());
            rustix::mount::mount_bind(format!("/proc/self/fd/{source}"), &point)
                .map_err(|e| failed(format!("binding volume mount {}: {e}", mount.path)))?;
            mounts.push((point, mount.path.clone(), mount.read_only));
        }
        // The bound mount points hold the volumes now: the handles are not needed.
        let launch = Launch { mounts: Vec::new(), ..launch };
        // Set at every create, not once with the sandbox: a pod's cgroup goes with its last
        // container (an agent that starts removes the empty ones), and the bound with it.
        if let Some(max) = self.pod_max_pids {
            let pod = run.cgroup.rsplit_once('/').map_or("", |(pod, _)| pod);
            self.cgroups.limit_pids(pod, max).map_err(failed)?;
        }
        let sandbox = self.sandbox(&launch).map_err(failed)?;
        for name in sandbox::FILES {
            mounts.push((sandbox.join(name), format!("/etc/{name}"), false));
        }
        let inputs = spec::Inputs {
            labels: spec::RunLabels {
                pod_uid: launch.pod_uid.clone(),
                container: launch.container.clone(),
                attempt: launch.attempt,
            },
            image: snapshot.config,
            command: launch.command,
            args: launch.args,
            env: launch.env,
            working_dir: launch.working_dir,
            user,
            read_only_root: launch.security.read_only_root,
            add_capabilities: launch.security.add_capabilities,
            drop_capabilities: launch.security.drop_capabilities,
            addable_capabilities: ADDABLE_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            // A device node made in the container opens what it names where no device
            // controller bounds it: no making them there.
            withheld_capabilities: if self.cgroups.controls_devices() { Vec::new() } else { vec!["CAP_MKNOD".into()] },
            no_new_privileges: launch.security.allow_privilege_escalation == Some(false),
            seccomp,
            rootfs: rootfs.clone(),
            mounts,
            network_ns: sandbox.join("net"),
            uts_ns: sandbox.join("uts"),
            ipc_ns: sandbox.join("ipc"),
            pid_ns: if launch.share_pids { sandbox::shared_pids(&sandbox).map_err(failed)? } else { None },
            cgroup: run.cgroup.clone(),
            memory_limit: launch.memory_limit,
            swap_limit: self.cgroups.limits_swap(),
            cpu_limit: launch.cpu_limit,
            cpu_request: launch.cpu_request,
            pids_limit: None,
        };
        let config = spec::spec(&inputs).map_err(CreateError::Config)?;
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&config).expect("a spec serialises"))
            .map_err(|e| failed(format!("writing the container's config: {e}")))?;
        // Opened for reading before the container can write: what it writes is kept from the
        // first byte, even if it has ended before it is read.
        let mut readers = Vec::new();
        for name in OUTPUT {
            let fifo = bundle.join(name);
            rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, 0o600.into(), 0)
                .and_then(|()| rustix::fs::open(&fifo, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, 0.into()))
                .map(|reader| readers.push(reader))
                .map_err(|e| failed(format!("creating the container's {name}: {e}")))?;
        }
        run.output_fifos = readers;
        let pid_file = bundle.join("pid");
        let errors = tempfile::Builder::new()
            .prefix(".create-")
            .tempfile_in(&bundle)
            .map_err(|e| failed(format!("creating the container: {e}")))?;
        let (stdout, stderr) = (bundle.join(OUTPUT[0]), bundle.join(OUTPUT[1]));
        let args = [
            "create",
            "--root",
            &self.state.to_string_lossy(),
            "--bundle",
            &bundle.to_string_lossy(),
            "--id",
            &launch.id,
            "--pid-file",
            &pid_file.to_string_lossy(),
            "--stdout",
            &stdout.to_string_lossy(),
            "--stderr",
            &stderr.to_string_lossy(),
            "--error-file",
            &errors.path().to_string_lossy(),
        ]
        .map(|a| a.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let created = match self.keeper.run_step(&args, HELPER_TIMEOUT) {
            Ok(0) => Ok(()),
            Ok(code) => Err(step_failure(errors.path(), format!("exit code {code}"))),
            Err(e) => Err(e),
        };
        // The container's init, once created, is the keeper's child, and is removed whatever
        // else failed (its pid file is written before the helper returns).
        let pid = std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            run.process = Some(Process::open(pid, &self.dir, true).map_err(failed)?);
            self.containers.lock().expect("containers lock").insert(launch.id.clone(), launch.pod_uid.clone());
        }
        created.map_err(failed)?;
        if run.process.is_none() {
            return Err(failed("the container's pid file is unreadable".into()));
        }
        Ok(run)
    }
}

/// The user and group a container runs as: `runAsUser` and `runAsGroup`, else the image's
/// `User`, with names looked up in its `/etc/passwd` and `/etc/group` (read through the
/// container's root, never a link out of it). A `runAsUser` without a `runAsGroup` takes that
/// user's group from the image, as containerd does. `runAsNonRoot` refuses root, as the kubelet.
fn user(
    rootfs: &Path,
    image: &crate::images::container::RunConfig,
    launch: &Launch,
) -> Result<(u32, u32), CreateError> {
    let root =
        std::fs::File::open(rootfs).map_err(|e| CreateError::Failed(format!("opening the container's root: {e}")))?;
    let read = |path: &str| -> String {
        let mut text = String::new();
        let _ = crate::beneath::open_file(&root, Path::new(path))
            .and_then(|file| file.take(MAX_USER_TABLE).read_to_string(&mut text));
        text
    };
    let (passwd, group) = (read("etc/passwd"), read("etc/group"));
    let image_user =
        spec::image_user(image.user.as_deref().unwrap_or_default(), &passwd, &group).map_err(CreateError::Config)?;
    let id = |value: Option<i64>, what: &str| -> Result<Option<u32>, CreateError> {
        value
            .map(|v| u32::try_from(v).map_err(|_| CreateError::Config(format!("{what} {v} is not a user or group id"))))
            .transpose()
    };
    let group_of = |uid: u32| spec::image_user(&uid.to_string(), &passwd, "").map_or(0, |(_, gid)| gid);
    let user = match (id(launch.security.run_as_user, "runAsUser")?, id(launch.security.run_as_group, "runAsGroup")?) {
        (Some(uid), Some(gid)) => (uid, gid),
        (Some(uid), None) => (uid, group_of(uid)),
        (None, Some(gid)) => (image_user.0, gid),
        (None, None) => image_user,
    };
    if launch.security.run_as_non_root == Some(true) && user.0 == 0 {
        return Err(CreateError::Config(format!(
            "container has runAsNonRoot and image will run as root (pod: \"{}_{}({})\", container: {})",
            launch.pod_name, launch.namespace, launch.pod_uid, launch.container
        )));
    }
    Ok(user)
}

/// Why a helper step that ended with `status` failed: what it wrote to its error file, else
/// its status.
fn step_failure(errors: &Path, status: impl std::fmt::Display) -> String {
    let written = std::fs::read_to_string(errors).unwrap_or_default();
    if written.is_empty() { format!("the OCI helper failed: {status}") } else { written }
}

/// Removes a container's bundle: its volumes' mount points and its root unmounted, then its
/// files. Nothing is removed recursively that a mount could still be under: a volume that
/// would not unmount keeps its mount point, and the pod's data stays.
fn remove_bundle(bundle: &Path) {
    let mounts = bundle.join("mounts");
    for point in std::fs::read_dir(&mounts).into_iter().flatten().flatten() {
        let _ = rustix::mount::unmount(point.path(), UnmountFlags::DETACH);
        let _ = std::fs::remove_dir(point.path()).or_else(|_| std::fs::remove_file(point.path()));
    }
    let _ = std::fs::remove_dir(&mounts);
    let _ = rustix::mount::unmount(bundle.join("rootfs"), UnmountFlags::DETACH);
    let _ = std::fs::remove_dir(bundle.join("rootfs"));
    // The overlay's layers are the container's own, and mount nothing.
    for dir in ["upper", "work"] {
        let _ = std::fs::remove_dir_all(bundle.join(dir));
    }
    // Its files, and any a step made beside them (a command's error file, while it ran): no
    // directory, which could hold a mount still.
    for entry in std::fs::read_dir(bundle).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| !t.is_dir()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_dir(bundle);
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

    fn isolates_network(&self) -> bool {
        true
    }

    fn version(&self) -> String {
        "youki://0.7.0".into()
    }

    fn runs(&self, kind: Kind) -> bool {
        kind == Kind::Container
    }

    fn create(&self, image: Image, launch: Launch) -> BoxFuture<'_, Result<Box<dyn Created>, CreateError>> {
        let shared = self.0.clone();
        async move {
            // Dropped before it is done (the pod stopped meanwhile), what it made is removed
            // when its result is dropped.
            let created = tokio::task::spawn_blocking(move || shared.create_blocking(&image, launch))
                .await
                .map_err(|e| CreateError::Failed(format!("creating the container: {e}")))??;
            Ok(Box::new(created) as Box<dyn Created>)
        }
        .boxed()
    }

    fn pod_netns(&self, launch: &Launch) -> BoxFuture<'_, Result<Option<Arc<std::fs::File>>, String>> {
        let shared = self.0.clone();
        let launch = Launch { mounts: Vec::new(), ..launch.clone() };
        async move {
            tokio::task::spawn_blocking(move || {
                let net = shared.sandbox(&launch)?.join("net");
                let netns = std::fs::File::open(&net).map_err(|e| format!("opening {}: {e}", net.display()))?;
                Ok(Some(Arc::new(netns)))
            })
            .await
            .map_err(|e| format!("creating the pod's sandbox: {e}"))?
        }
        .boxed()
    }

    fn adopt(
        &self,
        pod_uid: &str,
        id: &str,
        output: Arc<ContainerLog>,
        started: jiff::Timestamp,
    ) -> Option<Result<Started, String>> {
        let mut adoptable = self.0.adoptable.lock().expect("adoptable lock");
        if adoptable.get(id).is_none_or(|left| left.pod_uid != pod_uid) {
            return None;
        }
        let mut left = adoptable.remove(id)?;
        left.run.output = output;
        match left.ended {
            None => Some(left.run.running(started)),
            Some(ended) => Some(Ok(left.run.ended(ended, started))),
        }
    }

    fn left_behind(&self, pod_uid: &str, container: &str) -> Option<LeftRun> {
        let adoptable = self.0.adoptable.lock().expect("adoptable lock");
        adoptable
            .iter()
            .filter_map(|(id, left)| {
                let labels = left.labels.as_ref().filter(|l| l.pod_uid == pod_uid && l.container == container)?;
                Some(LeftRun { id: id.clone(), attempt: labels.attempt, created: left.created })
            })
            .max_by_key(|left| (left.attempt, left.created))
    }

    fn discard_unadopted(&self, pods_here: &HashSet<String>) {
        let left: Vec<_> = self.0.adoptable.lock().expect("adoptable lock").drain().map(|(_, left)| left).collect();
        if left.is_empty() {
            return;
        }
        tracing::info!(containers = left.len(), "removing the containers left running that no pod adopted");
        let gone: HashSet<String> =
            left.iter().map(|l| l.pod_uid.clone()).filter(|uid| !pods_here.contains(uid)).collect();
        // Each is removed as it is dropped, on a thread of its own; then the sandboxes and
        // cgroups of pods no longer here.
        drop(left);
        for uid in gone {
            self.release(&uid);
        }
    }

    fn release(&self, pod_uid: &str) {
        let shared = self.0.clone();
        let pod_uid = pod_uid.to_string();
        tokio::task::spawn_blocking(move || {
            shared.adoptable.lock().expect("adoptable lock").retain(|_, left| left.pod_uid != pod_uid);
            let ids: Vec<String> = {
                let containers = shared.containers.lock().expect("containers lock");
                containers.iter().filter(|(_, pod)| **pod == pod_uid).map(|(id, _)| id.clone()).collect()
            };
            for id in ids {
                shared.remove_container(&id);
            }
            shared.sandboxes.release(&pod_uid);
            shared.cgroups.remove_pod(&pod_uid);
        });
    }
}

/// A container created, then started: its init process, its output, and where it lives.
#[derive(Debug)]
struct OciRun {
    id: String,
    /// The helper program, which runs commands in it.
    helper: PathBuf,
    bundle: PathBuf,
    state: PathBuf,
    cgroup: String,
    cgroups: Arc<Cgroups>,
    /// Its init process, once created.
    process: Option<Process>,
    output: Arc<ContainerLog>,
    /// The read ends of its stdout and stderr FIFOs, opened when they were made.
    output_fifos: Vec<OwnedFd>,
    /// The runtime's containers, which it is one of once created.
    containers: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    /// Whether it was started (or adopted): then dropping it leaves it running.
    started: bool,
    /// Whether its end is known (its record read): nothing is left to kill or wait for.
    exit_read: bool,
    /// Whether it was removed.
    removed: bool,
}

/// A container's init process: the keeper's child, not the agent's.
#[derive(Debug, Clone)]
struct Process {
    /// Its pidfd, which signals it (never another process that took its pid) and turns
    /// readable when it ends.
    pidfd: Arc<OwnedFd>,
    /// Its pid, which names it in `/proc` for as long as `pidfd` says it runs.
    pid: i32,
    /// Where the keeper records how it ended.
    exit: PathBuf,
}

impl Process {
    /// The process `pid`, whose end the keeper of the runtime directory `dir` records. For a
    /// process just made (`fresh`), a record left by an earlier process with its pid goes.
    fn open(pid: i32, dir: &Path, fresh: bool) -> Result<Process, String> {
        let raw = Pid::from_raw(pid).ok_or("the container's pid is not a pid")?;
        let pidfd = rustix::process::pidfd_open(raw, PidfdFlags::empty())
            .map_err(|e| format!("opening the container's process: {e}"))?;
        let exit = dir.join(keeper::EXITS).join(pid.to_string());
        if fresh {
            let _ = std::fs::remove_file(&exit);
        }
        Ok(Process { pidfd: Arc::new(pidfd), pid, exit })
    }

    /// Kills it, waits for its end, and removes the record of it (blocking): once the keeper
    /// has written it, so that none is left behind for a later process with its pid.
    fn kill_and_forget(&self) {
        let _ = rustix::process::pidfd_send_signal(&*self.pidfd, Signal::KILL);
        let _ = self.ended_within(Duration::from_secs(5));
        let deadline = Instant::now() + EXIT_RECORD;
        while std::fs::remove_file(&self.exit).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it has ended (blocking for at most `timeout`).
    fn ended_within(&self, timeout: Duration) -> bool {
        let mut fds = [rustix::event::PollFd::new(&*self.pidfd, rustix::event::PollFlags::IN)];
        let timeout =
            rustix::time::Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: timeout.subsec_nanos() as i64 };
        rustix::event::poll(&mut fds, Some(&timeout)).is_ok_and(|n| n > 0)
    }

    /// Its exit code as the keeper recorded it, once it has ended (the keeper reaps it at
    /// once; a keeper that is gone records nothing, and the code is unknown).
    async fn exit_code(&self) -> Result<i32, String> {
        let owned = self.pidfd.as_fd().try_clone_to_owned().map_err(|e| format!("waiting for the container: {e}"))?;
        // Deprecated for a `T` whose descriptor could change or close under it; an `OwnedFd`
        // is owned by the `AsyncFd` for its whole life, which is what `register` asks.
        #[allow(deprecated)]
        let readable = AsyncFd::new(owned).map_err(|e| format!("waiting for the container: {e}"))?;
        drop(readable.readable().await.map_err(|e| format!("waiting for the container: {e}"))?);
        let deadline = Instant::now() + EXIT_RECORD;
        loop {
            if let Ok(code) = tokio::fs::read_to_string(&self.exit).await {
                let _ = tokio::fs::remove_file(&self.exit).await;
                return code.trim().parse().map_err(|_| format!("the keeper recorded {code:?} as its end"));
            }
            if Instant::now() > deadline {
                return Err("the container ended, and how is unknown: its keeper recorded nothing".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl OciRun {
    /// Removes the container: its processes (if they still run, reaped), state, cgroup, root
    /// filesystem and bundle; whatever of it was made, up to all of it. Blocking.
    fn remove(&mut self) {
        if std::mem::replace(&mut self.removed, true) {
            return;
        }
        self.containers.lock().expect("containers lock").remove(&self.id);
        if let Some(process) = self.process.take()
            && !self.exit_read
        {
            process.kill_and_forget();
        }
        // A run refused before the helper made it has no state (and libcontainer logs an
        // error for a load that finds none).
        let state = self.state.join(&self.id);
        if state.exists()
            && let Ok(mut container) = libcontainer::container::Container::load(state)
        {
            let _ = container.delete(true);
        }
        remove_bundle(&self.bundle);
    }
}

impl Drop for OciRun {
    /// A run whose create or start failed is removed here, on a thread of its own (removing
    /// blocks). One that ended was removed already; one that runs, whose exit future was
    /// dropped (the agent stopping), runs on: the next agent adopts it, or its pod's release
    /// removes it (`release`).
    fn drop(&mut self) {
        if self.removed || self.started {
            return;
        }
        let mut run = OciRun {
            id: std::mem::take(&mut self.id),
            helper: std::mem::take(&mut self.helper),
            bundle: std::mem::take(&mut self.bundle),
            state: std::mem::take(&mut self.state),
            cgroup: std::mem::take(&mut self.cgroup),
            cgroups: self.cgroups.clone(),
            process: self.process.take(),
            output: self.output.clone(),
            output_fifos: std::mem::take(&mut self.output_fifos),
            containers: self.containers.clone(),
            started: false,
            exit_read: false,
            removed: false,
        };
        self.removed = true;
        let _ = std::thread::Builder::new().name("oci-remove".into()).spawn(move || run.remove());
    }
}

impl Created for OciRun {
    fn start(self: Box<Self>) -> BoxFuture<'static, Result<Started, String>> {
        async move {
            let state = self.state.join(&self.id);
            tokio::task::spawn_blocking(move || {
                libcontainer::container::Container::load(state)
                    .and_then(|mut c| c.start())
                    .map_err(|e| format!("starting the container: {e}"))
            })
            .await
            .map_err(|e| format!("starting the container: {e}"))??;
            self.running(jiff::Timestamp::now())
        }
        .boxed()
    }
}

impl OciRun {
    /// The handle and the end of a container that ended with `code` while no agent watched: an
    /// end at once, as it was.
    fn ended(mut self, ended: Ended, started: jiff::Timestamp) -> Started {
        self.started = true;
        self.exit_read = true;
        let meter = Arc::new(OciMeter { cgroups: self.cgroups.clone(), cgroup: self.cgroup.clone() });
        let usage = ContainerUsage { meter, requests: Requests::new(), started };
        let mut run = self;
        let exit =
            async move {
                tokio::task::spawn_blocking(move || run.finish(Ok(ended.code), ended.oom))
                    .await
                    .unwrap_or_else(|e| Exit { code: 128, reason: ExitReason::Error, message: Some(e.to_string()) })
            };
        Started { control: Arc::new(NothingRuns), usage, exit: exit.boxed() }
    }

    /// Its end, once it has ended with `status`: as the kubelet, a container the kernel's OOM
    /// killer ended (or `oom`, known already) is `OOMKilled`. Then it is removed. Blocking.
    fn finish(&mut self, status: Result<i32, String>, oom: bool) -> Exit {
        let oom = oom || self.cgroups.oom_killed(&self.cgroup);
        self.remove();
        match status {
            Ok(code) if oom => Exit { code, reason: ExitReason::OomKilled, message: None },
            Ok(code) => Exit::exited(code),
            Err(message) => Exit { code: 137, reason: ExitReason::Error, message: Some(message) },
        }
    }

    /// The handle and the end of a container that runs (started by this agent at `started`, or
    /// by an earlier one): its output read from its FIFOs into its log, its end from the keeper.
    fn running(mut self, started: jiff::Timestamp) -> Result<Started, String> {
        let process = self.process.clone().ok_or("a created container has its process")?;
        if self.output_fifos.is_empty() {
            // Adopted: its FIFOs, which it holds open, are opened again.
            for name in OUTPUT {
                let fifo = self.bundle.join(name);
                let reader = rustix::fs::open(&fifo, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, 0.into())
                    .map_err(|e| format!("opening {}: {e}", fifo.display()))?;
                self.output_fifos.push(reader);
            }
        }
        let ended = tokio::sync::watch::Sender::new(false);
        let pumps = [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .zip(std::mem::take(&mut self.output_fifos))
            .map(|(stream, fifo)| pump(fifo, stream, self.output.clone(), ended.subscribe()))
            .collect::<Result<Vec<_>, _>>()?;
        // From here on, dropping it leaves it running.
        self.started = true;
        let control = Arc::new(OciControl {
            process: process.clone(),
            helper: self.helper.clone(),
            state: self.state.clone(),
            id: self.id.clone(),
        });
        let meter = Arc::new(OciMeter { cgroups: self.cgroups.clone(), cgroup: self.cgroup.clone() });
        let usage = ContainerUsage { meter, requests: Requests::new(), started };
        let exit = async move {
            let status = process.exit_code().await;
            ended.send_replace(true);
            for mut pump in pumps {
                if tokio::time::timeout(OUTPUT_DRAIN, &mut pump).await.is_err() {
                    // Something outside the container holds its FIFO: the log is closed.
                    pump.abort();
                }
            }
            let mut run = self;
            run.exit_read = status.is_ok();
            tokio::task::spawn_blocking(move || run.finish(status, false)).await.unwrap_or_else(|e| Exit {
                code: 128,
                reason: ExitReason::Error,
                message: Some(e.to_string()),
            })
        };
        Ok(Started { control, usage, exit: exit.boxed() })
    }
}

/// The helper's `exec` step, its own flags: a command (its flags then [`exec_command`]) in
/// the container `id`, for as long as `until` says (`--timeout-ms` or `--lifeline-fd`, and
/// its value), its failure written to `errors`.
fn helper_exec(helper: &Path, state: &Path, id: &str, until: (&str, u128), errors: &Path) -> tokio::process::Command {
    let mut step = tokio::process::Command::new(helper);
    step.arg("oci-helper")
        .arg("exec")
        .arg("--root")
        .arg(state)
        .args(["--id", id, until.0, &until.1.to_string(), "--error-file"])
        .arg(errors);
    step
}

/// The end of an exec step's arguments (after its own flags): the command, after `--`.
fn exec_command(step: &mut tokio::process::Command, command: &[String]) {
    step.arg("--").args(command);
}

/// Where a helper step that the agent starts itself (an `exec`) writes why it failed: a file
/// in memory, which the step inherits ([`spawn_inheriting`]) and opens as its own
/// `/proc/self/fd/<n>`. An `exec` probe runs every few seconds for as long as its pod does:
/// nothing of it touches the disk (an edge node's flash), and nothing blocks the task that
/// starts it. (The steps the keeper starts write to a file in the bundle: they run off the
/// async threads, and the keeper's children inherit nothing of the agent's.)
struct StepErrors(OwnedFd);

impl StepErrors {
    fn new() -> std::io::Result<StepErrors> {
        use rustix::fs::{MemfdFlags, memfd_create};
        let name = "oci-helper-errors";
        // Sealed against execution where the kernel knows how (6.3), and where it insists
        // (`vm.memfd_noexec = 2`).
        let memfd = match memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::NOEXEC_SEAL) {
            Err(rustix::io::Errno::INVAL) => memfd_create(name, MemfdFlags::CLOEXEC)?,
            made => made?,
        };
        Ok(StepErrors(memfd))
    }

    /// The path the step opens it by, in its own process.
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
    }

    /// What the step wrote, if it wrote anything.
    fn written(&self) -> Option<String> {
        let mut buffer = vec![0; 16 << 10];
        let n = rustix::io::pread(&self.0, &mut buffer, 0).ok()?;
        Some(String::from_utf8_lossy(&buffer[..n]).into_owned()).filter(|written| !written.is_empty())
    }
}

/// Held while a descriptor of the agent's is inheritable, for the one child that is to have
/// it, from just before that child is started to just after: Go's `syscall.ForkLock`. Every
/// descriptor the agent opens is close-on-exec otherwise, and the keeper, a child that lives
/// on, is started under it too, so that it never holds a step's descriptor.
pub(super) static FORK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts `command` with `inherited` (close-on-exec descriptors of the agent's) open in it,
/// at the numbers they have here.
fn spawn_inheriting(
    command: &mut tokio::process::Command,
    inherited: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<tokio::process::Child> {
    use rustix::io::{FdFlags, fcntl_setfd};
    let _held = FORK_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for fd in inherited {
        fcntl_setfd(fd, FdFlags::empty())?;
    }
    let child = command.spawn();
    for fd in inherited {
        fcntl_setfd(fd, FdFlags::CLOEXEC)?;
    }
    child
}

/// Runs `command` in the container `id` through the helper, which kills it after `timeout`:
/// its code and its output (stdout and stderr together, as the kubelet's prober keeps them).
async fn exec(
    helper: &Path,
    state: &Path,
    id: &str,
    command: Vec<String>,
    timeout: Duration,
) -> Result<Executed, String> {
    let failed = |e: std::io::Error| format!("running the command: {e}");
    let (output, writer) = std::io::pipe().map_err(failed)?;
    let errors = StepErrors::new().map_err(failed)?;
    let mut step = helper_exec(helper, state, id, ("--timeout-ms", timeout.as_millis()), &errors.path());
    exec_command(&mut step, &command);
    step.stdin(std::process::Stdio::null())
        .stdout(writer.try_clone().map_err(failed)?)
        .stderr(writer)
        .kill_on_drop(true);
    let mut child =
        spawn_inheriting(&mut step, &[errors.0.as_fd()]).map_err(|e| format!("running {}: {e}", helper.display()))?;
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(output)).map_err(failed)?;
    let mut kept = Vec::new();
    let mut buffer = vec![0; 4096];
    let keep = |kept: &mut Vec<u8>, bytes: &[u8]| {
        kept.extend_from_slice(&bytes[..bytes.len().min(EXEC_OUTPUT.saturating_sub(kept.len()))]);
    };
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(failed)?,
            read = pipe.read(&mut buffer) => match read {
                Ok(n) if n > 0 => keep(&mut kept, &buffer[..n]),
                _ => break child.wait().await.map_err(failed)?,
            },
        }
    };
    // What it wrote before it ended; a process it left behind may hold the pipe, and is not
    // waited for.
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), pipe.read(&mut buffer)).await {
        if n == 0 {
            break;
        }
        keep(&mut kept, &buffer[..n]);
    }
    if let Some(failure) = errors.written() {
        return Err(failure);
    }
    match status.code() {
        Some(helper::TIMED_OUT) => Err(format!("command {command:?} timed out")),
        Some(code) => Ok(Executed { code, output: kept }),
        None => Err(format!("running the command: {status}")),
    }
}

/// Starts `command` in the container `id` for `kubectl exec`: a helper step as for [`exec`],
/// with the `streams` asked for as pipes (the others lead nowhere), or all three on a terminal
/// (`tty`) whose other side the node keeps. The helper kills the command once its lifeline,
/// the read end of a pipe whose write end the returned `kill` holds, breaks: the client went
/// away, or the agent did.
fn spawn(
    helper: &Path,
    state: &Path,
    id: &str,
    init: &Process,
    command: Vec<String>,
    streams: Streams,
) -> Result<Spawned, String> {
    use std::process::Stdio;
    let failed = |e: std::io::Error| format!("running the command: {e}");
    let errors = StepErrors::new().map_err(failed)?;
    // The helper inherits the read end.
    let (lifeline, held) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| failed(e.into()))?;
    let until = ("--lifeline-fd", u128::try_from(lifeline.as_raw_fd()).unwrap_or_default());
    let mut helper_command = helper_exec(helper, state, id, until, &errors.path());
    let piped = |wanted: bool| if wanted { Stdio::piped() } else { Stdio::null() };
    let terminal = if streams.tty {
        let (master, slave, own) = open_terminal(init).map_err(failed)?;
        // The container's own terminal is given to the command's user; never the node's.
        if own {
            helper_command.arg("--own-terminal");
        }
        let (input, output) = (slave.try_clone().map_err(failed)?, slave.try_clone().map_err(failed)?);
        helper_command.stdin(input).stdout(output).stderr(slave);
        Some(master)
    } else {
        helper_command.stdin(piped(streams.stdin)).stdout(piped(streams.stdout)).stderr(piped(streams.stderr));
        None
    };
    exec_command(&mut helper_command, &command);
    let mut child = spawn_inheriting(&mut helper_command, &[errors.0.as_fd(), lifeline.as_fd()])
        .map_err(|e| format!("running {}: {e}", helper.display()))?;
    drop(lifeline);
    let mut spawned = Spawned {
        stdin: None,
        stdout: None,
        stderr: None,
        resize: None,
        exit: futures::future::pending().boxed(),
        kill: Box::new(move || drop(held)),
    };
    match terminal {
        Some(master) => {
            // Deprecated for a `T` whose descriptor could close under it: the `AsyncFd` owns it.
            #[allow(deprecated)]
            let master = Arc::new(AsyncFd::new(master).map_err(failed)?);
            if streams.stdin {
                spawned.stdin = Some(Box::new(Terminal(master.clone())));
            }
            if streams.stdout {
                spawned.stdout = Some(Box::new(Terminal(master.clone())));
            }
            spawned.resize = Some(Box::new(move |columns: u16, rows: u16| {
                let size = rustix::termios::Winsize { ws_row: rows, ws_col: columns, ws_xpixel: 0, ws_ypixel: 0 };
                let _ = rustix::termios::tcsetwinsize(master.get_ref(), size);
            }));
        }
        None => {
            spawned.stdin = child.stdin.take().map(|s| Box::new(s) as _);
            spawned.stdout = child.stdout.take().map(|s| Box::new(s) as _);
            spawned.stderr = child.stderr.take().map(|s| Box::new(s) as _);
        }
    }
    spawned.exit = async move {
        let status = child.wait().await.map_err(|e| format!("running the command: {e}"))?;
        if let Some(failure) = errors.written() {
            return Err(failure);
        }
        status.code().ok_or_else(|| format!("running the command: {status}"))
    }
    .boxed();
    Ok(spawned)
}

/// A new terminal for a command in the container whose init is `init`: its side the node
/// keeps (not blocking), and the side the command gets as its input and output. Made in the
/// container's own devpts, as runc makes a console in the container, so that the command's
/// terminal has a name there (`tty`, `ttyname`); else (a container whose `/dev/pts` is not its
/// devpts, or out of terminals) the node's, which works as well, unnamed. Whether it is the
/// container's is the last of the three.
fn open_terminal(init: &Process) -> std::io::Result<(OwnedFd, OwnedFd, bool)> {
    use rustix::pty::{OpenptFlags, ioctl_tiocgptpeer, openpt, unlockpt};
    let (master, own) = match open_container_ptmx(init) {
        Ok(master) => (master, true),
        Err(e) => {
            if e.kind() == std::io::ErrorKind::InvalidData {
                // Something else stands where its ptmx would: planted, as like as not.
                tracing::warn!(%e, "a command's terminal from the node's devpts, not its container's");
            } else {
                tracing::debug!(%e, "a command's terminal from the node's devpts, not its container's");
            }
            (openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?, false)
        }
    };
    unlockpt(&master)?;
    let slave = ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::fs::fcntl_setfl(&master, OFlags::NONBLOCK)?;
    Ok((master, slave, own))
}

/// The `ptmx` of the devpts at the container's `/dev/pts`: found beneath its root with no
/// link followed, and opened only once it is that (a devpts file system's 5:2). What is there
/// is the container's to arrange (its init may `chroot`; a volume may cover `/dev`), and a
/// device node it made could name any device of the node's, which the node would open outside
/// the container's device cgroup.
fn open_container_ptmx(init: &Process) -> std::io::Result<OwnedFd> {
    use rustix::fs::{Mode, ResolveFlags};
    let root = rustix::fs::open(
        format!("/proc/{}/root", init.pid),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // The pid was the container's when its root was opened: it runs still.
    if init.ended_within(Duration::ZERO) {
        return Err(std::io::Error::other("the container has ended"));
    }
    let found = rustix::fs::openat2(
        &root,
        "dev/pts/ptmx",
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?;
    let stat = rustix::fs::fstat(&found)?;
    let devpts = rustix::fs::fstatfs(&found)?.f_type as u64 == DEVPTS_SUPER_MAGIC;
    let is_ptmx = rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::CharacterDevice
        && rustix::fs::major(stat.st_rdev) == 5
        && rustix::fs::minor(stat.st_rdev) == 2;
    if !(devpts && is_ptmx) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the container's /dev/pts/ptmx is not a devpts ptmx",
        ));
    }
    // Opened anew through the handle: the very file checked.
    Ok(rustix::fs::open(
        format!("/proc/self/fd/{}", found.as_raw_fd()),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `statfs`'s type of a devpts file system.
const DEVPTS_SUPER_MAGIC: u64 = 0x1cd1;

/// The node's side of a command's terminal, read and written as the tokio reactor says it
/// may be: no thread waits on it.
struct Terminal(Arc<AsyncFd<OwnedFd>>);

impl tokio::io::AsyncRead for Terminal {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        loop {
            let mut ready = std::task::ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match ready.try_io(|fd| rustix::io::read(fd.get_ref(), &mut *unfilled).map_err(std::io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                // Every holder of the command's side has closed it: its end.
                Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return std::task::Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return std::task::Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl tokio::io::AsyncWrite for Terminal {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            let mut ready = std::task::ready!(self.0.poll_write_ready(cx))?;
            match ready.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(std::io::Error::from)) {
                Ok(written) => return std::task::Poll::Ready(written),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Copies one of a container's output FIFOs into its log until every process that could write
/// to it has ended. While the container runs, a log that cannot keep up is waited for (the
/// container's writes wait on a full pipe); once it has `ended`, what its pipe held is read at
/// once ([`DRAIN_BYTES`]), and then (a process it left writes on) the log is waited for again.
fn pump(
    fifo: OwnedFd,
    stream: Stream,
    log: Arc<ContainerLog>,
    mut ended: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut fifo = tokio::net::unix::pipe::Receiver::from_owned_fd(fifo)
        .map_err(|e| format!("reading the container's output: {e}"))?;
    Ok(tokio::spawn(async move {
        let mut buffer = vec![0; 16 << 10];
        let mut drained = 0;
        loop {
            let over = *ended.borrow();
            match over {
                true if drained < DRAIN_BYTES => {}
                true => log.room().await,
                false => tokio::select! {
                    () = log.room() => {}
                    _ = ended.wait_for(|ended| *ended) => {}
                },
            }
            match fifo.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    drained += if over { n } else { 0 };
                    log.write(stream, &buffer[..n]);
                }
            }
        }
    }))
}

/// The control of a container that has ended: nothing is left to signal.
#[derive(Debug)]
struct NothingRuns;

impl Control for NothingRuns {
    fn terminate(&self) -> bool {
        false
    }

    fn kill(&self) {}
}

#[derive(Debug)]
struct OciControl {
    /// The container's init.
    process: Process,
    helper: PathBuf,
    state: PathBuf,
    id: String,
}

impl Control for OciControl {
    fn terminate(&self) -> bool {
        rustix::process::pidfd_send_signal(&*self.process.pidfd, Signal::TERM).is_ok()
    }

    fn kill(&self) {
        let _ = rustix::process::pidfd_send_signal(&*self.process.pidfd, Signal::KILL);
    }

    fn exec(&self, command: Vec<String>, timeout: Duration) -> BoxFuture<'static, Result<Executed, String>> {
        let (helper, state, id) = (self.helper.clone(), self.state.clone(), self.id.clone());
        async move { exec(&helper, &state, &id, command, timeout).await }.boxed()
    }

    fn spawn(&self, command: Vec<String>, streams: Streams) -> BoxFuture<'static, Result<Spawned, String>> {
        let (helper, state, id, process) =
            (self.helper.clone(), self.state.clone(), self.id.clone(), self.process.clone());
        // Off the async threads: it opens files the container arranged (its terminal's).
        async move {
            tokio::task::spawn_blocking(move || spawn(&helper, &state, &id, &process, command, streams))
                .await
                .map_err(|e| format!("running the command: {e}"))?
        }
        .boxed()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What a step writes to its error file reaches the agent; a child started without it
    /// does not hold it.
    #[tokio::test]
    async fn a_steps_error_file_is_its_own() {
        let errors = StepErrors::new().unwrap();
        let path = errors.path().to_string_lossy().into_owned();
        let mut step = tokio::process::Command::new("sh");
        step.args(["-c", &format!("echo the step failed > {path}")]);
        assert!(spawn_inheriting(&mut step, &[errors.0.as_fd()]).unwrap().wait().await.unwrap().success());
        assert_eq!(errors.written().as_deref(), Some("the step failed\n"));
        let fd = errors.0.as_raw_fd();
        let other = tokio::process::Command::new("sh")
            .args(["-c", &format!("readlink /proc/self/fd/{fd} || true")])
            .output()
            .await
            .unwrap();
        assert!(!String::from_utf8_lossy(&other.stdout).contains("oci-helper-errors"), "{other:?}");
        // Nothing written: nothing to say.
        assert_eq!(StepErrors::new().unwrap().written(), None);
    }
}
