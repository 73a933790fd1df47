//! The DaemonSet controller: one pod on every node the template may run on (its node selector
//! and affinity, the node's taints against its tolerations), pinned to the node by node
//! affinity and placed by the scheduler, as upstream does; a rolling update replaces the
//! pods of an old template `maxUnavailable` at a time. Each template is kept as a
//! ControllerRevision ([`history`]), for `kubectl rollout history` and `rollout undo`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use flotilla_api::scheduling::{node_matches, untolerated};
use flotilla_client::{Change, ObjectKey, WorkQueue};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodTemplateSpec,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::history;
use crate::pods::{controller_reference, from_template, is_active, is_available, is_ready, next_available};
use crate::{Context, Error, Informers, Next, OBSERVE_TIMEOUT, Reconciler, enqueue_controller, spawn_workers};

/// The label that names the template revision a pod was made from.
pub(crate) const REVISION_LABEL: &str = "controller-revision-hash";

pub(crate) fn start(context: &Context, informers: &mut Informers) -> Vec<JoinHandle<()>> {
    let queue = WorkQueue::named("daemonset", &context.queues);
    let q = queue.clone();
    informers.daemonsets.on_change(move |change| {
        let (Change::Applied { new: ds, .. } | Change::Deleted(ds)) = change;
        q.add(ObjectKey::of(&**ds));
    });
    enqueue_controller(&mut informers.pods, "DaemonSet", &queue);
    enqueue_controller(&mut informers.controllerrevisions, "DaemonSet", &queue);
    // A node added, removed, relabelled or tainted may change where every DaemonSet runs.
    let (q, daemonsets) = (queue.clone(), context.daemonsets.clone());
    informers.nodes.on_change(move |change| {
        let relevant = match &change {
            Change::Applied { old: Some(old), new } => {
                old.metadata.labels != new.metadata.labels
                    || old.spec.as_ref().map(|s| &s.taints) != new.spec.as_ref().map(|s| &s.taints)
            }
            _ => true,
        };
        if relevant {
            for ds in daemonsets.list() {
                q.add(ObjectKey::of(&*ds));
            }
        }
    });
    let context = context.clone();
    spawn_workers(Arc::new(DaemonSetController { context: context.clone() }), queue, 2, async move {
        context.daemonsets.synced().await;
        context.pods.synced().await;
        context.nodes.synced().await;
        context.controllerrevisions.synced().await;
    })
}

/// The tolerations upstream adds to every daemon pod, so that it runs on nodes that are not
/// ready, unreachable, under pressure or cordoned.
fn daemon_tolerations() -> Vec<Toleration> {
    let toleration = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// The daemon pod's template with upstream's additions: its tolerations.
fn daemon_template(ds: &DaemonSet, hash: &str) -> PodTemplateSpec {
    let mut template = ds.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(REVISION_LABEL.into(), hash.into());
    let spec = template.spec.get_or_insert_with(Default::default);
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for toleration in daemon_tolerations() {
        if !tolerations.iter().any(|t| t.key == toleration.key && t.effect == toleration.effect) {
            tolerations.push(toleration);
        }
    }
    template
}

/// Whether a daemon pod from `template` belongs on `node` (upstream's `NodeShouldRunDaemonPod`).
pub(crate) fn should_run(template: &PodTemplateSpec, node: &Node) -> bool {
    let Some(spec) = template.spec.as_ref() else { return false };
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    node_matches(&spec.node_selector.clone().unwrap_or_default(), spec.affinity.as_ref(), &labels, name)
        && untolerated(&taints, &tolerations, |t| t.effect == "NoSchedule" || t.effect == "NoExecute").is_none()
}

/// The node a daemon pod is pinned to: its node, or its node affinity's `metadata.name`.
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(node);
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name")?
        .values
        .as_ref()?
        .first()
        .cloned()
}

fn pinned_to(node: &str) -> Affinity {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        match_expressions: None,
    };
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector { node_selector_terms: vec![term] }),
            preferred_during_scheduling_ignored_during_execution: None,
        }),
        ..Default::default()
    }
}

struct DaemonSetController {
    context: Context,
}

impl Reconciler for DaemonSetController {
    const NAME: &'static str = "daemonset";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Next, Error> {
        let Some(ds) = self.context.daemonsets.get(key) else { return Ok(Next::Done) };
        if ds.meta().deletion_timestamp.is_some() {
            return Ok(Next::Done);
        }
        let namespace = key.namespace.as_deref().unwrap_or("default");
        let api: Api<Pod> = Api::namespaced(self.context.client.clone(), namespace);
        let uid = ds.uid().unwrap_or_default();
        let spec = ds.spec.clone().unwrap_or_default();
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let owned = self.context.pods.controlled_by(&uid);
        let running: HashSet<&String> = owned.iter().filter_map(|p| p.labels().get(REVISION_LABEL)).collect();
        let in_use = |r: &ControllerRevision| r.labels().get(REVISION_LABEL).is_some_and(|h| running.contains(h));
        let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
        let synced = history::sync(&self.context, &*ds, &spec.template, collisions, limit, in_use).await?;
        let hash = synced.revision.labels().get(REVISION_LABEL).cloned().unwrap_or_default();
        let template = daemon_template(&ds, &hash);
        let min_ready = std::time::Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
        let now = jiff::Timestamp::now();

        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for pod in owned.iter().cloned() {
            if let Some(node) = target_node(&pod) {
                by_node.entry(node).or_default().push(pod);
            }
        }
        let nodes = self.context.nodes.list();
        let wanted: Vec<String> =
            nodes.iter().filter(|n| should_run(&template, n)).filter_map(|n| n.metadata.name.clone()).collect();
        let mut create = Vec::new();
        let mut delete: Vec<Arc<Pod>> = Vec::new();
        for node in &wanted {
            let mut pods: Vec<Arc<Pod>> = by_node.get(node).cloned().unwrap_or_default();
            // A failed daemon pod is replaced.
            let (failed, mut live): (Vec<_>, Vec<_>) =
                pods.drain(..).partition(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"));
            delete.extend(failed.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()));
            live.retain(|p| is_active(p));
            live.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            if live.is_empty() {
                create.push(node.clone());
            } else {
                delete.extend(live.drain(1..));
            }
        }
        for (node, pods) in &by_node {
            if !wanted.contains(node) {
                delete.extend(pods.iter().filter(|p| is_active(p)).cloned());
            }
        }
        // Rolling update: pods of an old template go while few enough are unavailable.
        let rolling = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()) != Some("OnDelete");
        if rolling && create.is_empty() {
            let max_unavailable = match spec
                .update_strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_unavailable.clone())
            {
                Some(IntOrString::Int(n)) => n.max(0) as usize,
                Some(IntOrString::String(p)) => {
                    let percent: usize = p.trim_end_matches('%').parse().unwrap_or(0);
                    (wanted.len() * percent / 100).max(1)
                }
                None => 1,
            };
            let current: Vec<Arc<Pod>> =
                wanted.iter().filter_map(|n| by_node.get(n)?.iter().find(|p| is_active(p)).cloned()).collect();
            let unavailable = current.iter().filter(|p| !is_available(p, min_ready, now)).count()
                + wanted.len().saturating_sub(current.len());
            let mut budget = max_unavailable.saturating_sub(unavailable);
            // Old pods that are not available go first, costing nothing.
            let mut old: Vec<&Arc<Pod>> =
                current.iter().filter(|p| p.labels().get(REVISION_LABEL) != Some(&hash)).collect();
            old.sort_by_key(|p| is_available(p, min_ready, now));
            for pod in old {
                if !is_available(pod, min_ready, now) {
                    delete.push(pod.clone());
                } else if budget > 0 {
                    delete.push(pod.clone());
                    budget -= 1;
                }
            }
        }

        let pods = create
            .iter()
            .map(|node| {
                let owner = controller_reference(&*ds);
                let mut pod = from_template(&template, namespace, &format!("{}-", ds.name_any()), owner);
                pod.spec.get_or_insert_with(Default::default).affinity = Some(pinned_to(node));
                pod
            })
            .collect();
        let mut written = self.context.create_pods(&*ds, &api, pods).await?;
        written = written.max(self.context.delete_pods(&*ds, &api, &delete).await?);
        if written > 0 && !self.context.pods.observed(written, OBSERVE_TIMEOUT).await {
            return Err(Error::Lagging);
        }

        // Status, from what the caches show now.
        let mut current: HashMap<String, Arc<Pod>> = HashMap::new();
        let mut misscheduled = 0;
        for pod in self.context.pods.controlled_by(&uid) {
            if !is_active(&pod) {
                continue;
            }
            match target_node(&pod) {
                Some(node) if wanted.contains(&node) => {
                    current.entry(node).or_insert(pod);
                }
                _ => misscheduled += 1,
            }
        }
        let available = current.values().filter(|p| is_available(p, min_ready, now)).count();
        let status = json!({
            "desiredNumberScheduled": wanted.len(),
            "currentNumberScheduled": current.len(),
            "numberMisscheduled": misscheduled,
            "numberReady": current.values().filter(|p| is_ready(p)).count(),
            "updatedNumberScheduled": current.values().filter(|p| p.labels().get(REVISION_LABEL) == Some(&hash)).count(),
            "numberAvailable": available,
            "numberUnavailable": wanted.len() - available.min(wanted.len()),
            "observedGeneration": ds.meta().generation,
            "collisionCount": synced.collisions,
        });
        self.context.write_status(&*ds, &self.context.daemonsets, status).await?;
        // Availability after `minReadySeconds` needs another look.
        Ok(next_available(current.values(), min_ready, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}))
            .unwrap()
    }

    #[test]
    fn daemon_pods_go_where_selectors_and_taints_allow() {
        let template = |extra: serde_json::Value| -> PodTemplateSpec {
            let mut spec = json!({"containers": [{"name": "agent"}]});
            spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value(json!({"spec": spec})).unwrap()
        };
        let plain = node("plain", json!({}), json!([]));
        let tainted = node("gpu", json!({}), json!([{"key": "gpu", "effect": "NoSchedule"}]));
        let edge = node("edge", json!({"zone": "edge"}), json!([]));
        let cordoned_down =
            node("down", json!({}), json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]));
        let ds: DaemonSet =
            serde_json::from_value(json!({"spec": {"selector": {}, "template": template(json!({}))}})).unwrap();
        let everywhere = daemon_template(&ds, "h");
        assert!(should_run(&everywhere, &plain));
        assert!(!should_run(&everywhere, &tainted));
        assert!(should_run(&everywhere, &cordoned_down), "daemon pods tolerate unreachable nodes");
        let selective = template(json!({"nodeSelector": {"zone": "edge"}}));
        assert!(should_run(&selective, &edge));
        assert!(!should_run(&selective, &plain));
        let pod: Pod =
            serde_json::from_value(json!({"spec": {"containers": [], "affinity": pinned_to("edge")}})).unwrap();
        assert_eq!(target_node(&pod).as_deref(), Some("edge"));
    }
}
