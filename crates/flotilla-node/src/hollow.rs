//! Hollow nodes, as kubemark's: many simulated nodes in one process that register, renew their
//! Leases and report the pods bound to them Running — without running anything. They let the
//! scheduler and controllers be exercised and measured at a thousand nodes on one machine.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use flotilla_client::{Change, Informer, ObjectKey, WorkQueue};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use tokio::sync::Semaphore;

use crate::node::{LEASE_RENEW, renew};

/// The label every hollow node carries.
pub const HOLLOW_LABEL: &str = "node.flotilla.dev/hollow";
/// Pod status writes in flight at once.
const WORKERS: usize = 64;
/// Lease renewals in flight at once.
const RENEWALS_IN_FLIGHT: usize = 64;

/// What the hollow nodes look like.
#[derive(Debug, Clone)]
pub struct HollowConfig {
    /// How many nodes.
    pub count: usize,
    /// Their names: `<prefix>-0`, `<prefix>-1`, …
    pub prefix: String,
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
}

impl HollowConfig {
    pub fn new(count: usize) -> HollowConfig {
        HollowConfig { count, prefix: "hollow".into(), cpu: "4".into(), memory: "16Gi".into(), max_pods: 110 }
    }

    fn name(&self, index: usize) -> String {
        format!("{}-{index}", self.prefix)
    }
}

/// Registers the nodes and runs them until the task is dropped.
pub async fn run(client: kube::Client, config: HollowConfig) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut owners = Vec::with_capacity(config.count);
    for index in 0..config.count {
        let node = register(&nodes, &config, index).await?;
        owners.push(OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: config.name(index),
            uid: node.metadata.uid.unwrap_or_default(),
            ..Default::default()
        });
    }
    tracing::info!(nodes = config.count, prefix = config.prefix, "hollow nodes registered");
    let names: Arc<HashSet<String>> = Arc::new((0..config.count).map(|i| config.name(i)).collect());

    let queue = WorkQueue::<ObjectKey>::new();
    // Only bound pods, as a kubelet watches only its own.
    let mut pods = Informer::<Pod>::all(client.clone()).selecting_fields("spec.nodeName!=");
    {
        let (queue, names) = (queue.clone(), names.clone());
        pods.on_change(move |change| {
            if let Change::Applied { new, .. } = change
                && new.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| names.contains(n))
                && needs_work(new)
            {
                queue.add(ObjectKey::of(&**new));
            }
        });
    }
    let cache = pods.cache();
    let mut tasks = vec![tokio::spawn(pods.run())];
    for _ in 0..WORKERS {
        let (queue, cache, client) = (queue.clone(), cache.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let key = queue.next().await;
                if let Some(pod) = cache.get(&key)
                    && needs_work(&pod)
                    && let Err(err) = sync_pod(&client, &pod).await
                {
                    tracing::debug!(pod = %key, %err, "hollow node cannot update a pod");
                    queue.retry(key.clone());
                }
                queue.done(&key);
            }
        }));
    }
    let _tasks = Tasks(tasks);
    heartbeats(client, &config, owners).await;
    Ok(())
}

struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A pod not yet reported Running, or one being deleted (a hollow container stops at once).
fn needs_work(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_some() || !matches!(phase, Some("Running" | "Succeeded" | "Failed"))
}

async fn sync_pod(client: &kube::Client, pod: &Pod) -> Result<(), kube::Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    if pod.metadata.deletion_timestamp.is_some() {
        let params = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        return match api.delete(name, &params).await {
            Err(kube::Error::Api(err)) if err.code == 404 => Ok(()),
            other => other.map(drop),
        };
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let ip = pod_ip(pod.metadata.uid.as_deref().unwrap_or(name));
    let condition = |kind: &str| serde_json::json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let containers: Vec<_> = spec
        .containers
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name, "image": c.image, "imageID": c.image, "containerID": format!("hollow://{name}/{}", c.name),
                "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let conditions =
        ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"].map(condition);
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "conditions": conditions,
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": now,
        "containerStatuses": containers,
        "qosClass": "BestEffort",
    }});
    // Sent without `Api::patch_status`, which would decode the pod it returns only to drop it:
    // a tenth of a hollow node's CPU.
    let request = kube::core::Request::new(api.resource_url())
        .patch_subresource("status", name, &PatchParams::default(), &Patch::Merge(&status))
        .map_err(kube::Error::BuildRequest)?;
    client.request_text(request).await.map(drop)
}

/// A made-up address in 127.128.0.0/9 (nothing is ever sent to it), stable for a pod.
fn pod_ip(seed: &str) -> String {
    let hash = seed.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    Ipv4Addr::from(0x7f80_0000 | (hash as u32 & 0x007f_ffff)).to_string()
}

async fn register(nodes: &Api<Node>, config: &HollowConfig, index: usize) -> Result<Node, kube::Error> {
    let name = config.name(index);
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(config.cpu.clone())),
        ("memory".to_string(), Quantity(config.memory.clone())),
        ("pods".to_string(), Quantity(config.max_pods.to_string())),
    ]);
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        (flotilla_api::runtime_label(flotilla_api::WASM_RUNTIME_CLASS), "true".to_string()),
        (HOLLOW_LABEL.to_string(), "true".to_string()),
    ]);
    let status = NodeStatus {
        allocatable: Some(resources.clone()),
        capacity: Some(resources),
        conditions: Some(vec![ready()]),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: "127.0.0.1".into() },
            NodeAddress { type_: "Hostname".into(), address: name.clone() },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            container_runtime_version: "hollow://".into(),
            kubelet_version: format!(
                "v{}.{}.0+hollow",
                flotilla_api::KUBERNETES_VERSION.0,
                flotilla_api::KUBERNETES_VERSION.1
            ),
            operating_system: "linux".into(),
            os_image: "hollow".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let node = Node {
        metadata: ObjectMeta { name: Some(name.clone()), labels: Some(labels), ..Default::default() },
        spec: Some(NodeSpec::default()),
        status: Some(status.clone()),
    };
    let node = match nodes.create(&PostParams::default(), &node).await {
        Ok(node) => node,
        Err(kube::Error::Api(err)) if err.code == 409 => nodes.get(&name).await?,
        Err(err) => return Err(err),
    };
    nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": status}))).await?;
    Ok(node)
}

fn ready() -> NodeCondition {
    let now = Time(jiff::Timestamp::now());
    NodeCondition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: Some("KubeletReady".into()),
        message: Some("hollow kubelet is posting ready status".into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// Renews every node's Lease once per [`LEASE_RENEW`], spread evenly over it. Renewals run
/// side by side, as each node's kubelet would renew on its own: one after another, a server
/// slowed by load would stretch a round past the node grace period and the nodes would be
/// declared lost while every one of them is alive.
async fn heartbeats(client: kube::Client, config: &HollowConfig, owners: Vec<OwnerReference>) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let in_flight = Arc::new(Semaphore::new(RENEWALS_IN_FLIGHT));
    let mut tick = tokio::time::interval(LEASE_RENEW / config.count.max(1) as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        for (index, owner) in owners.iter().enumerate() {
            tick.tick().await;
            let permit = in_flight.clone().acquire_owned().await.expect("the semaphore is never closed");
            let (leases, name, owner) = (leases.clone(), config.name(index), owner.clone());
            tokio::spawn(async move {
                if let Err(err) = renew(&leases, &name, &owner).await {
                    tracing::debug!(%err, node = name, "cannot renew a hollow node's lease");
                }
                drop(permit);
            });
        }
    }
}
