//! The node's own objects: its Node (capacity, addresses, conditions, where its log server
//! listens) and its Lease in `kube-node-lease`, renewed as the kubelet renews it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::Node as Agent;

pub use flotilla_api::SERVING_CERT_ANNOTATION;
/// How long a Lease holds without renewal (the kubelet's default).
pub(crate) const LEASE_DURATION: Duration = Duration::from_secs(40);
/// How often the Lease is renewed: a quarter of its duration, as upstream does.
pub(crate) const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How often the Node's status is written when nothing in it changed.
pub(crate) const STATUS_REPORT: Duration = Duration::from_secs(60);

/// What the node has to offer.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Cores.
    pub cpu: f64,
    /// Bytes.
    pub memory: u64,
}

impl Capacity {
    pub fn of_this_machine() -> Capacity {
        let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let memory = meminfo("MemTotal:").unwrap_or(1 << 30);
        Capacity { cpu, memory }
    }

    /// Nothing.
    pub const NONE: Capacity = Capacity { cpu: 0.0, memory: 0 };

    /// This capacity less `reserved`, none of it below zero.
    pub fn less(self, reserved: Capacity) -> Capacity {
        Capacity { cpu: (self.cpu - reserved.cpu).max(0.0), memory: self.memory.saturating_sub(reserved.memory) }
    }
}

/// A value from `/proc/meminfo`, in bytes.
pub(crate) fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Creates the Node, or updates the one an earlier run of the agent registered.
pub(crate) async fn register(agent: &Arc<Agent>) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(agent.client.clone());
    let desired = desired_node(agent);
    let name = agent.config.name.clone();
    let node = match api.create(&PostParams::default(), &desired).await {
        Ok(node) => node,
        Err(kube::Error::Api(err)) if err.code == 409 => {
            let spec = desired.spec.unwrap_or_default();
            let patch = serde_json::json!({
                "metadata": {"labels": desired.metadata.labels, "annotations": desired.metadata.annotations},
                "spec": {"podCIDR": spec.pod_cidr, "podCIDRs": spec.pod_cidrs},
            });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?
        }
        Err(err) => return Err(err),
    };
    let status = serde_json::json!({"status": desired.status});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(node)
}

/// Renews the Lease every [`LEASE_RENEW`] and writes the Node's status when it changes or
/// every [`STATUS_REPORT`], until the agent stops.
pub(crate) async fn heartbeat(agent: Arc<Agent>, node: Node) {
    let leases: Api<Lease> = Api::namespaced(agent.client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(agent.client.clone());
    let name = agent.config.name.clone();
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: name.clone(),
        uid: node.metadata.uid.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut reported = tokio::time::Instant::now();
    let mut last = conditions_key(&conditions(agent.as_ref()));
    let mut ticks = tokio::time::interval(LEASE_RENEW);
    if agent.hollow {
        // Hollow nodes register together, a thousand within seconds, and would renew together
        // ever after: each takes a phase of its own, as separate machines would have.
        let hash =
            name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        ticks.reset_after(LEASE_RENEW.mul_f64((hash % 1000) as f64 / 1000.0));
    }
    loop {
        ticks.tick().await;
        if let Err(err) = renew(&leases, &name, &owner).await {
            tracing::warn!(%err, "cannot renew the node's lease");
        }
        let now = conditions(agent.as_ref());
        if conditions_key(&now) != last || reported.elapsed() >= STATUS_REPORT {
            let status = serde_json::json!({"status": {"conditions": now}});
            match nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await {
                Ok(_) => {
                    last = conditions_key(&now);
                    reported = tokio::time::Instant::now();
                }
                Err(err) => tracing::warn!(%err, "cannot write the node's status"),
            }
        }
    }
}

pub(crate) async fn renew(leases: &Api<Lease>, name: &str, owner: &OwnerReference) -> Result<(), kube::Error> {
    let now = MicroTime(jiff::Timestamp::now());
    let patch = serde_json::json!({"spec": {"renewTime": now, "holderIdentity": name}});
    match leases.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(err)) if err.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.into()),
                    lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            leases.create(&PostParams::default(), &lease).await.map(drop)
        }
        Err(err) => Err(err),
    }
}

/// The conditions without their times, to tell whether anything changed.
fn conditions_key(conditions: &[NodeCondition]) -> Vec<(String, String)> {
    conditions.iter().map(|c| (c.type_.clone(), c.status.clone())).collect()
}

fn conditions(agent: &Agent) -> Vec<NodeCondition> {
    let now = Time(jiff::Timestamp::now());
    let condition = |kind: &str, status: bool, reason: &str, message: &str| NodeCondition {
        type_: kind.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    let memory_low = agent.memory_pressure.load(std::sync::atomic::Ordering::Relaxed);
    let disk_low =
        agent.config.eviction_nodefs_available.is_some_and(|threshold| free_space_below(&agent.data_dir, threshold));
    vec![
        if memory_low {
            condition(
                "MemoryPressure",
                true,
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            condition("MemoryPressure", false, "KubeletHasSufficientMemory", "kubelet has sufficient memory available")
        },
        if disk_low {
            condition("DiskPressure", true, "KubeletHasDiskPressure", "kubelet has disk pressure")
        } else {
            condition("DiskPressure", false, "KubeletHasNoDiskPressure", "kubelet has no disk pressure")
        },
        condition("PIDPressure", false, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        condition("Ready", true, "KubeletReady", "kubelet is posting ready status"),
    ]
}

/// Whether the space free on the file system under `dir` (to an unprivileged writer, as `df`
/// shows it) is below `threshold`, a share of its size or an amount.
fn free_space_below(dir: &std::path::Path, threshold: crate::Threshold) -> bool {
    rustix::fs::statvfs(dir).is_ok_and(|stat| {
        let available = stat.f_bavail.saturating_mul(stat.f_frsize);
        available < threshold.bytes(stat.f_blocks.saturating_mul(stat.f_frsize))
    })
}

fn desired_node(agent: &Agent) -> Node {
    let config = &agent.config;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), config.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch.to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch.to_string()),
    ]);
    // One label per runtime class it offers, which the scheduler matches pods against.
    labels.extend(agent.runtimes.handlers().into_iter().map(|h| (flotilla_api::runtime_label(h), "true".into())));
    if agent.hollow {
        labels.insert(crate::hollow::HOLLOW_LABEL.into(), "true".into());
    }
    let annotations = BTreeMap::from([(SERVING_CERT_ANNOTATION.to_string(), config.serving_cert_sha256.clone())]);
    let resources = |of: Capacity| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(flotilla_api::quantity::cores(of.cpu))),
            ("memory".to_string(), Quantity(flotilla_api::quantity::bytes(of.memory))),
            ("pods".to_string(), Quantity(config.max_pods.to_string())),
        ])
    };
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default();
    let os_image = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_else(|| "Linux".into());
    let (major, minor) = flotilla_api::KUBERNETES_VERSION;
    let version = format!("v{major}.{minor}.0+flotilla.{}", env!("CARGO_PKG_VERSION"));
    // A hollow node's pods are reached nowhere: other nodes are not to route to its range.
    let range = (!agent.hollow).then(|| agent.addresses.range().to_string());
    Node {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(NodeSpec { pod_cidrs: range.clone().map(|r| vec![r]), pod_cidr: range, ..Default::default() }),
        status: Some(NodeStatus {
            allocatable: Some(resources(agent.allocatable)),
            capacity: Some(resources(agent.capacity)),
            conditions: Some(conditions(agent)),
            addresses: Some(vec![
                NodeAddress { type_: "InternalIP".into(), address: config.node_ip.to_string() },
                NodeAddress { type_: "Hostname".into(), address: config.name.clone() },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint { port: i32::from(config.server_port) }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: arch.into(),
                boot_id: read("/proc/sys/kernel/random/boot_id"),
                container_runtime_version: agent.runtimes.version(),
                kernel_version: read("/proc/sys/kernel/osrelease"),
                kube_proxy_version: String::new(),
                kubelet_version: version,
                machine_id: read("/etc/machine-id"),
                operating_system: "linux".into(),
                os_image,
                system_uuid: read("/sys/class/dmi/id/product_uuid"),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
