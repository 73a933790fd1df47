//! The ReplicaSet controller: keeps `replicas` pods that match the selector, owned by the
//! ReplicaSet — adopting orphans that match, releasing pods that stopped matching, creating
//! the missing in growing batches and deleting the surplus in upstream's order — and writes the
//! status `kubectl get rs` and the Deployment controller read.

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::selector::LabelSelector;
use flotilla_client::{Change, ObjectKey, WorkQueue, controller_of, resource_version};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::pods::{availability, controller_reference, from_template, is_active, is_ready, sort_for_deletion};
use crate::{Context, Error, Informers, Next, OBSERVE_TIMEOUT, Reconciler, spawn_workers};

/// Pods created or deleted per reconcile at most (upstream's `burstReplicas`).
const BURST: usize = 500;
const WORKERS: usize = 4;

pub(crate) fn start(context: &Context, informers: &mut Informers) -> Vec<JoinHandle<()>> {
    let queue = WorkQueue::new();
    let q = queue.clone();
    informers.replicasets.on_change(move |change| {
        let (Change::Applied { new: rs, .. } | Change::Deleted(rs)) = change;
        q.add(ObjectKey::of(&**rs));
    });
    let (q, replicasets) = (queue.clone(), context.replicasets.clone());
    informers.pods.on_change(move |change| {
        let (old, pod) = match change {
            Change::Applied { old, new } => (old, new),
            Change::Deleted(pod) => (None, pod),
        };
        for pod in old.into_iter().chain([pod]) {
            enqueue_owner(&q, &replicasets, pod);
        }
    });
    let reconciler = Arc::new(ReplicaSetController { context: context.clone() });
    let (pods, replicasets) = (context.pods.clone(), context.replicasets.clone());
    spawn_workers(reconciler, queue, WORKERS, async move {
        pods.synced().await;
        replicasets.synced().await;
    })
}

/// Queues the ReplicaSet that owns `pod`, or those an orphan matches (they may adopt it).
fn enqueue_owner(queue: &WorkQueue<ObjectKey>, replicasets: &flotilla_client::Cache<ReplicaSet>, pod: &Pod) {
    let namespace = pod.metadata.namespace.as_deref();
    match controller_of(pod) {
        Some(owner) if owner.kind == "ReplicaSet" => queue.add(ObjectKey::new(namespace, &owner.name)),
        Some(_) => {}
        None => {
            let labels = pod.labels();
            for rs in replicasets.in_namespace(namespace.unwrap_or_default()) {
                if selector(&rs).is_ok_and(|s| !s.is_empty() && s.matches(labels)) {
                    queue.add(ObjectKey::of(&*rs));
                }
            }
        }
    }
}

fn selector(rs: &ReplicaSet) -> Result<LabelSelector, Error> {
    let spec = rs.spec.as_ref().ok_or_else(|| Error::Invalid("no spec".into()))?;
    LabelSelector::from_api(&spec.selector).map_err(|e| Error::Invalid(e.message))
}

/// What to change so that `replicas` active pods remain: how many to create, which to delete.
#[derive(Debug, PartialEq)]
pub(crate) struct Plan {
    pub(crate) create: usize,
    pub(crate) delete: Vec<Arc<Pod>>,
}

pub(crate) fn plan(replicas: usize, mut active: Vec<Arc<Pod>>) -> Plan {
    if active.len() < replicas {
        return Plan { create: (replicas - active.len()).min(BURST), delete: Vec::new() };
    }
    sort_for_deletion(&mut active);
    active.truncate((active.len() - replicas).min(BURST));
    Plan { create: 0, delete: active }
}

struct ReplicaSetController {
    context: Context,
}

impl Reconciler for ReplicaSetController {
    const NAME: &'static str = "replicaset";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Next, Error> {
        let Some(rs) = self.context.replicasets.get(key) else { return Ok(Next::Done) };
        let namespace = key.namespace.as_deref().unwrap_or("default");
        let uid = rs.uid().unwrap_or_default();
        let selector = selector(&rs)?;
        let deleting = rs.meta().deletion_timestamp.is_some();
        let api: Api<Pod> = Api::namespaced(self.context.client.clone(), namespace);
        let mut written = 0;

        // Claim: adopt matching orphans, release owned pods that no longer match.
        let mut owned = Vec::new();
        for pod in self.context.pods.in_namespace(namespace) {
            let matches = !selector.is_empty() && selector.matches(pod.labels());
            match controller_of(&*pod) {
                Some(owner) if owner.uid == uid => {
                    if matches || deleting {
                        owned.push(pod);
                    } else {
                        written = written.max(set_owners(&api, &pod, |refs| refs.retain(|r| r.uid != uid)).await?);
                    }
                }
                None if matches && !deleting && is_active(&pod) => {
                    let reference = controller_reference(&*rs);
                    written = written.max(set_owners(&api, &pod, |refs| refs.push(reference)).await?);
                    owned.push(pod);
                }
                _ => {}
            }
        }

        if !deleting {
            let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as usize;
            let active = owned.iter().filter(|p| is_active(p)).cloned().collect();
            let plan = plan(replicas, active);
            if let Some(template) = rs.spec.as_ref().and_then(|s| s.template.as_ref()) {
                let pod =
                    from_template(template, namespace, &format!("{}-", rs.name_any()), controller_reference(&*rs));
                written = written.max(self.context.create_pods(&*rs, &api, vec![pod; plan.create]).await?);
            }
            written = written.max(self.context.delete_pods(&*rs, &api, &plan.delete).await?);
        }
        if written > 0 && !self.context.pods.observed(written, OBSERVE_TIMEOUT).await {
            return Err(Error::Lagging);
        }
        let owned = self.context.pods.controlled_by(&uid);
        self.write_status(&rs, &owned).await
    }
}

/// Rewrites `pod`'s owner references with `change`, on the version the cache holds (a conflict
/// retries the reconcile); returns the revision written.
async fn set_owners(
    api: &Api<Pod>,
    pod: &Pod,
    change: impl FnOnce(&mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>),
) -> Result<u64, Error> {
    let mut references = pod.metadata.owner_references.clone().unwrap_or_default();
    change(&mut references);
    let references = if references.is_empty() { serde_json::Value::Null } else { json!(references) };
    let patch = json!({"metadata": {"ownerReferences": references, "resourceVersion": pod.metadata.resource_version}});
    match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(pod) => Ok(resource_version(&pod)),
        // Gone meanwhile: nothing to claim.
        Err(kube::Error::Api(err)) if err.code == 404 => Ok(0),
        Err(err) => Err(err.into()),
    }
}

impl ReplicaSetController {
    async fn write_status(&self, rs: &ReplicaSet, owned: &[Arc<Pod>]) -> Result<Next, Error> {
        let spec = rs.spec.clone().unwrap_or_default();
        let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
        let template_labels = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone());
        let now = jiff::Timestamp::now();
        let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| is_active(p)).collect();
        let mut next = Next::Done;
        let mut available = 0;
        for pod in &active {
            match availability(pod, min_ready, now) {
                Ok(()) => available += 1,
                Err(Some(wait)) => next = next.min(Next::After(wait + Duration::from_millis(100))),
                Err(None) => {}
            }
        }
        let fully_labeled = active
            .iter()
            .filter(|p| template_labels.iter().flatten().all(|(k, v)| p.labels().get(k) == Some(v)))
            .count();
        let status = json!({
            "replicas": active.len(),
            "fullyLabeledReplicas": fully_labeled,
            "readyReplicas": active.iter().filter(|p| is_ready(p)).count(),
            "availableReplicas": available,
            "observedGeneration": rs.meta().generation,
        });
        self.context.write_status(rs, &self.context.replicasets, status).await?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, node: Option<&str>) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"nodeName": node, "containers": []}}))
                .unwrap(),
        )
    }

    #[test]
    fn missing_pods_are_created_and_the_surplus_deleted_unscheduled_first() {
        assert_eq!(plan(3, vec![pod("a", Some("n"))]), Plan { create: 2, delete: vec![] });
        assert_eq!(plan(10_000, vec![]).create, BURST);
        let surplus = plan(1, vec![pod("a", Some("n")), pod("b", None), pod("c", Some("n"))]);
        assert_eq!(surplus.create, 0);
        let names: Vec<_> = surplus.delete.iter().map(|p| p.name_any()).collect();
        assert_eq!(names[0], "b");
        assert_eq!(names.len(), 2);
        assert_eq!(plan(2, vec![pod("a", None), pod("b", None)]), Plan { create: 0, delete: vec![] });
    }
}
