//! The node lifecycle controller: a node whose Lease goes unrenewed past the grace period is
//! `Ready=Unknown` ("Kubelet stopped posting node status.") and tainted
//! `node.kubernetes.io/unreachable` (NoSchedule and NoExecute); a node that reports not ready is
//! tainted `not-ready`. Pods on a node with a NoExecute taint they do not tolerate are evicted —
//! at once, or when their `tolerationSeconds` run out — so that their controllers replace them
//! elsewhere. A node short of memory, disk or process ids is tainted NoSchedule for it
//! (upstream's taint-nodes-by-condition), so that no more pods are sent there. When the node
//! comes back the taints go.

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::scheduling::tolerates;
use flotilla_client::{Change, EventType, ObjectKey, WorkQueue};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::{Context, ControllersConfig, Error, Informers, Next, Reconciler, spawn_workers, unless_gone};

pub(crate) const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub(crate) const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The NoSchedule taint each pressure condition calls for while it is True.
const PRESSURE_TAINTS: [(&str, &str); 3] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
];

pub(crate) fn start(context: &Context, informers: &mut Informers, config: ControllersConfig) -> Vec<JoinHandle<()>> {
    // The queue holds node names.
    let queue = WorkQueue::named("node_lifecycle_controller", &context.queues);
    let q = queue.clone();
    informers.nodes.on_change(move |change| {
        let (Change::Applied { new: node, .. } | Change::Deleted(node)) = change;
        q.add(ObjectKey::new(None, &node.name_any()));
    });
    let q = queue.clone();
    informers.leases.on_change(move |change| {
        if let Change::Applied { old: None, new } = change {
            q.add(ObjectKey::new(None, &new.name_any()));
        }
    });
    // A pod bound to a tainted node may need evicting.
    let (q, nodes) = (queue.clone(), context.nodes.clone());
    informers.pods.on_change(move |change| {
        if let Change::Applied { old, new } = change
            && let Some(node) = new.spec.as_ref().and_then(|s| s.node_name.as_deref())
            && old.is_none_or(|o| o.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node))
            && nodes.get(&ObjectKey::new(None, node)).is_some_and(|n| has_no_execute(&n))
        {
            q.add(ObjectKey::new(None, node));
        }
    });
    let (nodes, leases, pods) = (context.nodes.clone(), context.leases.clone(), context.pods.clone());
    let controller = NodeLifecycle { context: context.clone(), grace: config.node_grace_period };
    spawn_workers(Arc::new(controller), queue, 2, async move {
        nodes.synced().await;
        leases.synced().await;
        pods.synced().await;
    })
}

fn has_no_execute(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.effect == "NoExecute"))
}

fn condition_status<'a>(node: &'a Node, kind: &str) -> Option<&'a str> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == kind).map(|c| c.status.as_str())
}

fn ready_status(node: &Node) -> Option<&str> {
    condition_status(node, "Ready")
}

/// The taints the node's state calls for, as (key, effect): `unreachable` when it is not heard
/// from, `not-ready` when it says it is not ready (both NoSchedule and NoExecute), and a
/// NoSchedule taint for each pressure it reports while it is heard from.
pub(crate) fn condition_taints(
    reachable: bool,
    status: impl Fn(&str) -> Option<String>,
) -> Vec<(&'static str, &'static str)> {
    let ready = if reachable { status("Ready") } else { Some("Unknown".into()) };
    let mut taints = Vec::new();
    let both = |key| [(key, "NoSchedule"), (key, "NoExecute")];
    match ready.as_deref() {
        Some("Unknown") => taints.extend(both(UNREACHABLE)),
        Some("True") => {}
        _ => taints.extend(both(NOT_READY)),
    }
    if ready.as_deref() != Some("Unknown") {
        let pressed = PRESSURE_TAINTS.iter().filter(|(kind, _)| status(kind).as_deref() == Some("True"));
        taints.extend(pressed.map(|(_, key)| (*key, "NoSchedule")));
    }
    taints
}

/// When a pod on a node with `taints` must go: `None` if it tolerates them all for good,
/// otherwise how long after now (zero: at once).
pub(crate) fn eviction_delay(pod: &Pod, taints: &[Taint], now: Timestamp) -> Option<Duration> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let mut soonest: Option<Duration> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<_> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        let delay = if matching.is_empty() {
            Duration::ZERO
        } else if let Some(seconds) = matching.iter().filter_map(|t| t.toleration_seconds).min() {
            let added = taint.time_added.as_ref().map_or(now, |t| t.0);
            let until = added + jiff::SignedDuration::from_secs(seconds.max(0));
            now.duration_until(until).try_into().unwrap_or(Duration::ZERO)
        } else {
            continue;
        };
        soonest = Some(soonest.map_or(delay, |s| s.min(delay)));
    }
    soonest
}

struct NodeLifecycle {
    context: Context,
    grace: Duration,
}

impl Reconciler for NodeLifecycle {
    const NAME: &'static str = "node-lifecycle";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Next, Error> {
        let Some(node) = self.context.nodes.get(key) else { return Ok(Next::Done) };
        let name = key.name.clone();
        let now = Timestamp::now();
        let lease = self.context.leases.get(&ObjectKey::new(Some("kube-node-lease"), &name));
        let renewed = lease.as_ref().and_then(|l| l.spec.as_ref()?.renew_time.as_ref()).map(|t| t.0);
        let heartbeat = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0);
        let creation = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
        // The last sign of life: the Lease, the status heartbeat, or its registration.
        let seen = [renewed, heartbeat, creation].into_iter().flatten().max().unwrap_or(now);
        let silent = now.duration_since(seen).unsigned_abs();
        let reachable = silent < self.grace;
        let api: Api<Node> = Api::all(self.context.client.clone());

        if !reachable {
            if ready_status(&node) != Some("Unknown") {
                self.mark_unknown(&api, &node).await?;
                let message = format!("Node {name} status is now: NodeNotReady");
                self.context.events.object(&*node, EventType::Normal, "NodeNotReady", message);
            }
            self.mark_pods_not_ready(&name).await?;
        }
        let wanted = condition_taints(reachable, |kind| condition_status(&node, kind).map(String::from));
        let taints = self.set_taints(&api, &node, &wanted, now).await?;
        let mut next =
            if reachable { Next::After(self.grace - silent + Duration::from_secs(1)) } else { Next::After(self.grace) };
        if taints.iter().any(|t| t.effect == "NoExecute") {
            next = next.min(self.evict(&name, &taints, now).await?);
        }
        Ok(next)
    }
}

impl NodeLifecycle {
    /// Every condition of a silent node becomes Unknown, as upstream marks them.
    async fn mark_unknown(&self, api: &Api<Node>, node: &Node) -> Result<(), Error> {
        let now = Time(Timestamp::now());
        let conditions: Vec<serde_json::Value> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                json!({
                    "type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown",
                    "message": "Kubelet stopped posting node status.",
                    "lastHeartbeatTime": c.last_heartbeat_time, "lastTransitionTime": now,
                })
            })
            .collect();
        let patch = json!({"status": {"conditions": conditions}});
        api.patch_status(&node.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await?;
        Ok(())
    }

    /// Pods on a node not heard from are not ready (upstream's `MarkPodsNotReady`): Services
    /// stop sending them traffic and controllers stop counting them available.
    async fn mark_pods_not_ready(&self, node: &str) -> Result<(), Error> {
        let now = Time(Timestamp::now());
        for pod in self.context.pods.list() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) || !crate::pods::is_ready(&pod) {
                continue;
            }
            let api: Api<Pod> =
                Api::namespaced(self.context.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
            let patch =
                json!({"status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}]}});
            unless_gone(api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await)?;
        }
        Ok(())
    }

    /// Makes the node's condition taints what `wanted` says; returns the taints it then has.
    async fn set_taints(
        &self,
        api: &Api<Node>,
        node: &Node,
        wanted: &[(&str, &str)],
        now: Timestamp,
    ) -> Result<Vec<Taint>, Error> {
        let current = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let ours = |t: &Taint| {
            t.key == UNREACHABLE || t.key == NOT_READY || PRESSURE_TAINTS.iter().any(|(_, key)| t.key == *key)
        };
        let mut taints: Vec<Taint> = current
            .iter()
            .filter(|t| !ours(t) || wanted.iter().any(|(key, effect)| t.key == *key && t.effect == *effect))
            .cloned()
            .collect();
        for (key, effect) in wanted {
            if !taints.iter().any(|t| t.key == *key && t.effect == *effect) {
                let time_added = (*effect == "NoExecute").then_some(Time(now));
                taints.push(Taint { key: (*key).into(), effect: (*effect).into(), value: None, time_added });
            }
        }
        if taints != current {
            // On the version the cache holds: a conflict retries with a fresh view.
            let patch =
                json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": taints}});
            api.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        Ok(taints)
    }

    /// Deletes the pods on the node that do not tolerate its NoExecute taints (any longer).
    async fn evict(&self, node: &str, taints: &[Taint], now: Timestamp) -> Result<Next, Error> {
        let mut next = Next::Done;
        for pod in self.context.pods.list() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node)
                || pod.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            match eviction_delay(&pod, taints, now) {
                Some(delay) if delay.is_zero() => {
                    let api: Api<Pod> = Api::namespaced(
                        self.context.client.clone(),
                        pod.metadata.namespace.as_deref().unwrap_or("default"),
                    );
                    match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                        Ok(_) => {
                            let message = format!("Marking for deletion Pod {}", ObjectKey::of(&*pod));
                            self.context.events.object(&*pod, EventType::Normal, "TaintManagerEviction", message);
                        }
                        Err(kube::Error::Api(err)) if err.code == 404 => {}
                        Err(err) => return Err(err.into()),
                    }
                }
                Some(delay) => next = next.min(Next::After(delay + Duration::from_millis(100))),
                None => {}
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_follow_the_nodes_state() {
        let reporting = |conditions: &'static [(&'static str, &'static str)]| {
            move |kind: &str| conditions.iter().find(|(k, _)| *k == kind).map(|(_, s)| s.to_string())
        };
        let ready = reporting(&[("Ready", "True")]);
        let both = |key| vec![(key, "NoSchedule"), (key, "NoExecute")];
        assert_eq!(condition_taints(false, ready), both(UNREACHABLE));
        assert_eq!(condition_taints(true, ready), vec![]);
        assert_eq!(condition_taints(true, reporting(&[("Ready", "False")])), both(NOT_READY));
        assert_eq!(condition_taints(true, reporting(&[("Ready", "Unknown")])), both(UNREACHABLE));
        let pressed = reporting(&[("Ready", "True"), ("MemoryPressure", "True"), ("DiskPressure", "False")]);
        assert_eq!(condition_taints(true, pressed), vec![("node.kubernetes.io/memory-pressure", "NoSchedule")]);
        assert_eq!(condition_taints(false, pressed), both(UNREACHABLE), "a silent node's pressure is unknown");
    }

    #[test]
    fn pods_go_when_their_toleration_runs_out() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(Time("2026-01-01T00:00:00Z".parse().unwrap())),
        };
        let pod = |tolerations: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"spec": {"containers": [], "tolerations": tolerations}})).unwrap()
        };
        assert_eq!(eviction_delay(&pod(json!([])), std::slice::from_ref(&taint), now), Some(Duration::ZERO));
        let for_90s =
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 90}]);
        assert_eq!(eviction_delay(&pod(for_90s), std::slice::from_ref(&taint), now), Some(Duration::from_secs(30)));
        let forever = json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]);
        assert_eq!(eviction_delay(&pod(forever), std::slice::from_ref(&taint), now), None);
        let no_schedule = Taint { effect: "NoSchedule".into(), ..taint };
        assert_eq!(eviction_delay(&pod(json!([])), &[no_schedule], now), None);
    }
}
