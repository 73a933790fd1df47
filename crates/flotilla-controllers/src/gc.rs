//! The garbage collector: follows `ownerReferences`. An object whose owners are all gone is
//! deleted (in the background); one that lost some of them forgets those. An owner deleted with
//! `propagationPolicy: Foreground` keeps its `foregroundDeletion` finalizer until its
//! dependents are gone; one deleted with `Orphan` keeps its `orphan` finalizer until its
//! dependents no longer name it. So deleting a Deployment takes its ReplicaSets and their pods
//! with it, as upstream does.

use std::sync::Arc;

use flotilla_client::{Cache, Change, Informer, ObjectKey, WorkQueue};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::{Context, Error, Informers, Next, Reconciler, spawn_workers, unless_gone};

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";
const WORKERS: usize = 4;

/// One kind the collector watches, whatever its type.
trait Kind: Send + Sync {
    fn resource(&self) -> &ApiResource;
    fn namespaced(&self) -> bool;
    fn meta(&self, key: &ObjectKey) -> Option<ObjectMeta>;
    fn dependents_of(&self, uid: &str) -> Vec<ObjectMeta>;
}

struct Typed<K> {
    cache: Cache<K>,
    resource: ApiResource,
    namespaced: bool,
}

impl<K> Kind for Typed<K>
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
{
    fn resource(&self) -> &ApiResource {
        &self.resource
    }

    fn namespaced(&self) -> bool {
        self.namespaced
    }

    fn meta(&self, key: &ObjectKey) -> Option<ObjectMeta> {
        self.cache.get(key).map(|o| o.meta().clone())
    }

    fn dependents_of(&self, uid: &str) -> Vec<ObjectMeta> {
        self.cache.owned_by(uid).iter().map(|o| o.meta().clone()).collect()
    }
}

type Kinds = Arc<Vec<Arc<dyn Kind>>>;
type Item = (usize, ObjectKey);

fn key_of(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(meta.namespace.as_deref(), meta.name.as_deref().unwrap_or_default())
}

fn kind_index(kinds: &[Arc<dyn Kind>], reference: &OwnerReference) -> Option<usize> {
    kinds.iter().position(|k| k.resource().api_version == reference.api_version && k.resource().kind == reference.kind)
}

/// Registers the collector on an informer of one kind.
fn watch<K>(informer: &mut Informer<K>, kinds: &Kinds, index: usize, queue: &WorkQueue<Item>)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (kinds, queue) = (kinds.clone(), queue.clone());
    informer.on_change(move |change| match change {
        Change::Applied { new, .. } => {
            let meta = new.meta();
            let deleting_with_finalizer = meta.deletion_timestamp.is_some()
                && meta.finalizers.iter().flatten().any(|f| f == ORPHAN || f == FOREGROUND);
            if deleting_with_finalizer || meta.owner_references.as_ref().is_some_and(|r| !r.is_empty()) {
                queue.add((index, ObjectKey::of(&**new)));
            }
        }
        Change::Deleted(gone) => {
            let meta = gone.meta();
            // Its dependents may now be orphans…
            if let Some(uid) = &meta.uid {
                for (i, kind) in kinds.iter().enumerate() {
                    for dependent in kind.dependents_of(uid) {
                        queue.add((i, key_of(&dependent)));
                    }
                }
            }
            // …and an owner waiting in the foreground may now be free to go.
            for owner in meta.owner_references.iter().flatten() {
                if let Some(i) = kind_index(&kinds, owner) {
                    let namespace = if kinds[i].namespaced() { meta.namespace.as_deref() } else { None };
                    queue.add((i, ObjectKey::new(namespace, &owner.name)));
                }
            }
        }
    });
}

pub(crate) fn start(context: &Context, informers: &mut Informers) -> Vec<JoinHandle<()>> {
    fn typed<K: Resource<DynamicType = ()> + Send + Sync + 'static>(
        cache: Cache<K>,
        namespaced: bool,
    ) -> Arc<dyn Kind> {
        Arc::new(Typed { cache, resource: ApiResource::erase::<K>(&()), namespaced })
    }
    let kinds: Kinds = Arc::new(vec![
        typed(context.pods.clone(), true),
        typed(context.replicasets.clone(), true),
        typed(context.deployments.clone(), true),
        typed(context.jobs.clone(), true),
        typed(context.daemonsets.clone(), true),
        typed(context.statefulsets.clone(), true),
        typed(context.services.clone(), true),
        typed(context.endpointslices.clone(), true),
        typed(context.controllerrevisions.clone(), true),
        typed(context.replicationcontrollers.clone(), true),
    ]);
    let queue = WorkQueue::named("garbage_collector_attempt_to_delete", &context.queues);
    watch(&mut informers.pods, &kinds, 0, &queue);
    watch(&mut informers.replicasets, &kinds, 1, &queue);
    watch(&mut informers.deployments, &kinds, 2, &queue);
    watch(&mut informers.jobs, &kinds, 3, &queue);
    watch(&mut informers.daemonsets, &kinds, 4, &queue);
    watch(&mut informers.statefulsets, &kinds, 5, &queue);
    watch(&mut informers.services, &kinds, 6, &queue);
    watch(&mut informers.endpointslices, &kinds, 7, &queue);
    watch(&mut informers.controllerrevisions, &kinds, 8, &queue);
    watch(&mut informers.replicationcontrollers, &kinds, 9, &queue);
    let collector = Arc::new(Collector { context: context.clone(), kinds, queue: queue.clone() });
    let context = context.clone();
    spawn_workers(collector, queue, WORKERS, async move {
        context.pods.synced().await;
        context.replicasets.synced().await;
        context.deployments.synced().await;
        context.jobs.synced().await;
        context.daemonsets.synced().await;
        context.statefulsets.synced().await;
        context.services.synced().await;
        context.endpointslices.synced().await;
        context.controllerrevisions.synced().await;
        context.replicationcontrollers.synced().await;
    })
}

struct Collector {
    context: Context,
    kinds: Kinds,
    queue: WorkQueue<Item>,
}

impl Reconciler for Collector {
    const NAME: &'static str = "garbage-collector";
    type Key = Item;

    async fn reconcile(&self, (index, key): &Item) -> Result<Next, Error> {
        let Some(meta) = self.kinds[*index].meta(key) else { return Ok(Next::Done) };
        let finalizers = meta.finalizers.clone().unwrap_or_default();
        if meta.deletion_timestamp.is_some() {
            if finalizers.iter().any(|f| f == ORPHAN) {
                return self.orphan_dependents(*index, &meta).await;
            }
            if finalizers.iter().any(|f| f == FOREGROUND) {
                return self.delete_in_foreground(*index, &meta).await;
            }
        }
        self.check_owners(*index, &meta).await
    }
}

impl Collector {
    fn api(&self, index: usize, namespace: Option<&str>) -> Api<DynamicObject> {
        let resource = self.kinds[index].resource();
        match namespace {
            Some(ns) if self.kinds[index].namespaced() => {
                Api::namespaced_with(self.context.client.clone(), ns, resource)
            }
            _ => Api::all_with(self.context.client.clone(), resource),
        }
    }

    /// Every dependent of `uid`, with its kind.
    fn dependents(&self, uid: &str) -> Vec<(usize, ObjectMeta)> {
        self.kinds.iter().enumerate().flat_map(|(i, k)| k.dependents_of(uid).into_iter().map(move |m| (i, m))).collect()
    }

    /// `Orphan`: the dependents forget the owner, then the owner goes.
    async fn orphan_dependents(&self, index: usize, owner: &ObjectMeta) -> Result<Next, Error> {
        let uid = owner.uid.clone().unwrap_or_default();
        for (i, dependent) in self.dependents(&uid) {
            self.drop_references(i, &dependent, |r| r.uid == uid).await?;
        }
        self.remove_finalizer(index, owner, ORPHAN).await
    }

    /// `Foreground`: the dependents are deleted first; the owner goes once none is left.
    async fn delete_in_foreground(&self, index: usize, owner: &ObjectMeta) -> Result<Next, Error> {
        let uid = owner.uid.clone().unwrap_or_default();
        let dependents = self.dependents(&uid);
        for (i, dependent) in &dependents {
            if dependent.deletion_timestamp.is_none() {
                let params =
                    DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), ..Default::default() };
                let name = dependent.name.as_deref().unwrap_or_default();
                unless_gone(self.api(*i, dependent.namespace.as_deref()).delete(name, &params).await)?;
            }
        }
        // Only dependents that block their owner's deletion hold it back.
        let blocking = dependents.iter().any(|(_, d)| {
            d.owner_references.iter().flatten().any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
        });
        if blocking {
            // Their deletion queues the owner again.
            return Ok(Next::Done);
        }
        self.remove_finalizer(index, owner, FOREGROUND).await
    }

    /// A dependent whose owners are all gone is deleted; one that lost some forgets them.
    async fn check_owners(&self, index: usize, meta: &ObjectMeta) -> Result<Next, Error> {
        let references = meta.owner_references.clone().unwrap_or_default();
        if references.is_empty() {
            return Ok(Next::Done);
        }
        let mut dangling = Vec::new();
        for reference in &references {
            match self.owner_state(meta, reference).await? {
                Owner::Gone => dangling.push(reference.uid.clone()),
                Owner::Present => {}
                Owner::DeletingInForeground(owner) => {
                    // The owner's own reconcile deletes its dependents.
                    self.queue.add(owner);
                }
            }
        }
        if dangling.is_empty() {
            return Ok(Next::Done);
        }
        if dangling.len() == references.len() {
            if meta.deletion_timestamp.is_none() {
                let name = meta.name.as_deref().unwrap_or_default();
                unless_gone(
                    self.api(index, meta.namespace.as_deref()).delete(name, &DeleteParams::background()).await,
                )?;
            }
            return Ok(Next::Done);
        }
        self.drop_references(index, meta, |r| dangling.contains(&r.uid)).await?;
        Ok(Next::Done)
    }

    async fn owner_state(&self, dependent: &ObjectMeta, reference: &OwnerReference) -> Result<Owner, Error> {
        // Kinds the collector does not watch are taken to exist.
        let Some(owner_index) = kind_index(&self.kinds, reference) else { return Ok(Owner::Present) };
        let namespace = if self.kinds[owner_index].namespaced() { dependent.namespace.as_deref() } else { None };
        let key = ObjectKey::new(namespace, &reference.name);
        let cached = self.kinds[owner_index].meta(&key).filter(|m| m.uid.as_deref() == Some(&reference.uid));
        let owner = match cached {
            Some(owner) => Some(owner),
            // The cache may lag behind: ask the API before deleting anything.
            None => match self.api(owner_index, namespace).get_opt(&reference.name).await? {
                Some(live) if live.uid().as_deref() == Some(&reference.uid) => Some(live.metadata),
                _ => None,
            },
        };
        Ok(match owner {
            None => Owner::Gone,
            Some(owner)
                if owner.deletion_timestamp.is_some() && owner.finalizers.iter().flatten().any(|f| f == FOREGROUND) =>
            {
                Owner::DeletingInForeground((owner_index, key))
            }
            Some(_) => Owner::Present,
        })
    }

    /// Rewrites an object's owner references without those `drop` picks, on the version the
    /// cache holds (a conflict retries).
    async fn drop_references(
        &self,
        index: usize,
        meta: &ObjectMeta,
        drop: impl Fn(&OwnerReference) -> bool,
    ) -> Result<(), Error> {
        let kept: Vec<&OwnerReference> = meta.owner_references.iter().flatten().filter(|r| !drop(r)).collect();
        // None left: the field goes (null in a merge patch), as upstream leaves it.
        let kept = if kept.is_empty() { serde_json::Value::Null } else { json!(kept) };
        let patch = json!({"metadata": {"ownerReferences": kept, "resourceVersion": meta.resource_version}});
        let name = meta.name.as_deref().unwrap_or_default();
        match self
            .api(index, meta.namespace.as_deref())
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(err)) if err.code == 404 => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn remove_finalizer(&self, index: usize, meta: &ObjectMeta, finalizer: &str) -> Result<Next, Error> {
        let kept: Vec<&String> = meta.finalizers.iter().flatten().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {"finalizers": kept, "resourceVersion": meta.resource_version}});
        let name = meta.name.as_deref().unwrap_or_default();
        match self
            .api(index, meta.namespace.as_deref())
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(Next::Done),
            Err(kube::Error::Api(err)) if err.code == 404 => Ok(Next::Done),
            Err(err) => Err(err.into()),
        }
    }
}

enum Owner {
    Present,
    Gone,
    DeletingInForeground(Item),
}
