//! The ReplicaSet controller: keeps `replicas` pods that match the selector, owned by the
//! ReplicaSet — adopting orphans that match, releasing pods that stopped matching, creating
//! the missing in growing batches and deleting the surplus in upstream's order — and writes the
//! status `kubectl get rs` and the Deployment controller read.
//!
//! The same loop keeps ReplicationControllers, as upstream's ReplicationManager is its
//! ReplicaSet controller behind a conversion: [`Replicated`] is what it reads of either.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::selector::LabelSelector;
use flotilla_client::{Cache, Change, Informer, ObjectKey, WorkQueue, controller_of, resource_version};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::pods::{
    controller_reference, from_template, is_active, is_available, is_ready, next_available, sort_for_deletion,
};
use crate::{Context, Error, Informers, Next, OBSERVE_TIMEOUT, Reconciler, spawn_workers};

/// Pods created or deleted per reconcile at most (upstream's `burstReplicas`).
const BURST: usize = 500;
const WORKERS: usize = 4;

/// What the loop reads of a ReplicaSet or a ReplicationController.
pub(crate) trait Replicated:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The controller's name, in logs.
    const CONTROLLER: &'static str;
    /// Its work queue's name, as upstream's controller names it (`workqueue_*`).
    const QUEUE: &'static str;
    fn cache(context: &Context) -> &Cache<Self>;
    fn informer(informers: &mut Informers) -> &mut Informer<Self>;
    fn selector(&self) -> Result<LabelSelector, Error>;
    fn replicas(&self) -> i32;
    fn min_ready_seconds(&self) -> i32;
    fn template(&self) -> Option<&PodTemplateSpec>;
}

/// The accessors of the fields both kinds' specs have, under the same names.
macro_rules! same_spec_fields {
    () => {
        fn replicas(&self) -> i32 {
            self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
        }

        fn min_ready_seconds(&self) -> i32 {
            self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
        }

        fn template(&self) -> Option<&PodTemplateSpec> {
            self.spec.as_ref().and_then(|s| s.template.as_ref())
        }
    };
}

impl Replicated for ReplicaSet {
    const CONTROLLER: &'static str = "replicaset";
    const QUEUE: &'static str = "replicaset";

    fn cache(context: &Context) -> &Cache<Self> {
        &context.replicasets
    }

    fn informer(informers: &mut Informers) -> &mut Informer<Self> {
        &mut informers.replicasets
    }

    fn selector(&self) -> Result<LabelSelector, Error> {
        let spec = self.spec.as_ref().ok_or_else(|| Error::Invalid("no spec".into()))?;
        LabelSelector::from_api(&spec.selector).map_err(|e| Error::Invalid(e.message))
    }

    same_spec_fields!();
}

impl Replicated for ReplicationController {
    const CONTROLLER: &'static str = "replicationcontroller";
    const QUEUE: &'static str = "replicationmanager";

    fn cache(context: &Context) -> &Cache<Self> {
        &context.replicationcontrollers
    }

    fn informer(informers: &mut Informers) -> &mut Informer<Self> {
        &mut informers.replicationcontrollers
    }

    fn selector(&self) -> Result<LabelSelector, Error> {
        let labels: Option<BTreeMap<String, String>> = self.spec.as_ref().and_then(|s| s.selector.clone());
        let selector = metav1::LabelSelector { match_labels: labels, ..Default::default() };
        LabelSelector::from_api(&selector).map_err(|e| Error::Invalid(e.message))
    }

    same_spec_fields!();
}

pub(crate) fn start<K: Replicated>(context: &Context, informers: &mut Informers) -> Vec<JoinHandle<()>> {
    let queue = WorkQueue::named(K::QUEUE, &context.queues);
    let q = queue.clone();
    K::informer(informers).on_change(move |change| {
        let (Change::Applied { new: owner, .. } | Change::Deleted(owner)) = change;
        q.add(ObjectKey::of(&**owner));
    });
    let (q, owners) = (queue.clone(), K::cache(context).clone());
    informers.pods.on_change(move |change| {
        let (old, pod) = match change {
            Change::Applied { old, new } => (old, new),
            Change::Deleted(pod) => (None, pod),
        };
        for pod in old.into_iter().chain([pod]) {
            enqueue_owner(&q, &owners, pod);
        }
    });
    let reconciler = Arc::new(ReplicaSetController::<K> { context: context.clone(), kind: PhantomData });
    let (pods, owners) = (context.pods.clone(), K::cache(context).clone());
    spawn_workers(reconciler, queue, WORKERS, async move {
        pods.synced().await;
        owners.synced().await;
    })
}

/// Queues the owner of `pod` if it is of kind `K`, or those an orphan matches (they may adopt it).
fn enqueue_owner<K: Replicated>(queue: &WorkQueue<ObjectKey>, owners: &Cache<K>, pod: &Pod) {
    let namespace = pod.metadata.namespace.as_deref();
    match controller_of(pod) {
        Some(owner) if owner.kind == K::kind(&()) => queue.add(ObjectKey::new(namespace, &owner.name)),
        Some(_) => {}
        None => {
            let labels = pod.labels();
            for candidate in owners.in_namespace(namespace.unwrap_or_default()) {
                if candidate.selector().is_ok_and(|s| !s.is_empty() && s.matches(labels)) {
                    queue.add(ObjectKey::of(&*candidate));
                }
            }
        }
    }
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

struct ReplicaSetController<K> {
    context: Context,
    kind: PhantomData<fn() -> K>,
}

impl<K: Replicated> Reconciler for ReplicaSetController<K> {
    const NAME: &'static str = K::CONTROLLER;
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Next, Error> {
        let Some(rs) = K::cache(&self.context).get(key) else { return Ok(Next::Done) };
        let namespace = key.namespace.as_deref().unwrap_or("default");
        let uid = rs.uid().unwrap_or_default();
        let selector = rs.selector()?;
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
            let replicas = rs.replicas().max(0) as usize;
            let active = owned.iter().filter(|p| is_active(p)).cloned().collect();
            let plan = plan(replicas, active);
            if let Some(template) = rs.template() {
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

impl<K: Replicated> ReplicaSetController<K> {
    async fn write_status(&self, rs: &K, owned: &[Arc<Pod>]) -> Result<Next, Error> {
        let min_ready = Duration::from_secs(rs.min_ready_seconds().max(0) as u64);
        let template_labels = rs.template().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone());
        let now = jiff::Timestamp::now();
        let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| is_active(p)).collect();
        let available = active.iter().filter(|pod| is_available(pod, min_ready, now)).count();
        let next = next_available(&active, min_ready, now);
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
        self.context.write_status(rs, K::cache(&self.context), status).await?;
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
