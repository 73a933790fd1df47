//! `flotilla-controllers`: the control loops that keep the declared state, as upstream's
//! kube-controller-manager runs them.
//!
//! Every controller is the same shape: informers ([`flotilla_client::Informer`], one watch per
//! kind, shared by all controllers) turn changes into keys on the controller's work queue;
//! a worker takes a key, reads what it needs from the caches, lets a pure function decide
//! (`plan`), and carries the decision out through the API. Reconciling is level-triggered and
//! idempotent: the same key twice does no harm, and a failure is retried with back-off. After
//! writing, a controller waits until its caches show its own writes ([`Cache::observed`])
//! before it decides again, so it never acts twice on a stale view.

mod daemonset;
mod deployment;
mod endpoints;
mod gc;
mod history;
mod hpa;
mod job;
mod namespace;
mod nodelifecycle;
mod pods;
mod replicaset;
mod serviceaccount;
mod servicelb;
mod statefulset;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flotilla_client::{Cache, Change, Informer, ObjectKey, QueueMetrics, Recorder, WorkQueue, controller_of};
use futures::FutureExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, ReplicationController, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::task::JoinHandle;

/// How long a controller waits for its caches to show its own writes before it retries later.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a reconcile failed; the key is retried with back-off.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("the caches did not catch up with this controller's writes")]
    Lagging,
}

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Done,
    /// Look again after this long (a `minReadySeconds` or a deadline to check).
    After(Duration),
}

impl Next {
    /// The sooner of two.
    pub(crate) fn min(self, other: Next) -> Next {
        match (self, other) {
            (Next::After(a), Next::After(b)) => Next::After(a.min(b)),
            (Next::After(a), Next::Done) | (Next::Done, Next::After(a)) => Next::After(a),
            (Next::Done, Next::Done) => Next::Done,
        }
    }
}

/// One control loop.
pub(crate) trait Reconciler: Send + Sync + 'static {
    const NAME: &'static str;
    /// What the queue holds: an object's key, usually.
    type Key: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static;
    fn reconcile(&self, key: &Self::Key) -> impl Future<Output = Result<Next, Error>> + Send;
}

/// What the controllers share: the client, the caches and the Event recorder.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) client: kube::Client,
    pub(crate) events: Recorder,
    pub(crate) pods: Cache<Pod>,
    pub(crate) replicasets: Cache<ReplicaSet>,
    pub(crate) replicationcontrollers: Cache<ReplicationController>,
    pub(crate) deployments: Cache<Deployment>,
    pub(crate) namespaces: Cache<Namespace>,
    pub(crate) serviceaccounts: Cache<ServiceAccount>,
    pub(crate) services: Cache<Service>,
    pub(crate) endpoints: Cache<Endpoints>,
    pub(crate) endpointslices: Cache<EndpointSlice>,
    pub(crate) jobs: Cache<Job>,
    pub(crate) daemonsets: Cache<DaemonSet>,
    pub(crate) controllerrevisions: Cache<ControllerRevision>,
    pub(crate) statefulsets: Cache<StatefulSet>,
    pub(crate) nodes: Cache<Node>,
    pub(crate) leases: Cache<Lease>,
    /// Where the controllers' work queues are measured.
    pub(crate) queues: QueueMetrics,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// The informers, before they run: controllers register their handlers on them.
pub(crate) struct Informers {
    pub(crate) pods: Informer<Pod>,
    pub(crate) replicasets: Informer<ReplicaSet>,
    pub(crate) replicationcontrollers: Informer<ReplicationController>,
    pub(crate) deployments: Informer<Deployment>,
    pub(crate) namespaces: Informer<Namespace>,
    pub(crate) serviceaccounts: Informer<ServiceAccount>,
    pub(crate) services: Informer<Service>,
    pub(crate) endpoints: Informer<Endpoints>,
    pub(crate) endpointslices: Informer<EndpointSlice>,
    pub(crate) jobs: Informer<Job>,
    pub(crate) daemonsets: Informer<DaemonSet>,
    pub(crate) controllerrevisions: Informer<ControllerRevision>,
    pub(crate) statefulsets: Informer<StatefulSet>,
    pub(crate) nodes: Informer<Node>,
    pub(crate) leases: Informer<Lease>,
}

/// How the controllers behave where upstream lets the operator choose.
#[derive(Debug, Clone)]
pub struct ControllersConfig {
    /// How long a node's Lease may go unrenewed before the node is `Ready=Unknown` and
    /// tainted unreachable (upstream's `--node-monitor-grace-period`).
    pub node_grace_period: Duration,
    /// How often every HorizontalPodAutoscaler is evaluated (upstream's
    /// `--horizontal-pod-autoscaler-sync-period`).
    pub hpa_sync_period: Duration,
    /// Where the work queues are measured (`workqueue_*`, by controller).
    pub queues: QueueMetrics,
}

impl Default for ControllersConfig {
    fn default() -> Self {
        ControllersConfig {
            node_grace_period: DEFAULT_NODE_GRACE_PERIOD,
            hpa_sync_period: DEFAULT_HPA_SYNC_PERIOD,
            queues: QueueMetrics::default(),
        }
    }
}

pub use hpa::DEFAULT_SYNC_PERIOD as DEFAULT_HPA_SYNC_PERIOD;

/// The Lease duration the kubelet (and our agent) writes: four missed renewals. Upstream's
/// default is 50 s; an edge link that drops for half a minute should not flap its node.
pub const DEFAULT_NODE_GRACE_PERIOD: Duration = Duration::from_secs(40);

/// The running controllers. Dropping it stops them.
#[derive(Debug)]
pub struct Controllers {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Controllers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Controllers {
    /// Starts every controller against the cluster `client` reaches.
    pub fn start(client: kube::Client, config: ControllersConfig) -> Controllers {
        Controllers::start_sharing(client, config, |_, _| {})
    }

    /// [`Controllers::start`], letting `share` register another loop of the process (the
    /// scheduler, in `flotilla server`) on the pod and node informers before they run: the
    /// process then watches, decodes and holds every pod once, not once per loop.
    pub fn start_sharing(
        client: kube::Client,
        config: ControllersConfig,
        share: impl FnOnce(&mut Informer<Pod>, &mut Informer<Node>),
    ) -> Controllers {
        let mut informers = Informers {
            pods: Informer::all(client.clone()),
            replicasets: Informer::all(client.clone()),
            replicationcontrollers: Informer::all(client.clone()),
            deployments: Informer::all(client.clone()),
            namespaces: Informer::all(client.clone()),
            serviceaccounts: Informer::all(client.clone()),
            services: Informer::all(client.clone()),
            endpoints: Informer::all(client.clone()),
            endpointslices: Informer::all(client.clone()),
            jobs: Informer::all(client.clone()),
            daemonsets: Informer::all(client.clone()),
            controllerrevisions: Informer::all(client.clone()),
            statefulsets: Informer::all(client.clone()),
            nodes: Informer::all(client.clone()),
            // Only node leases matter here.
            leases: Informer::new(kube::Api::namespaced(client.clone(), "kube-node-lease")),
        };
        let context = Context {
            events: Recorder::new(client.clone(), "controller-manager", None),
            client,
            pods: informers.pods.cache(),
            replicasets: informers.replicasets.cache(),
            replicationcontrollers: informers.replicationcontrollers.cache(),
            deployments: informers.deployments.cache(),
            namespaces: informers.namespaces.cache(),
            serviceaccounts: informers.serviceaccounts.cache(),
            services: informers.services.cache(),
            endpoints: informers.endpoints.cache(),
            endpointslices: informers.endpointslices.cache(),
            jobs: informers.jobs.cache(),
            daemonsets: informers.daemonsets.cache(),
            controllerrevisions: informers.controllerrevisions.cache(),
            statefulsets: informers.statefulsets.cache(),
            nodes: informers.nodes.cache(),
            leases: informers.leases.cache(),
            queues: config.queues.clone(),
        };
        let mut tasks = Vec::new();
        tasks.extend(replicaset::start::<ReplicaSet>(&context, &mut informers));
        tasks.extend(replicaset::start::<ReplicationController>(&context, &mut informers));
        tasks.extend(deployment::start(&context, &mut informers));
        tasks.extend(gc::start(&context, &mut informers));
        tasks.extend(serviceaccount::start(&context, &mut informers));
        tasks.extend(namespace::start(&context, &mut informers));
        tasks.extend(endpoints::start(&context, &mut informers));
        tasks.extend(servicelb::start(&context, &mut informers));
        tasks.extend(job::start(&context, &mut informers));
        tasks.extend(daemonset::start(&context, &mut informers));
        tasks.extend(statefulset::start(&context, &mut informers));
        let hpa_sync_period = config.hpa_sync_period;
        tasks.extend(nodelifecycle::start(&context, &mut informers, config));
        tasks.extend(hpa::start(&context, hpa_sync_period));
        share(&mut informers.pods, &mut informers.nodes);
        let Informers {
            pods,
            replicasets,
            replicationcontrollers,
            deployments,
            namespaces,
            serviceaccounts,
            services,
            endpoints,
            endpointslices,
            jobs,
            daemonsets,
            controllerrevisions,
            statefulsets,
            nodes,
            leases,
        } = informers;
        tasks.push(tokio::spawn(pods.run()));
        tasks.push(tokio::spawn(replicasets.run()));
        tasks.push(tokio::spawn(replicationcontrollers.run()));
        tasks.push(tokio::spawn(deployments.run()));
        tasks.push(tokio::spawn(namespaces.run()));
        tasks.push(tokio::spawn(serviceaccounts.run()));
        tasks.push(tokio::spawn(services.run()));
        tasks.push(tokio::spawn(endpoints.run()));
        tasks.push(tokio::spawn(endpointslices.run()));
        tasks.push(tokio::spawn(jobs.run()));
        tasks.push(tokio::spawn(daemonsets.run()));
        tasks.push(tokio::spawn(controllerrevisions.run()));
        tasks.push(tokio::spawn(statefulsets.run()));
        tasks.push(tokio::spawn(nodes.run()));
        tasks.push(tokio::spawn(leases.run()));
        Controllers { tasks }
    }
}

impl Context {
    /// Writes `status` (status fields, as JSON) with a merge patch when any field differs from
    /// what `object` has (a field it lacks counts as 0 or null), then waits until `cache` shows
    /// the write. An object deleted meanwhile needs no status.
    pub(crate) async fn write_status<K>(
        &self,
        object: &K,
        cache: &Cache<K>,
        status: serde_json::Value,
    ) -> Result<(), Error>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let current = serde_json::to_value(object).map_err(|e| Error::Invalid(e.to_string()))?;
        if !changes(current.get("status"), &status) {
            return Ok(());
        }
        let meta = object.meta();
        let api: kube::Api<K> =
            kube::Api::namespaced(self.client.clone(), meta.namespace.as_deref().unwrap_or("default"));
        let name = meta.name.as_deref().unwrap_or_default();
        let patch = serde_json::json!({"status": status});
        match api.patch_status(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await {
            Ok(written) => {
                cache.observed(flotilla_client::resource_version(&written), OBSERVE_TIMEOUT).await;
                Ok(())
            }
            Err(kube::Error::Api(err)) if err.code == 404 => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

/// Whether merging `patch` (a JSON merge patch) into `current` changes it. A field the patch
/// sets to its zero value (null, 0, an empty list or object) where `current` has none changes
/// nothing: the API leaves such fields out.
fn changes(current: Option<&serde_json::Value>, patch: &serde_json::Value) -> bool {
    use serde_json::Value;
    fn blank(value: &Value) -> bool {
        match value {
            Value::Null => true,
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::Array(items) => items.is_empty(),
            Value::Object(fields) => fields.values().all(blank),
            _ => false,
        }
    }
    match (current.filter(|c| !c.is_null()), patch) {
        (current, Value::Object(fields)) => {
            fields.iter().any(|(field, value)| changes(current.and_then(|c| c.get(field)), value))
        }
        (None, value) => !blank(value),
        (Some(old), Value::Null) => !blank(old),
        (Some(old), value) => old != value,
    }
}

/// A write's outcome where the object being gone already is as good as done: `Ok` for either.
pub(crate) fn unless_gone<T>(result: Result<T, kube::Error>) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(err)) if err.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// The store's current revision, as a list answers it: at least that of every write made
/// before, for a barrier when a write (an immediate delete) does not say its own.
pub(crate) async fn current_revision<K>(api: &kube::Api<K>) -> Result<u64, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list_metadata(&kube::api::ListParams::default().limit(1)).await?;
    Ok(list.metadata.resource_version.as_deref().and_then(|rv| rv.parse().ok()).unwrap_or(0))
}

/// Queues, for every change to a `K` controlled by a `kind`, that controller's key (its owner
/// is in the same namespace).
pub(crate) fn enqueue_controller<K>(informer: &mut Informer<K>, kind: &'static str, queue: &WorkQueue<ObjectKey>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let queue = queue.clone();
    informer.on_change(move |change| {
        let (Change::Applied { new: object, .. } | Change::Deleted(object)) = change;
        if let Some(owner) = controller_of(&**object).filter(|o| o.kind == kind) {
            queue.add(ObjectKey::new(kube::Resource::meta(&**object).namespace.as_deref(), &owner.name));
        }
    });
}

/// Runs `workers` workers of `reconciler` on `queue` once `synced` says the caches it reads
/// are complete.
pub(crate) fn spawn_workers<R: Reconciler>(
    reconciler: Arc<R>,
    queue: WorkQueue<R::Key>,
    workers: usize,
    synced: impl Future<Output = ()> + Send + 'static,
) -> Vec<JoinHandle<()>> {
    let (ready, _) = tokio::sync::watch::channel(false);
    let ready = Arc::new(ready);
    let mut tasks = Vec::with_capacity(workers + 1);
    {
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            synced.await;
            let _ = ready.send(true);
            // Keep the sender (and so the flag) alive for the workers.
            std::future::pending::<()>().await;
        }));
    }
    for _ in 0..workers {
        let (reconciler, queue, mut ready) = (reconciler.clone(), queue.clone(), ready.subscribe());
        tasks.push(tokio::spawn(async move {
            let _ = ready.wait_for(|r| *r).await;
            loop {
                let key = queue.next().await;
                // A reconcile that panics (on data no one foresaw) fails that key, not the worker.
                let reconciled = std::panic::AssertUnwindSafe(reconciler.reconcile(&key)).catch_unwind().await;
                let reconciled = reconciled.unwrap_or_else(|_| {
                    tracing::error!(controller = R::NAME, object = ?key, "reconcile panicked; retrying");
                    Err(Error::Invalid("the reconcile panicked".into()))
                });
                match reconciled {
                    Ok(next) => {
                        queue.forget(&key);
                        if let Next::After(delay) = next {
                            queue.add_after(key.clone(), delay);
                        }
                    }
                    Err(err) => {
                        tracing::debug!(controller = R::NAME, object = ?key, %err, "reconcile failed; retrying");
                        queue.retry(key.clone());
                    }
                }
                queue.done(&key);
            }
        }));
    }
    tasks
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::changes;

    #[test]
    fn a_status_patch_changes_only_what_it_sets_to_something_new() {
        let current = json!({"replicas": 2, "conditions": [{"type": "Ready"}], "uncounted": {"failed": ["a"]}});
        assert!(!changes(Some(&current), &json!({"replicas": 2, "ready": 0, "gone": null, "empty": []})));
        assert!(changes(Some(&current), &json!({"replicas": 3})));
        assert!(changes(Some(&current), &json!({"conditions": []})));
        // Nested objects merge field by field; null takes a field out.
        assert!(!changes(Some(&current), &json!({"uncounted": {"failed": ["a"], "succeeded": null}})));
        assert!(changes(Some(&current), &json!({"uncounted": {"failed": null}})));
        assert!(!changes(None, &json!({"uncounted": {"failed": null}, "active": 0})));
    }
}
