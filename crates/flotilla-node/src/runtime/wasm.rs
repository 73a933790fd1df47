//! The wasm runtime: each container a wasmtime instance (or a pool of them, for a `wasi:http`
//! server) in the agent's own process, granted only what its [`Launch`] says.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use flotilla_wasm::{ContainerSpec, CpuTime, MemoryPool, Network, Preopen, Program, Requests, Runtime, Terminate};
use futures::FutureExt;
use futures::future::BoxFuture;
use rustix::thread::LinkNameSpaceType;

use super::{
    ContainerRuntime, ContainerUsage, Control, CreateError, Created, Exit, ExitReason, Launch, Meter, Started,
};
use crate::images::{Image, ImageStore, Kind, Reference};

/// The `RuntimeClass` handler of wasm pods, the default.
pub(crate) const HANDLER: &str = flotilla_api::WASM_RUNTIME_CLASS;

/// Runs containers on the node's wasmtime engine.
#[derive(Debug)]
pub(crate) struct WasmRuntime {
    pub runtime: Arc<Runtime>,
    /// Where modules are read from.
    pub store: ImageStore,
    /// What every guest on the node holds together: each container's pool sits within it.
    pub memory: Arc<MemoryPool>,
    /// The memory limit of a container that declares none: upstream leaves it unbounded, and a
    /// guest would then be bounded only by its 4 GiB address space, times its instances.
    pub default_memory_limit: u64,
    /// Where the guests may not connect.
    pub egress: Arc<flotilla_wasm::Egress>,
    /// The cluster DNS's names, which guests resolve without asking it.
    pub zone: Arc<flotilla_net::dns::Zone>,
    /// Which addresses are pods', and how to reach them.
    pub pod_network: Arc<dyn flotilla_wasm::PodNetwork>,
    /// The Services' frontends, which guests connect through.
    pub frontends: Arc<dyn flotilla_wasm::Frontends>,
}

impl WasmRuntime {
    /// The loaded program for a stored module: from memory, else read and compiled off the
    /// async threads (compiling a large module takes a while).
    async fn load(&self, digest: &str) -> Result<Arc<Program>, String> {
        if let Some(program) = self.runtime.loaded(digest) {
            return Ok(program);
        }
        let runtime = self.runtime.clone();
        let path = self.store.blob_path(digest);
        tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|e| format!("reading the module {}: {e}", path.display()))?;
            runtime.load(&bytes).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("loading the module: {e}"))?
    }
}

impl ContainerRuntime for WasmRuntime {
    fn handler(&self) -> &'static str {
        HANDLER
    }

    fn version(&self) -> String {
        format!("wasmtime://{}", Runtime::VERSION)
    }

    fn runs(&self, kind: Kind) -> bool {
        kind == Kind::Module
    }

    fn create(&self, image: Image, launch: Launch) -> BoxFuture<'_, Result<Box<dyn Created>, CreateError>> {
        async move {
            let program = self.load(&image.digest).await.map_err(CreateError::Failed)?;
            // A module has no entrypoint of its own: its argv[0] is its image's name.
            let name = Reference::parse(&image.reference).map(|r| r.short_name().to_string()).unwrap_or_default();
            let mut argv = launch.command.filter(|c| !c.is_empty()).unwrap_or_else(|| vec![name]);
            argv.extend(launch.args.into_iter().flatten());
            let limit = launch.memory_limit.unwrap_or(self.default_memory_limit);
            let spec = ContainerSpec {
                argv,
                env: launch.env,
                working_dir: launch.working_dir,
                dirs: preopens(launch.mounts)?,
                // Every container is bounded, and all of them together by the node's pool.
                memory: MemoryPool::within(&self.memory, Some(limit)),
                cpu_time: CpuTime::new(),
                requests: Requests::new(),
                terminate: Terminate::new(),
                cpu_limit: launch.cpu_limit,
                network: Some(Network {
                    pod_ip: launch.pod_ip.into(),
                    namespace: launch.netns.is_some(),
                    ports: launch.ports,
                    egress: self.egress.clone(),
                    names: Some(Arc::new(PodNames { zone: self.zone.clone(), namespace: launch.namespace })),
                    // In the pod's own namespace, its connections leave through the pod's
                    // interface, as its Linux containers' do: no tunnel entrance is made from
                    // there (it would be the namespace's, and live on the container's thread).
                    pod_network: launch.netns.is_none().then(|| self.pod_network.clone()),
                    frontends: Some(self.frontends.clone()),
                }),
                http_concurrency: launch.http_concurrency,
                output: launch.output,
            };
            let netns = launch.netns;
            Ok(Box::new(WasmRun { runtime: self.runtime.clone(), program, spec, netns }) as Box<dyn Created>)
        }
        .boxed()
    }
}

/// A wasm container made, not yet started.
struct WasmRun {
    runtime: Arc<Runtime>,
    program: Arc<Program>,
    spec: ContainerSpec,
    /// The pod's network namespace, if the guest is to run in it.
    netns: Option<Arc<File>>,
}

impl Created for WasmRun {
    fn start(self: Box<Self>) -> BoxFuture<'static, Result<Started, String>> {
        let WasmRun { runtime, program, spec, netns } = *self;
        let meter = Arc::new(WasmMeter { memory: spec.memory.clone(), cpu_time: spec.cpu_time.clone() });
        let control = Arc::new(WasmControl {
            terminate: spec.terminate.clone(),
            requests: spec.requests.clone(),
            kill: tokio::sync::watch::Sender::new(false),
        });
        let usage = ContainerUsage { meter, requests: spec.requests.clone(), started: jiff::Timestamp::now() };
        let mut killed = control.kill.subscribe();
        let run = async move {
            tokio::select! {
                exit = runtime.run(&program, spec) => exit_of(exit),
                // The guest is dropped with its run, at its next host call or epoch tick.
                _ = killed.wait_for(|k| *k) => Exit::killed(),
            }
        };
        let exit = match netns {
            None => run.boxed(),
            Some(netns) => in_netns(netns, run).boxed(),
        };
        std::future::ready(Ok(Started { control, usage, exit })).boxed()
    }
}

/// Runs `run` on a thread of its own that has joined the network namespace `netns`, so that
/// every socket the guest makes (each is made on the thread that polls it, or on a thread that
/// one starts) is the namespace's: a thread per container, only for the containers of pods that
/// mix wasm and Linux containers, which cost a process each anyway. Dropping the future ends
/// `run` there, as dropping it would here.
async fn in_netns(netns: Arc<File>, run: impl Future<Output = Exit> + Send + 'static) -> Exit {
    let (exited, exit) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new().name("wasm-netns".into()).spawn(move || {
        let mut exited = exited;
        let joined = rustix::thread::move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))
            .map_err(|e| format!("joining the pod's network namespace: {e}"));
        let runtime = joined.and_then(|()| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("starting the container's thread: {e}"))
        });
        let exit = match runtime {
            Ok(runtime) => runtime.block_on(async {
                tokio::select! {
                    exit = run => Some(exit),
                    () = exited.closed() => None,
                }
            }),
            Err(message) => Some(Exit::start_error(message)),
        };
        if let Some(exit) = exit {
            let _ = exited.send(exit);
        }
    });
    match thread {
        Ok(_) => exit.await.unwrap_or_else(|_| Exit::start_error("the container's thread ended".into())),
        Err(err) => Exit::start_error(format!("starting the container's thread: {err}")),
    }
}

/// A guest's directories: each mount's, and an optional file's directory (a termination
/// message file's) at the parent of its path, where it is named as the path ends, unless
/// another mount is there already. A file that must be shown on its own (a `subPath` naming a
/// file) cannot be: the run is refused, saying why.
fn preopens(mounts: Vec<super::Mount>) -> Result<Vec<Preopen>, CreateError> {
    use std::path::Path;
    let taken: Vec<String> = mounts.iter().filter(|m| m.file.is_none()).map(|m| m.path.clone()).collect();
    let mut preopens = Vec::new();
    for m in mounts {
        let guest = match &m.file {
            None => m.path,
            Some(file) if !file.optional => {
                return Err(CreateError::Config(format!(
                    "the volume mount at {} is a file, not a directory; wasm containers mount directories only",
                    m.path
                )));
            }
            Some(file) => {
                let path = Path::new(&m.path);
                let Some(parent) = path.parent() else { continue };
                let named = path.file_name().is_some_and(|n| n == file.name.as_str());
                if !named || taken.iter().any(|t| Path::new(t) == parent) {
                    continue;
                }
                parent.to_string_lossy().into_owned()
            }
        };
        preopens.push(Preopen { dir: m.dir, guest, read_only: m.read_only });
    }
    Ok(preopens)
}

/// How a wasm run's end shows: a trap as an aborted process's (134), a memory limit outgrown
/// as the OOM killer's (137, `OOMKilled`).
fn exit_of(exit: flotilla_wasm::Exit) -> Exit {
    let code = exit.code();
    match exit {
        flotilla_wasm::Exit::Exited(code) => Exit::exited(code),
        flotilla_wasm::Exit::OutOfMemory { message } => {
            Exit { code, reason: ExitReason::OomKilled, message: Some(message) }
        }
        flotilla_wasm::Exit::Trapped { message } => Exit { code, reason: ExitReason::Error, message: Some(message) },
        flotilla_wasm::Exit::Failed { message } => Exit::start_error(message),
    }
}

#[derive(Debug)]
struct WasmControl {
    terminate: Arc<Terminate>,
    requests: Arc<Requests>,
    kill: tokio::sync::watch::Sender<bool>,
}

impl Control for WasmControl {
    fn terminate(&self) -> bool {
        // A `wasi:http` server stops taking requests and ends when those it holds are
        // answered; a command has no handler for it (WASI has no signals).
        let hears = self.requests.counted();
        if hears {
            self.terminate.send();
        }
        hears
    }

    fn kill(&self) {
        self.kill.send_replace(true);
    }

    fn exec(&self, _: Vec<String>, _: Duration) -> BoxFuture<'static, Result<super::Executed, String>> {
        let why = "a wasm container has no processes, so there is nothing to exec: use an httpGet or tcpSocket probe";
        std::future::ready(Err(why.to_string())).boxed()
    }
}

#[derive(Debug)]
struct WasmMeter {
    memory: Arc<MemoryPool>,
    cpu_time: Arc<CpuTime>,
}

impl Meter for WasmMeter {
    fn memory(&self) -> u64 {
        self.memory.used() as u64
    }

    fn cpu(&self) -> Duration {
        self.cpu_time.used()
    }
}

/// A pod's view of the cluster DNS's names: its search path starts in its own namespace.
#[derive(Debug)]
struct PodNames {
    zone: Arc<flotilla_net::dns::Zone>,
    namespace: String,
}

impl flotilla_wasm::Names for PodNames {
    fn resolve(&self, name: &str) -> Option<Vec<std::net::IpAddr>> {
        self.zone.resolve(&self.namespace, name)
    }
}
