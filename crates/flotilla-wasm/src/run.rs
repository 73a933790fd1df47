//! Running one container: a store with exactly what the spec grants, then `_start` or
//! `wasi:cli/run`, and how it ended.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::cluster::GuestNetwork;
use crate::egress::Egress;
use crate::http::Requests;
use crate::limits::{CpuLimit, CpuTime, MemoryLimit, MemoryPool, metered};
use crate::output::{OutputPipe, OutputSink, Stream};
use crate::program::{Linked, Program};
use crate::sockets::Sockets;

/// What one container may see and use. Nothing else is visible to the guest: no host
/// environment, no file outside `dirs`, no socket unless `network` grants it.
pub struct ContainerSpec {
    /// `argv`, its first element the program name.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The guest's initial working directory (`workingDir`).
    pub working_dir: Option<String>,
    /// Host directories the guest sees, at guest paths (the pod's volumes).
    pub dirs: Vec<Preopen>,
    /// The container's memory: `resources.limits.memory`, which all its instances share, and
    /// what they hold (which the node reads to account for its pods).
    pub memory: Arc<MemoryPool>,
    /// The CPU time its instances use, counted for the node to read.
    pub cpu_time: Arc<CpuTime>,
    /// The requests a `wasi:http` component is serving and has served, counted for the node.
    pub requests: Arc<Requests>,
    /// The container's stop signal.
    pub terminate: Arc<Terminate>,
    /// `resources.limits.cpu` in cores (0.5 for `500m`).
    pub cpu_limit: Option<f64>,
    /// The pod's network; `None` gives the guest no socket at all.
    pub network: Option<Network>,
    /// A `wasi:http` component's requests served at once (each an instance); `None` for
    /// [`DEFAULT_HTTP_CONCURRENCY`](crate::DEFAULT_HTTP_CONCURRENCY).
    pub http_concurrency: Option<usize>,
    pub output: Arc<dyn OutputSink>,
}

/// A container's stop signal, as SIGTERM is a process's: a `wasi:http` component's server stops
/// taking connections, lets those open finish the requests they carry, and ends (exit 0) when
/// they have; a command has no handler for it (WASI has no signals) and runs on until it is
/// killed (its run future dropped).
#[derive(Debug)]
pub struct Terminate(tokio::sync::watch::Sender<bool>);

impl Terminate {
    pub fn new() -> Arc<Terminate> {
        Arc::new(Terminate(tokio::sync::watch::Sender::new(false)))
    }

    /// Sends the signal; sending it again changes nothing.
    pub fn send(&self) {
        self.0.send_replace(true);
    }

    /// Once the signal is sent.
    pub(crate) async fn received(&self) {
        let _ = self.0.subscribe().wait_for(|sent| *sent).await;
    }
}

/// A pod's network as its containers see it.
#[derive(Debug, Clone)]
pub struct Network {
    /// The pod's address: the only one a guest may bind (but for its loopback, in a
    /// [`namespace`](Network::namespace) of its own).
    pub pod_ip: IpAddr,
    /// Whether the guest runs in a network namespace of the pod's own, which it shares with
    /// the pod's Linux containers; the caller runs it there (its sockets are made in the
    /// namespace of the thread that runs it). Then localhost is that namespace's loopback, as
    /// in any pod, and what the node listens on for the guest listens on every address of it.
    /// Otherwise the guest's sockets are the host's, and localhost is the pod's address.
    pub namespace: bool,
    /// Where the guest may not connect.
    pub egress: Arc<Egress>,
    /// The container's declared TCP `containerPort`s. A p1 core module, which cannot bind, gets
    /// a listening socket on each, pre-opened as fds 3, 4, … (`LISTEN_FDS` says how many); a p2
    /// component binds them itself through `wasi:sockets`.
    pub ports: Vec<u16>,
    /// The names the node answers itself (the cluster DNS's), before its resolver is asked.
    pub names: Option<Arc<dyn Names>>,
    /// Which addresses are pods'. `None`: none is known, and every connection leaves from the
    /// node's address.
    pub pod_network: Option<Arc<dyn PodNetwork>>,
    /// The Services' frontends the node resolves at `connect`. `None`: a connection goes where
    /// it was asked to (through whatever data path the host has).
    pub frontends: Option<Arc<dyn Frontends>>,
}

impl Network {
    /// Where the node listens for the guest (a p1 module's ports, a `wasi:http` server): the
    /// pod's address, or in a namespace of its own its every address, so that the pod's other
    /// containers reach the guest on localhost.
    pub(crate) fn listen_ip(&self) -> IpAddr {
        if self.namespace { IpAddr::from([0, 0, 0, 0]) } else { self.pod_ip }
    }

    /// Whether the guest may bind `ip`: the pod's address, or in a namespace of its own, its
    /// loopback and wildcard addresses too.
    fn binds(&self, ip: IpAddr) -> bool {
        ip == self.pod_ip || self.is_own_loopback(ip)
    }

    /// Whether the guest may connect to `to`: what the egress policy allows, and in a namespace
    /// of its own, its loopback, which is the pod's and no one else's.
    pub(crate) fn allows(&self, to: SocketAddr) -> bool {
        self.is_own_loopback(to.ip()) || self.egress.allows(to)
    }

    /// Whether `ip` is the loopback of the pod's own namespace (`127.0.0.1`, `::1`, or "this
    /// host"): only those. The rest of 127.0.0.0/8 is the node's from there (the namespace's
    /// local route is narrowed to 127.0.0.1, so that a pod range on loopback, its gateway
    /// included, is routed to the host).
    pub(crate) fn is_own_loopback(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.namespace && (ip == Ipv4Addr::LOCALHOST || ip == Ipv6Addr::LOCALHOST || ip.is_unspecified())
    }
}

/// The frontends of Services (a cluster IP and port, a node port): a guest's TCP connection to
/// one, or its UDP socket connected to one, goes straight to an endpoint picked here, as the
/// host's socket layer makes it, with no relay and no kernel rule between.
pub trait Frontends: Send + Sync + std::fmt::Debug {
    /// Where a `protocol` connection from `client` (the pod's address) to `to` goes: `None`
    /// when `to` is no frontend, and the connection goes where it was asked to.
    fn pick(&self, protocol: Protocol, to: SocketAddr, client: IpAddr) -> Option<Pick>;
}

/// A transport protocol of a guest's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Where a connection to a frontend goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// To this endpoint.
    Endpoint(SocketAddr),
    /// Nowhere: the Service has no endpoint in rotation, and the connection is refused.
    Refused,
}

/// Names a node resolves for its guests from what it knows (a Service's name, with the pod's
/// search path), so that they reach the cluster by name without a DNS round trip.
pub trait Names: Send + Sync + std::fmt::Debug {
    /// The addresses of `name`: `None` when it is not one of these names (the node's resolver
    /// is asked), `Some` of nothing when it is but holds no address (NXDOMAIN).
    fn resolve(&self, name: &str) -> Option<Vec<IpAddr>>;
}

/// The cluster's pod addresses. A guest's HTTP request to one leaves from the pod's own
/// address, so that the peer sees who called, as on a flat pod network; a request to anywhere
/// else leaves from the node's, as a CNI masquerades what leaves the pod network. (A guest's
/// own `wasi:sockets` connection leaves from where the guest binds it: the pod's address, which
/// it may bind, or by default the node's.)
pub trait PodNetwork: Send + Sync + std::fmt::Debug {
    fn contains(&self, ip: IpAddr) -> bool;

    /// Makes a pod's address `to` reachable from this host, before a connection to it (a pod
    /// of a node reached through a tunnel gets an entrance here): whether the connection may
    /// be made. A refusal fails it as refused.
    fn reach(&self, to: SocketAddr) -> bool;
}

impl std::fmt::Debug for ContainerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerSpec")
            .field("argv", &self.argv)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("working_dir", &self.working_dir)
            .field("dirs", &self.dirs)
            .field("memory", &self.memory)
            .field("cpu_time", &self.cpu_time)
            .field("requests", &self.requests)
            .field("terminate", &self.terminate)
            .field("cpu_limit", &self.cpu_limit)
            .field("network", &self.network)
            .field("http_concurrency", &self.http_concurrency)
            .finish_non_exhaustive()
    }
}

/// A host directory shown to the guest, given as a handle the node opened: the runtime never
/// resolves a host path on a pod's behalf, so a link a guest planted or swapped in cannot
/// change which directory this is.
#[derive(Debug, Clone)]
pub struct Preopen {
    pub dir: Arc<File>,
    pub guest: String,
    pub read_only: bool,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The guest returned or called `exit`; 0 is success.
    Exited(i32),
    /// The guest outgrew its memory limit.
    OutOfMemory { message: String },
    /// The guest trapped (`unreachable`, a bad memory access, a stack overflow, …).
    Trapped { message: String },
    /// It could not start: the instance could not be created or set up.
    Failed { message: String },
}

impl Exit {
    /// The exit code upstream would show: 137 for OOM (SIGKILL), 128 + 6 for a trap (as an
    /// aborted process), 128 for a failure to start.
    pub fn code(&self) -> i32 {
        match self {
            Exit::Exited(code) => *code,
            Exit::OutOfMemory { .. } => 137,
            Exit::Trapped { .. } => 134,
            Exit::Failed { .. } => 128,
        }
    }
}

pub(crate) struct CoreGuest {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) sockets: Sockets,
    memory: MemoryLimit,
    cpu: CpuLimit,
}

pub(crate) struct ComponentGuest {
    wasi: WasiCtx,
    table: ResourceTable,
    network: Option<Network>,
    memory: MemoryLimit,
    cpu: CpuLimit,
}

impl WasiView for ComponentGuest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl GuestNetwork for ComponentGuest {
    fn network(&self) -> Option<&Network> {
        self.network.as_ref()
    }
}

pub(crate) async fn run(engine: &Engine, program: &Program, spec: ContainerSpec, empty_dir: &Path) -> Exit {
    let memory = MemoryLimit::sharing(spec.memory.clone());
    let cpu = CpuLimit::new(spec.cpu_limit);
    match &program.kind {
        Linked::Core(pre) => {
            let listeners = match listen(spec.network.as_ref()) {
                Ok(listeners) => listeners,
                Err(message) => return Exit::Failed { message },
            };
            let mut wasi = WasiCtxBuilder::new();
            // Each listener's descriptor number is reserved by an empty, read-only directory
            // opened before anything else, so that the listeners are fds 3, 4, … (see `sockets`).
            for (port, _) in &listeners {
                if let Err(err) = wasi.preopened_dir(empty_dir, format!("/.flotilla/listen/{port}"), FsPerms::ReadOnly)
                {
                    return Exit::Failed { message: format!("reserving a descriptor for port {port}: {err:#}") };
                }
            }
            if !listeners.is_empty() {
                wasi.env("LISTEN_FDS", listeners.len().to_string());
            }
            if let Err(message) = configure(&mut wasi, &spec) {
                return Exit::Failed { message };
            }
            let sockets = Sockets::new(listeners.into_iter().map(|(_, l)| l).collect());
            let mut store = Store::new(engine, CoreGuest { wasi: wasi.build_p1(), sockets, memory, cpu });
            store.limiter(|guest| &mut guest.memory);
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|mut guest| Ok(guest.data_mut().cpu.on_tick()));
            let result = metered(&spec.cpu_time, async {
                let instance = pre.instantiate_async(&mut store).await.map_err(Setup)?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start").map_err(Setup)?;
                start.call_async(&mut store, ()).await.map_err(Ran)
            })
            .await;
            exit(result.map(|()| 0), &store.data().memory)
        }
        Linked::Proxy(pre) => crate::http::serve(engine, pre, spec).await,
        Linked::Command(pre) => {
            let mut wasi = WasiCtxBuilder::new();
            if let Err(message) = configure(&mut wasi, &spec) {
                return Exit::Failed { message };
            }
            grant_network(&mut wasi, spec.network.as_ref());
            let network = spec.network.clone();
            let guest = ComponentGuest { wasi: wasi.build(), table: ResourceTable::new(), network, memory, cpu };
            let mut store = Store::new(engine, guest);
            store.limiter(|guest| &mut guest.memory);
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|mut guest| Ok(guest.data_mut().cpu.on_tick()));
            let result = metered(&spec.cpu_time, async {
                let command = pre.instantiate_async(&mut store).await.map_err(Setup)?;
                command.wasi_cli_run().call_run(&mut store).await.map_err(Ran)
            })
            .await;
            // `wasi:cli/run` returns `result` with no payload: an error is exit code 1.
            exit(result.map(|ran| if ran.is_ok() { 0 } else { 1 }), &store.data().memory)
        }
    }
}

/// Listening sockets on the pod's address for each declared port.
fn listen(network: Option<&Network>) -> Result<Vec<(u16, tokio::net::TcpListener)>, String> {
    let Some(network) = network else { return Ok(Vec::new()) };
    network
        .ports
        .iter()
        .map(|&port| {
            let listener = std::net::TcpListener::bind((network.listen_ip(), port))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|err| format!("cannot listen on {}:{port}: {err}", network.pod_ip))?;
            Ok((port, listener))
        })
        .collect()
}

/// A failure while setting the instance up, or while the guest ran.
enum Failure {
    Setup(wasmtime::Error),
    Ran(wasmtime::Error),
}
use Failure::{Ran, Setup};

fn exit(result: Result<i32, Failure>, memory: &MemoryLimit) -> Exit {
    let err = match result {
        Ok(code) => return Exit::Exited(code),
        Err(Setup(err) | Ran(err)) if memory.exceeded.is_some() => {
            return Exit::OutOfMemory { message: format!("{err:#}") };
        }
        Err(Setup(err)) => return Exit::Failed { message: format!("{err:#}") },
        Err(Ran(err)) => err,
    };
    if let Some(I32Exit(code)) = err.downcast_ref::<I32Exit>() {
        return Exit::Exited(*code);
    }
    match err.downcast_ref::<Trap>() {
        Some(trap) => Exit::Trapped { message: format!("wasm trap: {trap}\n{err:?}") },
        None => Exit::Trapped { message: format!("{err:#}") },
    }
}

/// `wasi:sockets` for a component on `network`: it may bind only the pod's own address,
/// connect wherever its egress policy allows, and look names up.
pub(crate) fn grant_network(wasi: &mut WasiCtxBuilder, network: Option<&Network>) {
    let Some(network) = network else { return };
    let network = network.clone();
    wasi.allow_tcp(true).allow_udp(true).allow_ip_name_lookup(true).socket_addr_check(move |addr, usage| {
        let network = network.clone();
        Box::pin(async move {
            match usage {
                // A connect binds implicitly to the wildcard address and port 0 first; anything
                // else bound is the pod's own address.
                SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                    network.binds(addr.ip()) || (addr.ip().is_unspecified() && addr.port() == 0)
                }
                // What listens, listens on the pod's address only (not on the host's).
                SocketAddrUse::TcpListen => network.binds(addr.ip()),
                SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend => network.allows(addr),
                SocketAddrUse::TcpAccept | SocketAddrUse::UdpReceive => true,
            }
        })
    });
}

/// Grants what the spec names: argv, env, working directory, directories and output.
pub(crate) fn configure(wasi: &mut WasiCtxBuilder, spec: &ContainerSpec) -> Result<(), String> {
    wasi.args(&spec.argv)
        .envs(&spec.env)
        .stdout(OutputPipe::new(spec.output.clone(), Stream::Stdout))
        .stderr(OutputPipe::new(spec.output.clone(), Stream::Stderr));
    if let Some(dir) = &spec.working_dir {
        // Components are told through `wasi:cli/environment.initial-cwd`. wasi-libc (Rust's,
        // C's) starts every program in `/` and reads neither that nor anything else, so the
        // directory is also exported as `PWD`, as a shell would: the convention wasi-sdk
        // programs and runners (`wasmtime run --env PWD`) use to `chdir` at start-up.
        wasi.initial_cwd(dir);
        if !spec.env.iter().any(|(key, _)| key == "PWD") {
            wasi.env("PWD", dir);
        }
    }
    for dir in &spec.dirs {
        let perms = if dir.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        // wasmtime-wasi preopens by path only. `/proc/self/fd/N` names the very directory the
        // handle holds (the kernel follows that link to the open file, not to a path), which is
        // how the kubelet mounts a subPath too (it bind-mounts `/proc/<pid>/fd/<n>`).
        let handle = format!("/proc/self/fd/{}", dir.dir.as_raw_fd());
        wasi.preopened_dir(&handle, &dir.guest, perms).map_err(|err| format!("opening {}: {err:#}", dir.guest))?;
    }
    Ok(())
}
