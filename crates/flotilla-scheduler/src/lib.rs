//! `flotilla-scheduler`: assigns pods that have no node to one they fit, as kube-scheduler does.
//!
//! The decision ([`schedule`]) is a pure function of the pod and the cluster as observed:
//! filters ([`filter`]) rule nodes out with upstream's reasons, scores ([`score`]) rank the
//! rest. The loop around it ([`run`]) keeps that view from two watches (pods, nodes), takes pods
//! from a priority queue ([`queue`]), counts each placement at once ("assumes" it) and binds it
//! through `pods/binding` in the background, so decisions never wait on the network. It writes
//! `Scheduled` and `FailedScheduling` Events and the `PodScheduled` condition of pods that fit
//! nowhere. It is an ordinary API client: in-process in `flotilla server`, or anywhere with a
//! kubeconfig.

pub mod cluster;
pub mod filter;
mod prometheus;
pub mod queue;
pub mod resources;
pub mod score;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_client::{Cache, Change, EventType, Informer, ObjectKey, Recorder};
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::{Semaphore, mpsc};

use crate::cluster::{Cluster, PodInfo};
use crate::filter::{Reason, Topology, diagnosis, fits};
use crate::queue::SchedulingQueue;

pub use crate::prometheus::SchedulerMetrics;

/// The scheduler's name: pods whose `schedulerName` is this (the default) are ours.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";
/// Bindings in flight at most; past this, scheduling waits for them.
const PARALLEL_BINDS: usize = 64;

/// How many feasible nodes are enough to choose among: all of a small cluster, a shrinking
/// share of a large one (upstream's adaptive `percentageOfNodesToScore`), at least 100.
pub fn feasible_nodes_to_find(nodes: usize) -> usize {
    const MIN: usize = 100;
    if nodes < MIN {
        return nodes;
    }
    let percentage = (50 - nodes as i64 / 125).max(5) as usize;
    (nodes * percentage / 100).max(MIN)
}

/// Where a pod goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Placement {
    pub node: String,
    /// Where the next search starts, so that sampling visits every node in turn.
    pub next_start: usize,
}

/// Chooses a node for `pod`, or says why none fits (upstream's FailedScheduling message).
pub fn schedule(pod: &PodInfo, cluster: &Cluster, start: usize, rng: &mut fastrand::Rng) -> Result<Placement, String> {
    let count = cluster.node_count();
    if count == 0 {
        return Err(diagnosis(0, &HashMap::new()));
    }
    let wanted = feasible_nodes_to_find(count);
    let topology = Topology::of(pod, cluster);
    let mut feasible = Vec::with_capacity(wanted);
    let mut reasons: HashMap<Reason, usize> = HashMap::new();
    let mut visited = 0;
    for i in 0..count {
        let node = cluster.node_at((start + i) % count);
        visited += 1;
        match fits(pod, node, &topology) {
            Ok(()) => {
                feasible.push(node);
                if feasible.len() >= wanted {
                    break;
                }
            }
            Err(why) => {
                for reason in why {
                    *reasons.entry(reason).or_default() += 1;
                }
            }
        }
    }
    if feasible.is_empty() {
        return Err(diagnosis(count, &reasons));
    }
    let scores = score::scores(pod, &feasible);
    let best = score::best(&scores, rng).expect("feasible is not empty");
    Ok(Placement { node: feasible[best].name.clone(), next_start: (start + visited) % count })
}

/// What the loop reacts to.
enum Input {
    Pod { old: Option<Arc<Pod>>, new: Arc<Pod> },
    PodDeleted(Arc<Pod>),
    Node(Arc<Node>),
    NodeDeleted(String),
    Bound { pod: Arc<Pod>, node: String, attempts: u32, since: Instant, result: Result<(), kube::Error> },
}

/// Runs the scheduler until the task is dropped, with watches of its own.
pub async fn run(client: kube::Client, metrics: SchedulerMetrics) {
    let mut pods = Informer::<Pod>::all(client.clone());
    let mut nodes = Informer::<Node>::all(client.clone());
    let scheduling = start(client, metrics, &mut pods, &mut nodes);
    let _watches = [tokio::spawn(pods.run()), tokio::spawn(nodes.run())].map(AbortOnDrop);
    scheduling.await
}

/// The scheduler on informers it shares with other loops of the process (the controllers',
/// in `flotilla server`): it registers its handlers on them, and the caller runs them. The
/// future runs the scheduler until it is dropped.
pub fn start(
    client: kube::Client,
    metrics: SchedulerMetrics,
    pods: &mut Informer<Pod>,
    nodes: &mut Informer<Node>,
) -> impl Future<Output = ()> + Send + 'static {
    let (inputs, received) = mpsc::unbounded_channel();
    let sender = inputs.clone();
    pods.on_change(move |change| {
        let _ = sender.send(match change {
            Change::Applied { old, new } => Input::Pod { old: old.cloned(), new: new.clone() },
            Change::Deleted(pod) => Input::PodDeleted(pod.clone()),
        });
    });
    let sender = inputs.clone();
    nodes.on_change(move |change| {
        let _ = sender.send(match change {
            Change::Applied { new, .. } => Input::Node(new.clone()),
            Change::Deleted(node) => Input::NodeDeleted(node.metadata.name.clone().unwrap_or_default()),
        });
    });
    run_loop(client, metrics, inputs, received, pods.cache(), nodes.cache())
}

/// The loop: takes in what the informers report, and decides whenever both caches are
/// complete and a pod waits.
async fn run_loop(
    client: kube::Client,
    metrics: SchedulerMetrics,
    inputs: mpsc::UnboundedSender<Input>,
    mut received: mpsc::UnboundedReceiver<Input>,
    pods_cache: Cache<Pod>,
    nodes_cache: Cache<Node>,
) {
    let mut scheduler = Scheduler {
        cluster: Cluster::default(),
        queue: SchedulingQueue::default(),
        rng: fastrand::Rng::new(),
        start: 0,
        events: Recorder::new(client.clone(), DEFAULT_SCHEDULER, None),
        client,
        binds: Arc::new(Semaphore::new(PARALLEL_BINDS)),
        inputs,
        metrics,
    };
    loop {
        while let Ok(input) = received.try_recv() {
            scheduler.handle(input);
        }
        let now = Instant::now();
        scheduler.queue.flush(now);
        // Decide only on a complete view of the cluster.
        if pods_cache.is_synced() && nodes_cache.is_synced() && scheduler.queue.has_active() {
            scheduler.schedule_next().await;
            continue;
        }
        let due = scheduler.queue.next_due().map(tokio::time::Instant::from_std);
        let wake = due.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
        tokio::select! {
            input = received.recv() => match input {
                Some(input) => scheduler.handle(input),
                None => return,
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Scheduler {
    cluster: Cluster,
    queue: SchedulingQueue,
    rng: fastrand::Rng,
    start: usize,
    events: Recorder,
    client: kube::Client,
    binds: Arc<Semaphore>,
    inputs: mpsc::UnboundedSender<Input>,
    metrics: SchedulerMetrics,
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

fn is_ours(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()).is_none_or(|n| n.is_empty() || n == DEFAULT_SCHEDULER)
}

impl Scheduler {
    fn handle(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Pod { old, new } => {
                let key = ObjectKey::of(&*new);
                if let Some(node) = node_of(&new) {
                    self.queue.remove(&key);
                    if is_terminal(&new) {
                        // A finished pod no longer takes room (upstream's scheduler does not
                        // even watch them).
                        self.cluster.forget(&key);
                        self.queue.cluster_changed(now);
                    } else {
                        self.cluster.place(Arc::new(PodInfo::of(&new)), node, false);
                    }
                } else if is_ours(&new) && !is_terminal(&new) && new.metadata.deletion_timestamp.is_none() {
                    let changed =
                        old.is_none_or(|old| old.spec != new.spec || old.metadata.labels != new.metadata.labels);
                    self.queue.upsert(new, changed);
                } else {
                    self.queue.remove(&key);
                }
            }
            Input::PodDeleted(pod) => {
                let key = ObjectKey::of(&*pod);
                self.queue.remove(&key);
                if node_of(&pod).is_some() {
                    self.cluster.forget(&key);
                    self.queue.cluster_changed(now);
                }
            }
            Input::Node(node) => {
                self.cluster.set_node(&node);
                self.queue.cluster_changed(now);
            }
            Input::NodeDeleted(name) => self.cluster.remove_node(&name),
            Input::Bound { pod, node, attempts, since, result } => {
                let key = ObjectKey::of(&*pod);
                match result {
                    // The watch confirms the binding; until then the pod stays assumed.
                    Ok(()) => {
                        // Upstream counts an attempt scheduled once its binding is done.
                        self.metrics.attempted(prometheus::Attempt::Scheduled);
                        self.metrics.bound(attempts, since.elapsed());
                        let message = format!("Successfully assigned {key} to {node}");
                        self.events.object(&*pod, EventType::Normal, "Scheduled", message);
                    }
                    Err(err) => {
                        self.cluster.forget(&key);
                        self.metrics.attempted(prometheus::Attempt::Error);
                        let message = format!("Binding rejected: {err}");
                        self.events.object(&*pod, EventType::Warning, "FailedScheduling", message);
                        match &err {
                            kube::Error::Api(status) if status.code == 404 => self.queue.remove(&key),
                            _ => self.queue.failed(&key, false, now),
                        }
                    }
                }
            }
        }
    }

    async fn schedule_next(&mut self) {
        let Some(queued) = self.queue.pop() else { return };
        let (pod, info, attempts, since) = (queued.pod.clone(), queued.info.clone(), queued.attempts, queued.since);
        match schedule(&info, &self.cluster, self.start, &mut self.rng) {
            Ok(placement) => {
                self.start = placement.next_start;
                self.cluster.place(info.clone(), &placement.node, true);
                let permit = self.binds.clone().acquire_owned().await.expect("the semaphore is never closed");
                let (client, inputs, node) = (self.client.clone(), self.inputs.clone(), placement.node);
                tokio::spawn(async move {
                    let result = bind(client, &pod, &node).await;
                    drop(permit);
                    let _ = inputs.send(Input::Bound { pod, node, attempts, since, result });
                });
            }
            Err(message) => {
                self.metrics.attempted(prometheus::Attempt::Unschedulable);
                tracing::debug!(pod = %info.key, %message, "unschedulable");
                self.queue.failed(&info.key, true, Instant::now());
                self.events.object(&*pod, EventType::Warning, "FailedScheduling", message.clone());
                let client = self.client.clone();
                tokio::spawn(async move { mark_unschedulable(client, &pod, message).await });
            }
        }
    }
}

async fn bind(client: kube::Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta { name: Some(name.into()), uid: pod.metadata.uid.clone(), ..Default::default() },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..Default::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client, namespace);
    api.create_subresource::<_, serde_json::Value>("binding", name, &PostParams::default(), &binding).await.map(drop)
}

/// Sets `PodScheduled=False` (reason `Unschedulable`) with the diagnosis, unless the pod already
/// says exactly that.
async fn mark_unschedulable(client: kube::Client, pod: &Pod, message: String) {
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    if current.is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(message.as_str())) {
        return;
    }
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
        "lastProbeTime": null, "lastTransitionTime": now,
    }]}});
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    if let Err(err) = api.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch)).await {
        tracing::debug!(pod = name, %err, "cannot set the PodScheduled condition");
    }
}

#[cfg(test)]
mod tests;
