//! `flotilla-node`: the node agent, which does the kubelet's job.
//!
//! It registers its Node and renews its Lease, watches the pods bound to it, and runs each pod's
//! containers on a runtime behind one seam (`runtime`): wasm modules on `flotilla-wasm`, and,
//! as root, container images as Linux containers (youki's `libcontainer`); images resolved through the node's image
//! store or a registry, init containers in order, restarts by policy with upstream's back-off,
//! status written as the kubelet shapes it, Events, and logs in the CRI format that its HTTP API
//! serves for `kubectl logs`; and it carries traffic to Services (`flotilla-net`, kube-proxy's
//! part). It talks to the cluster only through the Kubernetes API (a
//! `kube::Client`, in-process or remote), and writes only its own Node, Lease, pods' status and
//! Events.

mod activations;
mod beneath;
mod exec;
pub mod hollow;
pub mod images;
pub mod logs;
mod network;
mod node;
mod objects;
mod pods;
mod prometheus;
mod runtime;
mod server;
mod stats;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use flotilla_api::Cidr;
use flotilla_wasm::{Runtime, RuntimeConfig};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::task::JoinHandle;

pub use images::{ImageStore, Reference};
pub use node::{Capacity, SERVING_CERT_ANNOTATION};

/// How a node agent runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Node's name (`kubernetes.io/hostname`).
    pub name: String,
    /// Where the agent keeps images, compiled modules, pod volumes and logs.
    pub data_dir: PathBuf,
    /// The address other machines (and the API server) reach this node at.
    pub node_ip: Ipv4Addr,
    /// The range pods get their addresses from.
    pub pod_cidr: Cidr,
    /// How traffic to Services is carried.
    pub proxy_mode: flotilla_net::ProxyMode,
    /// Pods the node admits: its wasm instance slots.
    pub max_pods: u32,
    /// Whether pods may mount host directories (`hostPath`): off unless the operator says so.
    pub allow_host_path: bool,
    /// Registries (`host:port`) pulled from over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The port the node's HTTP API is served on (by the caller, over TLS).
    pub server_port: u16,
    /// SHA-256 (hex) of the certificate it is served with, published on the Node.
    pub serving_cert_sha256: String,
    /// The node's client certificate from the cluster CA (`system:node:<name>`), which it
    /// presents to other nodes' APIs: the tunnels to their pods need it.
    pub identity: Option<flotilla_auth::pki::Issued>,
    /// The node's own endpoints, which its guests may not connect to (the store's peer port,
    /// the node API): see `flotilla_wasm::Egress`.
    pub protected_endpoints: Vec<std::net::SocketAddr>,
    /// What the node keeps for the system and itself (`--system-reserved` plus
    /// `--kube-reserved`): pods are offered the rest, its allocatable.
    pub reserved: Capacity,
    /// The memory limit of a container that declares none: upstream leaves it unbounded, and a
    /// guest would then be bounded only by its 4 GiB address space, times its instances.
    pub default_memory_limit: u64,
    /// The processes (threads included) a pod's Linux containers may have together, if
    /// bounded (the kubelet's `--pod-max-pids`).
    pub pod_max_pids: Option<u32>,
    /// Pods are evicted when the memory available falls below this (the kubelet's
    /// `--eviction-hard memory.available<100Mi`).
    pub eviction_memory_available: u64,
    /// The node reports `DiskPressure`, and takes no more pods, when the space free on the
    /// data directory's file system falls below this (`--eviction-hard nodefs.available<5%`);
    /// `None`: never.
    pub eviction_nodefs_available: Option<Threshold>,
    /// How long `MemoryPressure` stays after the threshold was last met (the kubelet's
    /// `--eviction-pressure-transition-period`).
    pub eviction_pressure_transition_period: std::time::Duration,
    /// How long a connection to a Service scaling up from zero waits for an endpoint.
    pub activation_timeout: std::time::Duration,
    /// The program whose `oci-helper` creates Linux containers (the agent's own binary), when
    /// the node runs container images (runtime class `oci`): it needs root.
    pub oci_helper: Option<PathBuf>,
}

/// An eviction threshold (`100Mi`, `5%`): an amount, or a share of the whole.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Bytes(u64),
    Percent(f64),
}

impl Threshold {
    /// The threshold in bytes, of a resource of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            Threshold::Bytes(bytes) => bytes,
            Threshold::Percent(percent) => (total as f64 * percent / 100.0) as u64,
        }
    }
}

impl NodeConfig {
    /// This machine's host name, the default node name.
    pub fn hostname() -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    }
}

/// The directories under a node's data directory that hold containers' filesystems (image
/// snapshots, containers' own layers and mount points) and pods' namespaces, whose files'
/// modes and owners are theirs, not the node's.
pub fn container_filesystems(data_dir: &std::path::Path) -> Vec<PathBuf> {
    ["images/snapshots", "oci/bundles", "oci/sandboxes"].iter().map(|dir| data_dir.join(dir)).collect()
}

/// The `oci-helper` step `args` name (after `oci-helper`), run in this process, which must be a
/// fresh single-threaded one: its exit code.
pub fn oci_helper(args: &[String]) -> i32 {
    runtime::oci::helper::main(args)
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("setting up the wasm runtime: {0}")]
    Runtime(#[from] flotilla_wasm::RuntimeError),
    #[error("opening the image store: {0}")]
    Images(#[from] images::StoreError),
    #[error("registering the node: {0}")]
    Register(#[from] kube::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("setting up the data path to Services: {0}")]
    DataPath(String),
}

/// What every part of the agent shares.
pub(crate) struct Node {
    client: kube::Client,
    config: NodeConfig,
    data_dir: PathBuf,
    pods_dir: PathBuf,
    logs_dir: PathBuf,
    capacity: Capacity,
    /// What pods are offered: capacity less what is reserved and the eviction threshold.
    allocatable: Capacity,
    /// What every guest on the node holds together, bounded by capacity less what is reserved
    /// (as the `kubepods` cgroup bounds pods upstream): each container's pool sits within it.
    memory: Arc<flotilla_wasm::MemoryPool>,
    /// The eviction manager last saw available memory below its threshold.
    memory_pressure: std::sync::atomic::AtomicBool,
    /// The runtimes pods run on, by `runtimeClassName`.
    runtimes: runtime::Runtimes,
    images: images::Images,
    addresses: network::PodAddresses,
    events: flotilla_client::Recorder,
    pods: pods::PodTable,
    services: reflector::Store<Service>,
    /// The ConfigMaps and Secrets the node's pods use.
    config_maps: objects::ObjectWatches<ConfigMap>,
    secrets: objects::ObjectWatches<Secret>,
    probe_client: pods::ProbeClient,
    /// Where the guests may not connect.
    egress: Arc<flotilla_wasm::Egress>,
    /// The cluster DNS's names, which guests resolve without asking it.
    zone: Arc<flotilla_net::dns::Zone>,
    /// Every node's pod range, and this node's routes to them (none on a hollow node, whose
    /// pods have no traffic to route).
    pod_network: Option<Arc<PodRanges>>,
    /// The Services' frontends, which guests connect through.
    frontends: Arc<ServiceFrontends>,
    /// Holds connections to Services scaling up from zero.
    activator: Arc<flotilla_net::Activator>,
    /// What the node times as it goes, for `/metrics`.
    instruments: prometheus::Instruments,
    /// The node runs nothing (`hollow`).
    hollow: bool,
}

/// The cluster's Services, as a reflector keeps them, and the watch that keeps them (to run).
fn watch_services(client: kube::Client) -> (reflector::Store<Service>, futures::future::BoxFuture<'static, ()>) {
    let (services, writer) = reflector::store();
    let watch = watcher::watcher(Api::<Service>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(|_| async {});
    (services, futures::FutureExt::boxed(watch))
}

/// The pod network as the runtime asks it: which addresses are pods', and how to reach them.
#[derive(Debug)]
struct PodRanges(Arc<flotilla_net::PodNetwork>);

impl flotilla_wasm::PodNetwork for PodRanges {
    fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.0.contains(ip)
    }

    fn reach(&self, to: std::net::SocketAddr) -> bool {
        self.0.reach(to)
    }
}

/// The Services' frontends as the runtime asks them.
#[derive(Debug, Default)]
struct ServiceFrontends(flotilla_net::Frontends);

impl flotilla_wasm::Frontends for ServiceFrontends {
    fn pick(
        &self,
        protocol: flotilla_wasm::Protocol,
        to: std::net::SocketAddr,
        client: std::net::IpAddr,
    ) -> Option<flotilla_wasm::Pick> {
        let protocol = match protocol {
            flotilla_wasm::Protocol::Tcp => flotilla_net::Protocol::Tcp,
            flotilla_wasm::Protocol::Udp => flotilla_net::Protocol::Udp,
        };
        Some(match self.0.pick(protocol, to, client)? {
            flotilla_net::Pick::Endpoint(endpoint) => flotilla_wasm::Pick::Endpoint(endpoint),
            flotilla_net::Pick::Refused => flotilla_wasm::Pick::Refused,
        })
    }
}

/// A running node agent. Dropping it stops everything it runs, guests included.
pub struct Agent {
    node: Arc<Node>,
    tasks: Vec<JoinHandle<()>>,
    /// Traffic to Services, through this node (none through a hollow one).
    _proxy: Option<flotilla_net::ServiceProxy>,
}

/// What a node's pods run on: this machine, or nothing (a hollow node, as kubemark's: the real
/// agent on a runtime that runs nothing, with what [`hollow::Plugs`] gives it).
enum Host {
    Real,
    Hollow(hollow::Plugs),
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("node", &self.node.config.name).finish_non_exhaustive()
    }
}

impl Agent {
    /// Registers the node through `client` and starts running the pods bound to it.
    pub async fn start(client: kube::Client, config: NodeConfig) -> Result<Agent, Error> {
        Agent::launch(client, config, Host::Real).await
    }

    /// The agent of a node that runs on `host`.
    async fn launch(client: kube::Client, config: NodeConfig, host: Host) -> Result<Agent, Error> {
        let data_dir = config.data_dir.clone();
        let dir = |name: &str| -> Result<PathBuf, Error> {
            let path = data_dir.join(name);
            std::fs::create_dir_all(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
            Ok(path)
        };
        let (pods_dir, logs_dir) = (dir("pods")?, dir("logs")?);
        let store = ImageStore::open(dir("images")?)?;
        let hollow = matches!(host, Host::Hollow(_));
        let capacity = match &host {
            Host::Real => Capacity::of_this_machine(),
            Host::Hollow(plugs) => plugs.capacity,
        };
        let (activator, activations) = flotilla_net::Activator::new(config.activation_timeout);
        let for_pods = capacity.less(config.reserved);
        let allocatable = for_pods.less(Capacity { cpu: 0.0, memory: config.eviction_memory_available });
        let memory = flotilla_wasm::MemoryPool::new(Some(for_pods.memory));
        let egress = Arc::new(flotilla_wasm::Egress::protecting(config.protected_endpoints.clone()));
        let zone = Arc::new(flotilla_net::dns::Zone::new(flotilla_net::dns::CLUSTER_DOMAIN));
        let frontends = Arc::new(ServiceFrontends::default());
        let mut runtimes = runtime::Runtimes::default();
        let (images, pod_network, events, services, pod_events, watch_services) = match host {
            Host::Real => {
                let pod_network = Arc::new(PodRanges(Arc::new(flotilla_net::PodNetwork::start(
                    client.clone(),
                    config.name.clone(),
                    config.pod_cidr,
                    config.identity.clone(),
                ))));
                if let Some(helper) = &config.oci_helper {
                    let oci = runtime::OciRuntime::new(
                        helper.clone(),
                        store.clone(),
                        dir("oci")?,
                        config.pod_cidr,
                        config.pod_max_pids,
                    );
                    match oci {
                        Ok(oci) => runtimes.add(Arc::new(oci)),
                        Err(err) => tracing::warn!(%err, "this node runs no container images"),
                    }
                }
                let mut runtime_config = RuntimeConfig::new(dir("modules")?);
                runtime_config.instance_slots = config.max_pods;
                runtimes.add(Arc::new(runtime::WasmRuntime {
                    runtime: Arc::new(Runtime::new(runtime_config)?),
                    store: store.clone(),
                    memory: memory.clone(),
                    default_memory_limit: config.default_memory_limit,
                    egress: egress.clone(),
                    zone: zone.clone(),
                    pod_network: pod_network.clone(),
                    frontends: frontends.clone(),
                }));
                let (services, watch) = watch_services(client.clone());
                (
                    images::Images::new(store, images::Registries::new(config.insecure_registries.clone())),
                    Some(pod_network),
                    flotilla_client::Recorder::new(client.clone(), "kubelet", Some(&config.name)),
                    services,
                    pods::watch(client.clone(), &config.name),
                    Some(watch),
                )
            }
            Host::Hollow(plugs) => {
                runtimes.add(Arc::new(runtime::HollowRuntime));
                let events = flotilla_client::Recorder::discarding(client.clone(), "kubelet");
                (images::Images::made_up(store), None, events, plugs.services, plugs.pods, None)
            }
        };
        let node = Arc::new(Node {
            events,
            addresses: network::PodAddresses::new(config.pod_cidr),
            capacity,
            allocatable,
            memory,
            memory_pressure: Default::default(),
            pods: pods::PodTable::default(),
            client: client.clone(),
            data_dir,
            pods_dir,
            logs_dir,
            runtimes,
            images,
            services,
            config_maps: objects::ObjectWatches::new(client.clone()),
            secrets: objects::ObjectWatches::new(client.clone()),
            probe_client: if hollow { pods::ProbeClient::hollow() } else { pods::ProbeClient::new(egress.clone()) },
            egress,
            zone,
            pod_network,
            frontends,
            activator,
            instruments: prometheus::Instruments::default(),
            hollow,
            config,
        });
        let registered = node::register(&node).await?;
        if !hollow {
            tracing::info!(node = node.config.name, pods = %node.config.pod_cidr, "node registered");
        }
        let proxy = match &node.pod_network {
            Some(pod_network) => Some(flotilla_net::ServiceProxy::start(
                client,
                flotilla_net::ProxyConfig {
                    node_name: node.config.name.clone(),
                    node_ip: node.config.node_ip,
                    upstream_dns: flotilla_net::dns::system_resolver(),
                },
                node.zone.clone(),
                {
                    // Guests reach Services through it: it goes nowhere they may not.
                    let egress = node.egress.clone();
                    let allows = move |endpoint| egress.allows(endpoint);
                    let (mode, frontends) = (node.config.proxy_mode, node.frontends.0.clone());
                    let activator = (node.activator.clone(), node.config.node_ip.into());
                    flotilla_net::data_path(mode, pod_network.0.clone(), allows, frontends, activator)
                        .map_err(Error::DataPath)?
                },
                Some(node.activator.clone()),
            )),
            None => None,
        };
        let mut tasks = vec![tokio::spawn(node::heartbeat(node.clone(), registered))];
        tasks.extend(watch_services.map(tokio::spawn));
        tasks.push(tokio::spawn(pods::run(node.clone(), pod_events)));
        if !hollow {
            tasks.push(tokio::spawn(pods::eviction::run(node.clone())));
            tasks.push(tokio::spawn(activations::tell(node.clone(), activations)));
        }
        Ok(Agent { node, tasks, _proxy: proxy })
    }

    /// The node's HTTP API (logs), for the caller to serve over TLS on `server_port`.
    pub fn router(&self) -> axum::Router {
        server::router(self.node.clone())
    }

    /// Pods the agent holds.
    pub fn pods(&self) -> usize {
        self.node.pods.len()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
