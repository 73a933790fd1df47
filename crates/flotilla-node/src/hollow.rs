//! Hollow nodes, as kubemark's: many nodes in one process, each the real agent ([`Agent`]) on a
//! runtime that runs nothing (`runtime::HollowRuntime`), with every image present. They
//! register, renew their Leases and take their pods through the kubelet's whole lifecycle
//! (volumes, init containers, restarts, probes, graceful stops, status) without running
//! anything, so that the scheduler and the controllers can be exercised and measured at a
//! thousand nodes on one machine.
//!
//! What they share: one watch on the bound pods, split by node, where each kubelet has its own
//! (this API server would filter a thousand watches for every event, where upstream's watch
//! cache indexes them by node name), and one reflector of Services. Their events are not written,
//! and they carry no traffic: no pod network, no Service proxy, no eviction.

use std::collections::HashMap;
use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use tokio::sync::mpsc;

use crate::pods::PodEvents;
use crate::{Agent, Capacity, Error, Host, NodeConfig};

/// The label every hollow node carries.
pub const HOLLOW_LABEL: &str = "node.flotilla.dev/hollow";
/// Nodes registering at once.
const STARTING_AT_ONCE: usize = 64;
/// Hollow nodes at most: each has a /24 of 127.128.0.0/9 for its pods.
pub const MAX_NODES: usize = 1 << 15;

/// What the hollow nodes look like.
#[derive(Debug, Clone)]
pub struct HollowConfig {
    /// How many nodes.
    pub count: usize,
    /// Their names: `<prefix>-0`, `<prefix>-1`, …
    pub prefix: String,
    /// What each has.
    pub capacity: Capacity,
    pub max_pods: u32,
    /// Each keeps its pods' directories and logs in `<data_dir>/<name>`.
    pub data_dir: PathBuf,
}

impl HollowConfig {
    pub fn new(count: usize, data_dir: PathBuf) -> HollowConfig {
        HollowConfig {
            count,
            prefix: "hollow".into(),
            capacity: Capacity { cpu: 4.0, memory: 16 << 30 },
            max_pods: 110,
            data_dir,
        }
    }

    fn name(&self, index: usize) -> String {
        format!("{}-{index}", self.prefix)
    }

    /// The agent's configuration of node `index`: its pods' addresses are a /24 of
    /// 127.128.0.0/9, where nothing answers.
    fn node(&self, index: usize) -> NodeConfig {
        let name = self.name(index);
        let range = format!("127.{}.{}.0/24", 128 + index / 256, index % 256);
        NodeConfig {
            data_dir: self.data_dir.join(&name),
            name,
            node_ip: std::net::Ipv4Addr::LOCALHOST,
            pod_cidr: range.parse().expect("a /24 of 127.128.0.0/9"),
            proxy_mode: flotilla_net::ProxyMode::Userspace,
            max_pods: self.max_pods,
            allow_host_path: false,
            insecure_registries: Vec::new(),
            // No node API: `kubectl logs` is told the node reports no port.
            server_port: 0,
            serving_cert_sha256: String::new(),
            identity: None,
            protected_endpoints: Vec::new(),
            reserved: Capacity::NONE,
            default_memory_limit: 128 << 20,
            pod_max_pids: None,
            eviction_memory_available: 0,
            eviction_nodefs_available: None,
            eviction_pressure_transition_period: std::time::Duration::from_secs(300),
            activation_timeout: std::time::Duration::from_secs(30),
            oci_helper: None,
        }
    }
}

/// What a hollow node's agent is given rather than makes.
pub(crate) struct Plugs {
    pub capacity: Capacity,
    /// The Services, for pods' environment and DNS.
    pub services: reflector::Store<Service>,
    /// The node's share of the watch on bound pods.
    pub pods: PodEvents,
}

/// Registers the nodes and runs them until the future is dropped.
pub async fn run(client: kube::Client, config: HollowConfig) -> Result<(), Error> {
    let (mut routes, mut shares) = (HashMap::new(), Vec::new());
    for index in 0..config.count {
        let (route, share) = mpsc::unbounded_channel();
        routes.insert(config.name(index), route);
        shares.push(share);
    }
    let (services, watch_services) = crate::watch_services(client.clone());
    let _tasks = Tasks(vec![tokio::spawn(watch_services), tokio::spawn(split_pods(client.clone(), routes))]);
    let agents: Vec<Agent> = futures::stream::iter(shares.into_iter().enumerate())
        .map(|(index, share)| {
            let pods = futures::stream::unfold(share, |mut share| async { Some((Ok(share.recv().await?), share)) });
            let plugs = Plugs { capacity: config.capacity, services: services.clone(), pods: pods.boxed() };
            Agent::launch(client.clone(), config.node(index), Host::Hollow(plugs))
        })
        .buffer_unordered(STARTING_AT_ONCE)
        .try_collect()
        .await?;
    tracing::info!(nodes = agents.len(), prefix = config.prefix, "hollow nodes registered");
    std::future::pending().await
}

struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Watches the pods bound to any node, and hands each node the events of its own, as its
/// own watch (`spec.nodeName=<node>`) would have: the start and end of every list too.
async fn split_pods(client: kube::Client, routes: HashMap<String, mpsc::UnboundedSender<Event<Pod>>>) {
    let config = watcher::Config::default().fields("spec.nodeName!=");
    let mut events = watcher::watcher(Api::<Pod>::all(client), config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let mut event = match event {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(%err, "watching the hollow nodes' pods");
                continue;
            }
        };
        let pod = match &mut event {
            Event::Apply(pod) | Event::InitApply(pod) | Event::Delete(pod) => pod,
            Event::Init | Event::InitDone => {
                for route in routes.values() {
                    let _ = route.send(event.clone());
                }
                continue;
            }
        };
        // Kept by each worker, which never reads them: a third of a pod's size.
        pod.metadata.managed_fields = None;
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        if let Some(route) = node.and_then(|node| routes.get(node)) {
            let _ = route.send(event);
        }
    }
}
