//! The container runtimes a node runs pods' containers on, behind one seam: the pod worker
//! chooses one per pod by its `runtimeClassName` and drives it through [`ContainerRuntime`],
//! as the kubelet drives a CRI runtime. What every runtime shares stays with the node: the
//! pod's address and volumes, its containers' environment, argv and mounts, their logs, the
//! image store, and the kubelet's lifecycle (restarts, probes, grace periods, status).
//!
//! A run is created, then started (CRI's `CreateContainer`, `StartContainer`): a failure
//! before the start is the pull's or the configuration's, one after it is the container's.

mod hollow;
pub(crate) mod oci;
mod wasm;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::images::{Image, Kind};
use crate::logs::ContainerLog;

pub(crate) use hollow::HollowRuntime;
pub(crate) use oci::OciRuntime;
pub(crate) use wasm::WasmRuntime;

/// A way of running containers: wasm modules, or Linux processes in namespaces and cgroups.
pub(crate) trait ContainerRuntime: Send + Sync + std::fmt::Debug {
    /// The `RuntimeClass` handler it serves, which pods name in `runtimeClassName`.
    fn handler(&self) -> &'static str;

    /// What the Node says it runs (`nodeInfo.containerRuntimeVersion`): `<name>://<version>`.
    fn version(&self) -> String;

    /// Whether it runs images of `kind`.
    fn runs(&self, kind: Kind) -> bool;

    /// Whether its pods have a network namespace of their own, so that their address is not
    /// one of the host's (a wasm guest's sockets are the host's, on the pod's address).
    fn isolates_network(&self) -> bool {
        false
    }

    /// Makes a run of a container from its image: what can fail before the container starts
    /// (a module that does not compile, a root filesystem that cannot be set up) fails here.
    fn create(&self, image: Image, launch: Launch) -> BoxFuture<'_, Result<Box<dyn Created>, CreateError>>;

    /// The network namespace of the pod whose run `launch` is, made if it is not yet (CRI's
    /// `RunPodSandbox`), for a runtime whose pods have one: the containers of another runtime
    /// in a pod that mixes them join it ([`Launch::netns`]). `None`: this runtime's pods have
    /// none of their own.
    fn pod_netns(&self, launch: &Launch) -> BoxFuture<'_, Result<Option<Arc<File>>, String>> {
        let _ = launch;
        std::future::ready(Ok(None)).boxed()
    }

    /// The container `id` of the pod `pod_uid`, if an earlier run of the agent left it running
    /// here, as this agent's run of it (started at `started`), its output going to `output`
    /// from now on: `None` when there is no such container to adopt.
    fn adopt(
        &self,
        pod_uid: &str,
        id: &str,
        output: Arc<ContainerLog>,
        started: jiff::Timestamp,
    ) -> Option<Result<Started, String>> {
        let _ = (pod_uid, id, output, started);
        None
    }

    /// The newest run of the container `container` of the pod `pod_uid` that an earlier run
    /// of the agent left here (running, or ended while no agent watched), found by whose run
    /// it was made as rather than by a status: a status may not show it yet (the agent was
    /// stopped during its `postStart` hook, or while the API server was out of reach), as the
    /// kubelet, too, learns its containers from the runtime. `None`: there is none.
    fn left_behind(&self, pod_uid: &str, container: &str) -> Option<LeftRun> {
        let _ = (pod_uid, container);
        None
    }

    /// Every pod on the node (`pods_here`, by uid) has adopted what it will
    /// ([`adopt`](Self::adopt)): the containers left running that none did go, and what the
    /// runtime holds for pods no longer here.
    fn discard_unadopted(&self, pods_here: &HashSet<String>) {
        let _ = pods_here;
    }

    /// The pod with `pod_uid` is done on the node: what the runtime holds for it goes,
    /// containers still running included.
    fn release(&self, pod_uid: &str) {
        let _ = pod_uid;
    }
}

/// A run an earlier run of the agent left ([`ContainerRuntime::left_behind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeftRun {
    /// Its id (`<runtime>://…` once [`Runtimes::left_behind`] gives it).
    pub id: String,
    /// Its number (the container's restart count when it was made).
    pub attempt: i32,
    /// When it was made: its start, near enough, for a run no status says started.
    pub created: jiff::Timestamp,
}

/// Why a run could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CreateError {
    /// The pod asks for what cannot be run as asked (a user the image does not have, a
    /// capability the node does not give): upstream's `CreateContainerConfigError`, which
    /// waits and is tried again with back-off.
    #[error("{0}")]
    Config(String),
    /// Making it failed: the run ends as upstream's `StartError`.
    #[error("{0}")]
    Failed(String),
}

/// A run made and ready to start.
pub(crate) trait Created: Send {
    /// Starts it (a failure shows as upstream's `StartError`). Its exit future ends when it
    /// does, killed ([`Control::kill`]) or not. Dropping that future is for the agent's
    /// shutdown: a wasm guest ends with it, a Linux container does not (the next agent adopts
    /// it, or [`ContainerRuntime::release`] removes it with its pod). A run dropped before it
    /// starts is removed.
    fn start(self: Box<Self>) -> BoxFuture<'static, Result<Started, String>>;
}

/// A started run: its handle and its end.
pub(crate) struct Started {
    pub control: Arc<dyn Control>,
    /// What it uses, for the node's stats and its eviction manager.
    pub usage: ContainerUsage,
    pub exit: BoxFuture<'static, Exit>,
}

/// What the node may do to a running container.
pub(crate) trait Control: Send + Sync + std::fmt::Debug {
    /// Asks it to stop, as SIGTERM does: whether it can hear that. One that cannot (a wasm
    /// command, which has no signal handler) is killed at once rather than after the grace
    /// period, which it could not use.
    fn terminate(&self) -> bool;

    /// Ends it now, as SIGKILL does; its exit future then ends with [`Exit::killed`].
    fn kill(&self);

    /// Runs `command` in it (its namespaces, its cgroup), as an `exec` probe does, for at most
    /// `timeout`: its exit code and what it wrote (the first [`EXEC_OUTPUT`] bytes).
    fn exec(&self, command: Vec<String>, timeout: Duration) -> BoxFuture<'static, Result<Executed, String>> {
        let _ = (command, timeout);
        std::future::ready(Err(NO_COMMANDS.to_string())).boxed()
    }

    /// Starts `command` in it as `kubectl exec` does, with the `streams` asked for.
    fn spawn(&self, command: Vec<String>, streams: Streams) -> BoxFuture<'static, Result<Spawned, String>> {
        let _ = (command, streams);
        std::future::ready(Err(NO_COMMANDS.to_string())).boxed()
    }
}

const NO_COMMANDS: &str = "this container runs no commands but its own";

/// Which of a command's streams a client attaches to: `kubectl exec`'s input (`-i`), output,
/// errors, and whether they are one terminal (`-t`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A command started in a container for `kubectl exec`: the streams asked for (the others
/// lead nowhere), its terminal's size, its end.
pub(crate) struct Spawned {
    pub stdin: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    pub stdout: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    /// Its errors, apart from its output (none on a terminal, which has one stream).
    pub stderr: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    /// Gives its terminal a new size (columns, rows).
    pub resize: Option<Box<dyn Fn(u16, u16) + Send + Sync>>,
    /// Its exit code (128 + a signal that ended it), or why it could not be run.
    pub exit: BoxFuture<'static, Result<i32, String>>,
    /// Ends it now: no one is listening any more.
    pub kill: Box<dyn FnOnce() + Send>,
}

/// The most of a command's output an `exec` keeps, as the kubelet's prober (10 KiB).
pub(crate) const EXEC_OUTPUT: usize = 10 << 10;

/// How a command run in a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Executed {
    pub code: i32,
    pub output: Vec<u8>,
}

/// What a container's run uses, as its runtime counts it.
pub(crate) trait Meter: Send + Sync + std::fmt::Debug {
    /// Its working set, in bytes.
    fn memory(&self) -> u64;
    /// CPU time used since the run started.
    fn cpu(&self) -> Duration;
}

/// What one container's current run uses: the runtime's accounts of it.
#[derive(Debug, Clone)]
pub(crate) struct ContainerUsage {
    pub meter: Arc<dyn Meter>,
    /// The requests a `wasi:http` server is serving and has served (never counted by a
    /// container that serves none).
    pub requests: Arc<flotilla_wasm::Requests>,
    /// When the run started: its CPU time counts from here.
    pub started: jiff::Timestamp,
}

/// How a run ended, as the container's `terminated` state shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exit {
    pub code: i32,
    pub reason: ExitReason,
    pub message: Option<String>,
}

impl Exit {
    /// An exit of its own, with `code`.
    pub(crate) fn exited(code: i32) -> Exit {
        let reason = if code == 0 { ExitReason::Completed } else { ExitReason::Error };
        Exit { code, reason, message: None }
    }

    /// Killed by the node (SIGKILL, 128 + 9), as upstream shows a container that did not stop
    /// within its grace period.
    pub(crate) fn killed() -> Exit {
        Exit { code: 137, reason: ExitReason::Error, message: None }
    }

    /// Could not be started after it was created (128, as runc's start error shows).
    pub(crate) fn start_error(message: String) -> Exit {
        Exit { code: 128, reason: ExitReason::StartError, message: Some(message) }
    }
}

/// The `reason` of a terminated container, as upstream's runtimes give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitReason {
    Completed,
    Error,
    OomKilled,
    StartError,
}

impl ExitReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OomKilled => "OOMKilled",
            ExitReason::StartError => "StartError",
        }
    }
}

/// One run of a container as the node has worked it out, the same for every runtime.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub namespace: String,
    /// The pod's name and uid, the container's name, and the pod's hostname (its
    /// `spec.hostname`, else its name cut to 63 characters, as the kubelet's).
    pub pod_name: String,
    pub pod_uid: String,
    pub container: String,
    pub hostname: String,
    /// The pod's QoS class (`Guaranteed`, `Burstable`, `BestEffort`).
    pub qos: &'static str,
    /// The container's id (`<runtime>://…` is the runtime's to add).
    pub id: String,
    /// The run's number: the container's restart count.
    pub attempt: i32,
    /// `command` and `args` with `$(VAR)` expanded; what the image says fills what they leave
    /// out, as each runtime's image defines it.
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    /// `resources.limits.memory` in bytes.
    pub memory_limit: Option<u64>,
    /// `resources.limits.cpu` in cores (0.5 for `500m`).
    pub cpu_limit: Option<f64>,
    /// `resources.requests.cpu` in cores.
    pub cpu_request: Option<f64>,
    pub security: Security,
    /// `shareProcessNamespace`: the pod's Linux containers see each other's processes.
    pub share_pids: bool,
    pub pod_ip: Ipv4Addr,
    /// The pod's network namespace, when it has one that this run is to join: a pod that mixes
    /// wasm and Linux containers has one (its Linux containers' sandbox), so that they all
    /// reach each other on localhost. `None`: the runtime's own way (a wasm guest's sockets
    /// are the host's, on the pod's address; a Linux container makes its pod's sandbox).
    pub netns: Option<Arc<File>>,
    /// The cluster DNS's address (`kube-system/kube-dns`), if the node knows it.
    pub dns: Option<Ipv4Addr>,
    /// The container's declared TCP `containerPort`s.
    pub ports: Vec<u16>,
    /// Requests a `wasi:http` container serves at once, if the pod says.
    pub http_concurrency: Option<usize>,
    /// Where its output goes (the CRI log file).
    pub output: Arc<ContainerLog>,
    /// The pod goes on only once this run has ended well: a regular init container.
    pub runs_to_completion: bool,
}

/// The container's `securityContext`, with the pod's where the container's says nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Security {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub read_only_root: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub allow_privilege_escalation: Option<bool>,
    pub privileged: bool,
    /// `seccompProfile.type` (`RuntimeDefault`, `Unconfined`, `Localhost`), if set.
    pub seccomp: Option<String>,
}

/// A directory of the pod's, shown to a container at `path`: a handle the node opened, so that
/// no runtime resolves a host path on a pod's behalf (a link a container planted or swapped in
/// cannot change which directory this is).
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    pub dir: Arc<File>,
    pub path: String,
    pub read_only: bool,
    /// A file of `dir` is what is shown at `path`, rather than the whole directory.
    pub file: Option<FileMount>,
}

/// A file shown on its own (a `subPath` that names a file, a termination message file).
#[derive(Debug, Clone)]
pub(crate) struct FileMount {
    /// The file, held (`O_PATH`) when the node found it a regular file: what a runtime binds,
    /// so that nothing swapped in for it since is.
    pub file: Arc<File>,
    /// Its name in the mount's directory.
    pub name: String,
    /// A runtime whose mounts are directories (wasm) may show the directory at `path`'s parent
    /// instead, where the file's name is `path`'s, or go without (a termination message file);
    /// otherwise such a runtime refuses the run.
    pub optional: bool,
}

/// The node's runtimes by handler.
#[derive(Debug, Default)]
pub(crate) struct Runtimes(HashMap<&'static str, Arc<dyn ContainerRuntime>>);

impl Runtimes {
    /// Adds a runtime: one per handler.
    pub(crate) fn add(&mut self, runtime: Arc<dyn ContainerRuntime>) {
        let replaced = self.0.insert(runtime.handler(), runtime);
        debug_assert!(replaced.is_none(), "two runtimes for one handler");
    }

    /// The runtime for `handler`.
    pub(crate) fn get(&self, handler: &str) -> Option<Arc<dyn ContainerRuntime>> {
        self.0.get(handler).cloned()
    }

    /// Every handler, sorted.
    pub(crate) fn handlers(&self) -> Vec<&'static str> {
        let mut handlers: Vec<_> = self.0.keys().copied().collect();
        handlers.sort_unstable();
        handlers
    }

    /// The runtime for an image of `kind`, in a pod of runtime class `class` (`None`: the pod
    /// names none, and the image decides), or why there is none.
    pub(crate) fn for_image(&self, class: Option<&str>, kind: Kind) -> Result<Arc<dyn ContainerRuntime>, String> {
        let what = match kind {
            Kind::Module => "a wasm module",
            Kind::Container => "a container image",
        };
        match class {
            Some(class) => {
                let runtime = self.get(class).ok_or_else(|| format!("runtime class {class:?} is not offered here"))?;
                if runtime.runs(kind) {
                    Ok(runtime)
                } else {
                    Err(format!("the image is {what}, which runtime class {class:?} does not run"))
                }
            }
            // The first by name that runs it, so that the choice never depends on the map.
            None => self.handlers().into_iter().filter_map(|h| self.get(h)).find(|r| r.runs(kind)).ok_or_else(|| {
                format!("the image is {what}, and this node runs none: it offers {:?}", self.handlers())
            }),
        }
    }

    /// The network namespace of the pod whose run `launch` is, from the first runtime that
    /// gives its pods one ([`ContainerRuntime::pod_netns`]); `None` if none does.
    pub(crate) async fn pod_netns(&self, launch: &Launch) -> Result<Option<Arc<File>>, String> {
        for runtime in self.handlers().into_iter().filter_map(|h| self.get(h)) {
            if let Some(netns) = runtime.pod_netns(launch).await? {
                return Ok(Some(netns));
            }
        }
        Ok(None)
    }

    /// The container `container_id` (`<handler>://<id>`) of the pod `pod_uid`, left running
    /// by an earlier run of the agent, adopted from its runtime
    /// ([`ContainerRuntime::adopt`]); `None` when there is none to adopt.
    pub(crate) fn adopt(
        &self,
        pod_uid: &str,
        container_id: &str,
        output: Arc<ContainerLog>,
        started: jiff::Timestamp,
    ) -> Option<Result<Started, String>> {
        let (handler, id) = container_id.split_once("://")?;
        self.get(handler)?.adopt(pod_uid, id, output, started)
    }

    /// The newest run of the container `container` of the pod `pod_uid` that an earlier run
    /// of the agent left, of any runtime ([`ContainerRuntime::left_behind`]), its id whole.
    pub(crate) fn left_behind(&self, pod_uid: &str, container: &str) -> Option<LeftRun> {
        self.0
            .iter()
            .filter_map(|(handler, runtime)| {
                let left = runtime.left_behind(pod_uid, container)?;
                Some(LeftRun { id: format!("{handler}://{}", left.id), ..left })
            })
            .max_by_key(|left| left.attempt)
    }

    /// Every pod on the node (`pods_here`) has adopted what it will: what no pod adopted goes.
    pub(crate) fn discard_unadopted(&self, pods_here: &HashSet<String>) {
        for runtime in self.0.values() {
            runtime.discard_unadopted(pods_here);
        }
    }

    /// The pod with `pod_uid` is done on the node: every runtime lets go of it.
    pub(crate) fn release(&self, pod_uid: &str) {
        for runtime in self.0.values() {
            runtime.release(pod_uid);
        }
    }

    /// What the Node says it runs: each runtime's version, joined.
    pub(crate) fn version(&self) -> String {
        let mut versions: Vec<_> = self.0.values().map(|r| r.version()).collect();
        versions.sort();
        versions.join(",")
    }
}
