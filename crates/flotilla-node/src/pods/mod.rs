//! The pods bound to this node: a watch on them (`spec.nodeName=<node>`), one worker task per
//! pod, and the table the node's log server reads.

mod env;
pub(crate) mod eviction;
mod hooks;
mod plan;
mod probes;
mod record;
mod status;
mod termination;
mod volumes;
mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::Node;
use crate::logs::ContainerLog;

pub(crate) use probes::ProbeClient;

/// What the log server needs of a container: which run it is on, that run's log while it is
/// being written, and why it waits if it has not started.
#[derive(Debug, Clone)]
pub(crate) struct ContainerLogs {
    pub restart_count: i32,
    pub live: Option<Arc<ContainerLog>>,
    /// The reason it waits (`ContainerCreating`, `CrashLoopBackOff`, …), if it does.
    pub waiting: Option<String>,
    /// Whether any run of it has started, so that a log exists.
    pub started: bool,
}

/// A pod on this node, as the log server and the eviction manager see it.
#[derive(Debug)]
pub(crate) struct PodEntry {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// When the node took the pod on.
    pub started: jiff::Timestamp,
    pub log_dir: PathBuf,
    pub containers: Mutex<HashMap<String, ContainerLogs>>,
    /// What each running container's current run uses, by name.
    pub usage: Mutex<HashMap<String, crate::runtime::ContainerUsage>>,
    /// Each running container's current run, by name, which `kubectl exec` runs commands in.
    pub running: Mutex<HashMap<String, Arc<dyn crate::runtime::Control>>>,
    /// The pod's `spec.priority`, which the eviction manager ranks by.
    pub priority: i32,
    /// What the pod's containers request of memory, in bytes, by name.
    pub memory_requests: Vec<(String, u64)>,
    /// The pod's worker, to tell it the pod is evicted.
    worker: mpsc::UnboundedSender<worker::RunEvent>,
}

/// The pods on this node by namespace and name.
#[derive(Debug, Default)]
pub(crate) struct PodTable {
    pods: Mutex<HashMap<(String, String), Arc<PodEntry>>>,
}

impl PodTable {
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<Arc<PodEntry>> {
        self.pods.lock().expect("pod table lock").get(&(namespace.to_string(), name.to_string())).cloned()
    }

    fn insert(&self, namespace: &str, name: &str, entry: Arc<PodEntry>) {
        self.pods.lock().expect("pod table lock").insert((namespace.to_string(), name.to_string()), entry);
    }

    /// Removes the pod, unless a newer pod of the same name has taken its place.
    fn remove(&self, namespace: &str, name: &str, uid: &str) {
        let mut pods = self.pods.lock().expect("pod table lock");
        let key = (namespace.to_string(), name.to_string());
        if pods.get(&key).is_some_and(|entry| entry.uid == uid) {
            pods.remove(&key);
        }
    }

    /// How many pods the node holds.
    pub(crate) fn len(&self) -> usize {
        self.pods.lock().expect("pod table lock").len()
    }

    /// Every pod on the node.
    pub(crate) fn all(&self) -> Vec<Arc<PodEntry>> {
        self.pods.lock().expect("pod table lock").values().cloned().collect()
    }
}

/// A worker and the channel that hands it the newest version of its pod (`None` once the pod
/// is gone from the API).
struct WorkerHandle {
    updates: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// What the node learns of the pods bound to it: a watch's events.
pub(crate) type PodEvents = futures::stream::BoxStream<'static, Result<Event<Pod>, watcher::Error>>;

/// A watch on the pods bound to the node `name`, as the kubelet's.
pub(crate) fn watch(client: kube::Client, name: &str) -> PodEvents {
    let config = watcher::Config::default().fields(&format!("spec.nodeName={name}"));
    watcher::watcher(Api::<Pod>::all(client), config).default_backoff().boxed()
}

/// Keeps one worker per pod bound to the node, as `events` tell of them, until the pod is gone.
pub(crate) async fn run(node: Arc<Node>, mut events: PodEvents) {
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut listed = HashSet::new();
    while let Some(event) = events.next().await {
        workers.retain(|_, worker| !worker.task.is_finished());
        match event {
            Ok(Event::Apply(pod)) => dispatch(&node, &mut workers, pod),
            Ok(Event::InitApply(pod)) => {
                listed.extend(pod.metadata.uid.clone());
                dispatch(&node, &mut workers, pod);
            }
            Ok(Event::Delete(pod)) => {
                if let Some(worker) = pod.metadata.uid.as_ref().and_then(|uid| workers.get(uid)) {
                    let _ = worker.updates.send(None);
                }
            }
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitDone) => {
                // Every pod listed has its worker, which adopted what an earlier run of the
                // agent left running of it: the rest goes.
                node.runtimes.discard_unadopted(&listed);
                // Pods deleted while the watch was down are not in the new list.
                for (uid, worker) in &workers {
                    if !listed.contains(uid) {
                        let _ = worker.updates.send(None);
                    }
                }
            }
            Err(err) => tracing::warn!(%err, "watching this node's pods"),
        }
    }
}

fn dispatch(node: &Arc<Node>, workers: &mut HashMap<String, WorkerHandle>, pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else { return };
    if let Some(worker) = workers.get(&uid) {
        let _ = worker.updates.send(Some(pod));
        return;
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    // They name the pod's directories here (volumes, logs, each container's logs); admission
    // lets no other kind of name through, so a pod with one came some other way and is not run.
    let plain = {
        let containers = pod.spec.iter().flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()));
        let mut names = [&uid, &namespace, &name].into_iter().chain(containers.map(|c| &c.name));
        names.all(|n| crate::beneath::is_plain_name(n))
    };
    if !plain {
        tracing::warn!(?uid, ?namespace, ?name, "refusing a pod whose names cannot be directory names");
        return;
    }
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let spec = pod.spec.as_ref();
    let entry = Arc::new(PodEntry {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: uid.clone(),
        started: jiff::Timestamp::now(),
        log_dir: crate::logs::pod_dir(&node.logs_dir, &namespace, &name, &uid),
        containers: Mutex::default(),
        usage: Mutex::default(),
        running: Mutex::default(),
        priority: spec.and_then(|s| s.priority).unwrap_or(0),
        memory_requests: spec.iter().flat_map(|s| &s.containers).map(|c| (c.name.clone(), memory_request(c))).collect(),
        worker: events_tx.clone(),
    });
    node.pods.insert(&namespace, &name, entry.clone());
    let (updates, receiver) = watch::channel(Some(pod.clone()));
    let worker = worker::Worker::new(node.clone(), pod, entry, events_tx);
    let task = tokio::spawn(worker.run(receiver, events_rx));
    workers.insert(uid, WorkerHandle { updates, task });
}

/// The memory a container requests, in bytes: its request, else its limit (which upstream's
/// defaulting copies to a request left out).
fn memory_request(container: &k8s_openapi::api::core::v1::Container) -> u64 {
    let resources = container.resources.as_ref();
    let requested = resources.and_then(|r| r.requests.as_ref()).and_then(|r| r.get("memory"));
    let quantity = requested.or_else(|| resources.and_then(|r| r.limits.as_ref()).and_then(|l| l.get("memory")));
    quantity
        .and_then(|q| flotilla_api::quantity::parse(&q.0).ok())
        .map_or(0, |nanos| u64::try_from(nanos / 1_000_000_000).unwrap_or(0))
}
