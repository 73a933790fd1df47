//! The Deployment controller: one ReplicaSet per pod template (named by the template's hash),
//! rolled from old to new by the strategy — RollingUpdate within `maxSurge`/`maxUnavailable`,
//! or Recreate — with the revision annotations `kubectl rollout history|undo` read, the
//! `revisionHistoryLimit`, pause and resume, and the Progressing and Available conditions
//! (`progressDeadlineSeconds` included) that `kubectl rollout status` waits on.
//!
//! The arithmetic of a rollout step is pure ([`new_replicas`], [`old_scale_down`]) and tested
//! on its own; the reconcile only reads the caches and carries the step out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::selector::LabelSelector;
use flotilla_client::{Change, EventType, ObjectKey, WorkQueue, controller_of, resource_version};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::pods::controller_reference;
use crate::{Context, Error, Informers, Next, OBSERVE_TIMEOUT, Reconciler, spawn_workers, unless_gone};

pub(crate) const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The label that tells the ReplicaSets of one Deployment apart.
pub(crate) const HASH_LABEL: &str = "pod-template-hash";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const WORKERS: usize = 4;

pub(crate) fn start(context: &Context, informers: &mut Informers) -> Vec<JoinHandle<()>> {
    let queue = WorkQueue::named("deployment", &context.queues);
    let q = queue.clone();
    informers.deployments.on_change(move |change| {
        let (Change::Applied { new: d, .. } | Change::Deleted(d)) = change;
        q.add(ObjectKey::of(&**d));
    });
    let (q, deployments) = (queue.clone(), context.deployments.clone());
    informers.replicasets.on_change(move |change| {
        let (Change::Applied { new: rs, .. } | Change::Deleted(rs)) = change;
        let namespace = rs.metadata.namespace.as_deref();
        match controller_of(&**rs) {
            Some(owner) if owner.kind == "Deployment" => q.add(ObjectKey::new(namespace, &owner.name)),
            Some(_) => {}
            None => {
                for d in deployments.in_namespace(namespace.unwrap_or_default()) {
                    if selector(&d).is_ok_and(|s| !s.is_empty() && s.matches(rs.labels())) {
                        q.add(ObjectKey::of(&*d));
                    }
                }
            }
        }
    });
    // Recreate waits until the old pods are gone.
    let (q, replicasets) = (queue.clone(), context.replicasets.clone());
    informers.pods.on_change(move |change| {
        if let Change::Deleted(pod) = change
            && let Some(owner) = controller_of(&**pod).filter(|o| o.kind == "ReplicaSet")
            && let Some(rs) = replicasets.get(&ObjectKey::new(pod.metadata.namespace.as_deref(), &owner.name))
            && let Some(d) = controller_of(&*rs).filter(|o| o.kind == "Deployment")
        {
            q.add(ObjectKey::new(pod.metadata.namespace.as_deref(), &d.name));
        }
    });
    let reconciler = Arc::new(DeploymentController { context: context.clone() });
    let (deployments, replicasets, pods) =
        (context.deployments.clone(), context.replicasets.clone(), context.pods.clone());
    spawn_workers(reconciler, queue, WORKERS, async move {
        deployments.synced().await;
        replicasets.synced().await;
        pods.synced().await;
    })
}

fn selector(d: &Deployment) -> Result<LabelSelector, Error> {
    let spec = d.spec.as_ref().ok_or_else(|| Error::Invalid("no spec".into()))?;
    LabelSelector::from_api(&spec.selector).map_err(|e| Error::Invalid(e.message))
}

/// `maxSurge` and `maxUnavailable` as pod counts for `replicas` (percentages of it: surge
/// rounded up, unavailable down; never both zero), as upstream resolves them.
pub(crate) fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let rolling = spec.strategy.and_then(|s| s.rolling_update).unwrap_or_default();
    let resolve = |value: Option<IntOrString>, default: &str, round_up: bool| match value
        .unwrap_or(IntOrString::String(default.into()))
    {
        IntOrString::Int(n) => n.max(0),
        IntOrString::String(s) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
            let scaled = percent * i64::from(replicas);
            (if round_up { (scaled + 99) / 100 } else { scaled / 100 }) as i32
        }
    };
    let surge = resolve(rolling.max_surge, "25%", true);
    let unavailable = resolve(rolling.max_unavailable, "25%", false);
    if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable.min(replicas)) }
}

/// The new ReplicaSet's size in this step of a rolling update: up toward `replicas` as far as
/// the surge allows (upstream's `NewRSNewReplicas`). `total` is all ReplicaSets' sizes.
pub(crate) fn new_replicas(replicas: i32, surge: i32, current: i32, total: i32) -> i32 {
    if current >= replicas {
        return replicas;
    }
    let room = (replicas + surge - total).max(0);
    current + room.min(replicas - current)
}

/// A ReplicaSet's size and how many of its pods are available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizes {
    pub(crate) replicas: i32,
    pub(crate) available: i32,
}

/// New sizes for old ReplicaSets (oldest first) in this step of a rolling update: first the
/// unhealthy pods go, then as many healthy ones as keep `replicas - maxUnavailable` available
/// (upstream's `reconcileOldReplicaSets`).
pub(crate) fn old_scale_down(replicas: i32, max_unavailable: i32, new: Sizes, old: &[Sizes]) -> Vec<i32> {
    let mut sizes: Vec<i32> = old.iter().map(|s| s.replicas).collect();
    if sizes.iter().sum::<i32>() == 0 {
        return sizes;
    }
    let total: i32 = new.replicas + sizes.iter().sum::<i32>();
    let min_available = replicas - max_unavailable;
    let new_unavailable = (new.replicas - new.available).max(0);
    let mut budget = total - min_available - new_unavailable;
    if budget <= 0 {
        return sizes;
    }
    // Unhealthy first: pods that are not available cost no availability to remove.
    for (size, old) in sizes.iter_mut().zip(old) {
        let unhealthy = (*size - old.available).max(0).min(budget);
        *size -= unhealthy;
        budget -= unhealthy;
    }
    let available: i32 = new.available + old.iter().zip(&sizes).map(|(o, s)| o.available.min(*s)).sum::<i32>();
    let mut room = available - min_available;
    for size in sizes.iter_mut() {
        if room <= 0 {
            break;
        }
        let down = (*size).min(room);
        *size -= down;
        room -= down;
    }
    sizes
}

/// An active ReplicaSet as proportional scaling sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share {
    pub(crate) replicas: i32,
    /// Its `max-replicas` annotation: the Deployment's `replicas + maxSurge` when it was last
    /// sized, so that its share of the old size is known.
    pub(crate) max_before: Option<i32>,
    pub(crate) created: Option<jiff::Timestamp>,
}

/// New sizes for the active ReplicaSets of a rolling Deployment whose `replicas` changed in
/// the middle of a rollout: each keeps its share of the whole, the rounding's leftover going to
/// the largest (upstream's `scale` and `GetReplicaSetProportion`), so that a scale-up does not
/// all land on the new set and a scale-down does not take the new set's pods first.
/// `status_replicas` stands in for a set's `max_before` when it has none.
pub(crate) fn proportional_sizes(replicas: i32, surge: i32, status_replicas: i32, sets: &[Share]) -> Vec<i32> {
    let mut sizes: Vec<i32> = sets.iter().map(|s| s.replicas).collect();
    let allowed = if replicas > 0 { replicas + surge } else { 0 };
    let to_add = allowed - sizes.iter().sum::<i32>();
    if to_add == 0 || sets.is_empty() {
        return sizes;
    }
    // Largest first; among equals the newer first when growing, the older first when shrinking.
    let mut order: Vec<usize> = (0..sets.len()).collect();
    order.sort_by(|&a, &b| {
        let by_age =
            if to_add > 0 { sets[b].created.cmp(&sets[a].created) } else { sets[a].created.cmp(&sets[b].created) };
        sets[b].replicas.cmp(&sets[a].replicas).then(by_age)
    });
    let mut added = 0;
    for &i in &order {
        let set = sets[i];
        if set.replicas == 0 || added == to_add {
            continue;
        }
        let fraction = if replicas == 0 {
            -set.replicas
        } else {
            let before = set.max_before.filter(|m| *m > 0).unwrap_or(status_replicas);
            if before <= 0 {
                0
            } else {
                (f64::from(set.replicas) * f64::from(replicas + surge) / f64::from(before)).round() as i32
                    - set.replicas
            }
        };
        let left = to_add - added;
        let proportion = if to_add > 0 { fraction.min(left) } else { fraction.max(left) };
        sizes[i] += proportion;
        added += proportion;
    }
    let largest = order[0];
    sizes[largest] = (sizes[largest] + to_add - added).max(0);
    sizes
}

/// Upstream's `ComputeHash`: FNV-32a over the template (and the collision count), spelled in
/// the consonants and digits `SafeEncodeString` uses so it never forms a word.
pub(crate) fn template_hash(template: &PodTemplateSpec, collisions: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(n) = collisions {
        bytes.extend_from_slice(&n.to_le_bytes());
    }
    let hash = bytes.iter().fold(0x811c9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x01000193));
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string().bytes().map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char).collect()
}

/// Whether two templates are the same but for the hash label (upstream's `EqualIgnoreHash`).
pub(crate) fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(HASH_LABEL);
        }
        t
    };
    strip(a) == strip(b)
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations().get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn desired_replicas(rs: &ReplicaSet) -> Option<i32> {
    rs.annotations().get(DESIRED_REPLICAS).and_then(|r| r.parse().ok())
}

/// Whether `replicas` changed since the active ReplicaSets were last sized (upstream's
/// `isScalingEvent`): then they are resized, and the rollout goes on next time.
fn is_scaling_event(d: &Deployment, new: Option<&Arc<ReplicaSet>>, old: &[Arc<ReplicaSet>]) -> bool {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    new.into_iter()
        .chain(old)
        .filter(|rs| spec_replicas(rs) > 0)
        .any(|rs| desired_replicas(rs).is_some_and(|desired| desired != replicas))
}

fn sizes(rs: &ReplicaSet) -> Sizes {
    Sizes { replicas: spec_replicas(rs), available: rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0) }
}

/// The new ReplicaSet has all the replicas, sized for them and all available (upstream's
/// `IsSaturated`).
fn is_saturated(d: &Deployment, rs: &ReplicaSet) -> bool {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    spec_replicas(rs) == replicas && desired_replicas(rs) == Some(replicas) && sizes(rs).available == replicas
}

struct DeploymentController {
    context: Context,
}

impl Reconciler for DeploymentController {
    const NAME: &'static str = "deployment";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Next, Error> {
        let Some(d) = self.context.deployments.get(key) else { return Ok(Next::Done) };
        if d.meta().deletion_timestamp.is_some() {
            return Ok(Next::Done);
        }
        let namespace = key.namespace.clone().unwrap_or_default();
        let selector = selector(&d)?;
        if selector.is_empty() {
            let message = "This deployment is selecting all pods. A non-empty selector is required.".into();
            self.context.events.object(&*d, EventType::Warning, "SelectingAll", message);
            return Ok(Next::Done);
        }
        let rs_api: Api<ReplicaSet> = Api::namespaced(self.context.client.clone(), &namespace);
        let mut step = Step { controller: self, d: &d, api: &rs_api, written: 0 };
        let sets = step.claim(&selector).await?;
        let spec = d.spec.clone().unwrap_or_default();
        let paused = spec.paused.unwrap_or(false);
        let (mut new, mut old): (Vec<_>, Vec<_>) = sets.into_iter().partition(|rs| {
            rs.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| same_template(t, &spec.template))
        });
        new.sort_by_key(|rs| rs.creation_timestamp().map(|t| t.0));
        // Two with the same template (should not happen): the oldest is the new one.
        old.extend(new.drain(1.min(new.len())..));
        old.sort_by_key(|rs| (revision(rs), rs.creation_timestamp().map(|t| t.0)));
        let new = new.pop();
        let scaling = is_scaling_event(&d, new.as_ref(), &old);
        let mut created = None;
        let new = match new {
            Some(rs) => Some(step.keep_new_current(rs, &old).await?),
            None if !paused && !scaling => {
                let rs = step.create_new(&old).await?;
                created = Some(rs.name_any());
                Some(Arc::new(rs))
            }
            None => None,
        };
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        if paused || scaling {
            step.resize(new.as_ref(), &old).await?;
        } else if let Some(new) = &new {
            if recreate {
                step.recreate(new, &old).await?;
            } else {
                step.roll(new, &old).await?;
            }
        }
        if step.written > 0 && !self.context.replicasets.observed(step.written, OBSERVE_TIMEOUT).await {
            return Err(Error::Lagging);
        }
        // Decide the status on what the caches now show.
        let uid = d.uid().unwrap_or_default();
        let sets: Vec<Arc<ReplicaSet>> = self.context.replicasets.controlled_by(&uid);
        let new_name = new.as_ref().map(|rs| rs.name_any());
        let new = sets.iter().find(|rs| Some(rs.name_any()) == new_name).cloned();
        let old: Vec<_> = sets.iter().filter(|rs| Some(rs.name_any()) != new_name).cloned().collect();
        let complete = is_complete(&d, new.as_deref(), &old);
        if complete {
            step.clean_up(&old).await?;
        }
        self.write_status(&d, new.as_deref(), &old, created.as_deref()).await
    }
}

/// The controller's writes for one reconcile, with the newest revision written.
struct Step<'a> {
    controller: &'a DeploymentController,
    d: &'a Deployment,
    api: &'a Api<ReplicaSet>,
    written: u64,
}

impl Step<'_> {
    fn wrote<K: Resource>(&mut self, object: &K) {
        self.written = self.written.max(resource_version(object));
    }

    fn event(&self, kind: EventType, reason: &str, message: String) {
        self.controller.context.events.object(self.d, kind, reason, message);
    }

    /// The ReplicaSets this Deployment owns, adopting orphans its selector matches.
    async fn claim(&mut self, selector: &LabelSelector) -> Result<Vec<Arc<ReplicaSet>>, Error> {
        let uid = self.d.uid().unwrap_or_default();
        let namespace = self.d.namespace().unwrap_or_default();
        let mut owned = Vec::new();
        for rs in self.controller.context.replicasets.in_namespace(&namespace) {
            match controller_of(&*rs) {
                Some(owner) if owner.uid == uid => owned.push(rs),
                None if selector.matches(rs.labels()) && rs.meta().deletion_timestamp.is_none() => {
                    let mut references = rs.metadata.owner_references.clone().unwrap_or_default();
                    references.push(controller_reference(self.d));
                    let patch = json!({"metadata": {"ownerReferences": references, "resourceVersion": rs.metadata.resource_version}});
                    let adopted =
                        self.api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
                    self.wrote(&adopted);
                    owned.push(Arc::new(adopted));
                }
                _ => {}
            }
        }
        Ok(owned)
    }

    /// Keeps the new ReplicaSet's revision the newest (a rollback makes an old template new
    /// again) and its replica annotations current.
    async fn keep_new_current(
        &mut self,
        rs: Arc<ReplicaSet>,
        old: &[Arc<ReplicaSet>],
    ) -> Result<Arc<ReplicaSet>, Error> {
        let max_old = old.iter().map(|rs| revision(rs)).max().unwrap_or(0);
        let mut annotations = BTreeMap::new();
        let current = revision(&rs);
        if current <= max_old {
            annotations.insert(REVISION.to_string(), (max_old + 1).to_string());
            let mut history: Vec<String> = rs
                .annotations()
                .get(REVISION_HISTORY)
                .map(|h| h.split(',').map(String::from).collect())
                .unwrap_or_default();
            if current > 0 {
                history.push(current.to_string());
                annotations.insert(REVISION_HISTORY.to_string(), history.join(","));
            }
        }
        // Annotations the user put on the Deployment (a change cause) follow to its new set.
        for (key, value) in copied_annotations(self.d) {
            if rs.annotations().get(&key) != Some(&value) {
                annotations.insert(key, value);
            }
        }
        // Its replica annotations change only with its size (`scale`): they are how a change of
        // `replicas` is told from a rollout.
        let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        let min_ready_current = rs.spec.as_ref().and_then(|s| s.min_ready_seconds) == min_ready;
        let rs = if annotations.is_empty() && min_ready_current {
            rs
        } else {
            let patch = json!({"metadata": {"annotations": annotations}, "spec": {"minReadySeconds": min_ready}});
            let updated = self.api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            self.wrote(&updated);
            Arc::new(updated)
        };
        self.set_deployment_revision(revision(&rs)).await?;
        Ok(rs)
    }

    fn replica_annotations(&self) -> [(String, String); 2] {
        let replicas = self.d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let (surge, _) = surge_and_unavailable(self.d);
        [(DESIRED_REPLICAS.into(), replicas.to_string()), (MAX_REPLICAS.into(), (replicas + surge).to_string())]
    }

    async fn set_deployment_revision(&mut self, revision: i64) -> Result<(), Error> {
        let value = revision.to_string();
        if self.d.annotations().get(REVISION) == Some(&value) {
            return Ok(());
        }
        let api: Api<Deployment> =
            Api::namespaced(self.controller.context.client.clone(), &self.d.namespace().unwrap_or_default());
        let patch = json!({"metadata": {"annotations": {REVISION: value}}});
        api.patch(&self.d.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }

    /// Creates the ReplicaSet for the Deployment's current template, sized for the first step.
    async fn create_new(&mut self, old: &[Arc<ReplicaSet>]) -> Result<ReplicaSet, Error> {
        let spec = self.d.spec.clone().unwrap_or_default();
        let collisions = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collisions);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector.match_labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
        let revision = old.iter().map(|rs| revision(rs)).max().unwrap_or(0) + 1;
        let mut annotations: BTreeMap<String, String> = copied_annotations(self.d).into_iter().collect();
        annotations.extend(self.replica_annotations());
        annotations.insert(REVISION.into(), revision.to_string());
        let replicas = spec.replicas.unwrap_or(1);
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let old_active = old.iter().any(|rs| spec_replicas(rs) > 0);
        let size = if recreate {
            if old_active { 0 } else { replicas }
        } else {
            let (surge, _) = surge_and_unavailable(self.d);
            new_replicas(replicas, surge, 0, old.iter().map(|rs| spec_replicas(rs)).sum())
        };
        let name = format!("{}-{hash}", self.d.name_any());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.d.namespace(),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                annotations: Some(annotations),
                owner_references: Some(vec![controller_reference(self.d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(size),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let created = match self.api.create(&PostParams::default(), &rs).await {
            Ok(created) => created,
            Err(kube::Error::Api(err)) if err.code == 409 => {
                // A ReplicaSet of that name with another template: a hash collision. Count it
                // so that the next attempt hashes differently.
                let count = collisions.unwrap_or(0) + 1;
                let api: Api<Deployment> =
                    Api::namespaced(self.controller.context.client.clone(), &self.d.namespace().unwrap_or_default());
                let patch = json!({"status": {"collisionCount": count}});
                api.patch_status(&self.d.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
                return Err(Error::Invalid(format!("replica set {name} exists with another template")));
            }
            Err(err) => return Err(err.into()),
        };
        self.wrote(&created);
        if size > 0 {
            self.event(
                EventType::Normal,
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} from 0 to {size}"),
            );
        }
        self.set_deployment_revision(revision).await?;
        Ok(created)
    }

    async fn scale(&mut self, rs: &ReplicaSet, size: i32) -> Result<(), Error> {
        let current = spec_replicas(rs);
        let annotations: BTreeMap<String, String> = self.replica_annotations().into_iter().collect();
        let annotations_current = annotations.iter().all(|(k, v)| rs.annotations().get(k) == Some(v));
        if current == size && annotations_current {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": annotations}, "spec": {"replicas": size}});
        let scaled = self.api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        self.wrote(&scaled);
        if current != size {
            let direction = if size > current { "up" } else { "down" };
            let message = format!("Scaled {direction} replica set {} from {current} to {size}", rs.name_any());
            self.event(EventType::Normal, "ScalingReplicaSet", message);
        }
        Ok(())
    }

    async fn roll(&mut self, new: &ReplicaSet, old: &[Arc<ReplicaSet>]) -> Result<(), Error> {
        let replicas = self.d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let (surge, unavailable) = surge_and_unavailable(self.d);
        let total: i32 = spec_replicas(new) + old.iter().map(|rs| spec_replicas(rs)).sum::<i32>();
        let target = new_replicas(replicas, surge, spec_replicas(new), total);
        self.scale(new, target).await?;
        let new_sizes = Sizes { replicas: target, available: sizes(new).available };
        let old_sizes: Vec<Sizes> = old.iter().map(|rs| sizes(rs)).collect();
        let targets = old_scale_down(replicas, unavailable, new_sizes, &old_sizes);
        for (rs, size) in old.iter().zip(targets) {
            if size != spec_replicas(rs) {
                self.scale(rs, size).await?;
            }
        }
        Ok(())
    }

    /// Recreate: every old pod goes before any new one starts.
    async fn recreate(&mut self, new: &ReplicaSet, old: &[Arc<ReplicaSet>]) -> Result<(), Error> {
        let mut waiting = false;
        for rs in old {
            if spec_replicas(rs) > 0 {
                self.scale(rs, 0).await?;
                waiting = true;
            }
        }
        let old_pods =
            old.iter().any(|rs| !self.controller.context.pods.owned_by(&rs.uid().unwrap_or_default()).is_empty());
        if waiting || old_pods {
            return Ok(());
        }
        let replicas = self.d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        self.scale(new, replicas).await
    }

    /// Sizes the ReplicaSets to `replicas` without rolling, while paused or when `replicas`
    /// changed (upstream's `scale`): one active set (or, with none, the newest) takes them all;
    /// a new set already at full size means the old ones go; otherwise a rolling Deployment's
    /// active sets share the change in proportion ([`proportional_sizes`]).
    async fn resize(&mut self, new: Option<&Arc<ReplicaSet>>, old: &[Arc<ReplicaSet>]) -> Result<(), Error> {
        let replicas = self.d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let created = |rs: &ReplicaSet| rs.creation_timestamp().map(|t| t.0);
        let active: Vec<&Arc<ReplicaSet>> = new.into_iter().chain(old).filter(|rs| spec_replicas(rs) > 0).collect();
        match active.as_slice() {
            [] => {
                let newest = new.or_else(|| old.iter().max_by_key(|rs| created(rs)));
                return match newest {
                    Some(rs) => self.scale(rs, replicas).await,
                    None => Ok(()),
                };
            }
            [only] => return self.scale(only, replicas).await,
            _ => {}
        }
        if new.is_some_and(|rs| is_saturated(self.d, rs)) {
            for rs in old.iter().filter(|rs| spec_replicas(rs) > 0) {
                self.scale(rs, 0).await?;
            }
            return Ok(());
        }
        let spec = self.d.spec.as_ref();
        if spec.and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref()) == Some("Recreate") {
            return Ok(());
        }
        let (surge, _) = surge_and_unavailable(self.d);
        let shares: Vec<Share> = active
            .iter()
            .map(|rs| Share {
                replicas: spec_replicas(rs),
                max_before: rs.annotations().get(MAX_REPLICAS).and_then(|m| m.parse().ok()),
                created: created(rs),
            })
            .collect();
        let status_replicas = self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let sizes = proportional_sizes(replicas, surge, status_replicas, &shares);
        for (rs, size) in active.into_iter().zip(sizes) {
            self.scale(rs, size).await?;
        }
        Ok(())
    }

    /// Deletes the oldest empty ReplicaSets beyond `revisionHistoryLimit`.
    async fn clean_up(&mut self, old: &[Arc<ReplicaSet>]) -> Result<(), Error> {
        let limit = self.d.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0) as usize;
        let mut empty: Vec<&Arc<ReplicaSet>> = old
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && rs.status.as_ref().is_none_or(|s| s.replicas == 0)
                    && rs.meta().deletion_timestamp.is_none()
            })
            .collect();
        if empty.len() <= limit {
            return Ok(());
        }
        empty.sort_by_key(|rs| revision(rs));
        for rs in &empty[..empty.len() - limit] {
            unless_gone(self.api.delete(&rs.name_any(), &DeleteParams::background()).await)?;
        }
        Ok(())
    }
}

/// The Deployment's annotations its ReplicaSets carry too (not the ones about replicas and
/// revisions, nor kubectl's last-applied copy).
fn copied_annotations(d: &Deployment) -> Vec<(String, String)> {
    d.annotations()
        .iter()
        .filter(|(k, _)| {
            ![REVISION, REVISION_HISTORY, DESIRED_REPLICAS, MAX_REPLICAS, LAST_APPLIED].contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn is_complete(d: &Deployment, new: Option<&ReplicaSet>, old: &[Arc<ReplicaSet>]) -> bool {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(new) = new else { return false };
    let status = new.status.clone().unwrap_or_default();
    spec_replicas(new) == replicas
        && status.replicas == replicas
        && status.available_replicas.unwrap_or(0) == replicas
        && old.iter().all(|rs| rs.status.as_ref().is_none_or(|s| s.replicas == 0) && spec_replicas(rs) == 0)
}

fn condition(kind: &str, status: &str, reason: &str, message: String, now: &Time) -> DeploymentCondition {
    DeploymentCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// Sets `new` among `conditions` as upstream's `SetDeploymentCondition`: the same status and
/// reason change nothing, unless `refresh` (progress seen) asks for a new `lastUpdateTime`;
/// the transition time moves only when the status does.
fn set_condition(conditions: &mut Vec<DeploymentCondition>, mut new: DeploymentCondition, refresh: bool) {
    if let Some(current) = conditions.iter().find(|c| c.type_ == new.type_) {
        if current.status == new.status && current.reason == new.reason && !refresh {
            return;
        }
        if current.status == new.status {
            new.last_transition_time = current.last_transition_time.clone();
        }
    }
    conditions.retain(|c| c.type_ != new.type_);
    conditions.push(new);
}

impl DeploymentController {
    async fn write_status(
        &self,
        d: &Deployment,
        new: Option<&ReplicaSet>,
        old: &[Arc<ReplicaSet>],
        created: Option<&str>,
    ) -> Result<Next, Error> {
        let spec = d.spec.clone().unwrap_or_default();
        let previous = d.status.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1);
        let all: Vec<&ReplicaSet> = new.into_iter().chain(old.iter().map(|rs| &**rs)).collect();
        let sum = |f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32| -> i32 {
            all.iter().filter_map(|rs| rs.status.as_ref()).map(f).sum()
        };
        let total = sum(|s| s.replicas);
        let ready = sum(|s| s.ready_replicas.unwrap_or(0));
        let available = sum(|s| s.available_replicas.unwrap_or(0));
        let updated = new.and_then(|rs| rs.status.as_ref()).map_or(0, |s| s.replicas);
        let (_, max_unavailable) = surge_and_unavailable(d);
        let now = Time(jiff::Timestamp::now());
        let mut conditions = previous.conditions.clone().unwrap_or_default();
        let new_name = new.map(|rs| rs.name_any()).unwrap_or_default();
        let mut next = Next::Done;

        if available >= replicas - max_unavailable {
            let message = "Deployment has minimum availability.".into();
            set_condition(
                &mut conditions,
                condition("Available", "True", "MinimumReplicasAvailable", message, &now),
                false,
            );
        } else {
            let message = "Deployment does not have minimum availability.".into();
            set_condition(
                &mut conditions,
                condition("Available", "False", "MinimumReplicasUnavailable", message, &now),
                false,
            );
        }
        let progressing = conditions.iter().find(|c| c.type_ == "Progressing").cloned();
        let was_paused = progressing.as_ref().is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused"));
        let deadline =
            spec.progress_deadline_seconds.filter(|s| *s > 0 && *s < i32::MAX).map(|s| Duration::from_secs(s as u64));
        let complete = is_complete(d, new, old);
        if spec.paused.unwrap_or(false) {
            if !was_paused {
                let c = condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), &now);
                set_condition(&mut conditions, c, false);
            }
        } else if was_paused {
            let c = condition("Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed".into(), &now);
            set_condition(&mut conditions, c, false);
        } else if let Some(name) = created {
            let c = condition(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set {name:?}"),
                &now,
            );
            set_condition(&mut conditions, c, false);
        } else if progressing.is_none() && new.is_some() {
            let c = condition(
                "Progressing",
                "True",
                "FoundNewReplicaSet",
                format!("Found new replica set {new_name:?}"),
                &now,
            );
            set_condition(&mut conditions, c, false);
        } else if complete {
            let message = format!("ReplicaSet {new_name:?} has successfully progressed.");
            set_condition(
                &mut conditions,
                condition("Progressing", "True", "NewReplicaSetAvailable", message, &now),
                false,
            );
        } else if updated > previous.updated_replicas.unwrap_or(0)
            || total - updated < previous.replicas.unwrap_or(0) - previous.updated_replicas.unwrap_or(0)
            || ready > previous.ready_replicas.unwrap_or(0)
            || available > previous.available_replicas.unwrap_or(0)
        {
            let message = format!("ReplicaSet {new_name:?} is progressing.");
            set_condition(&mut conditions, condition("Progressing", "True", "ReplicaSetUpdated", message, &now), true);
        } else if let (Some(deadline), Some(current)) = (deadline, &progressing)
            && current.reason.as_deref() != Some("NewReplicaSetAvailable")
            && current.reason.as_deref() != Some("ProgressDeadlineExceeded")
        {
            let since = current.last_update_time.as_ref().map_or(now.0, |t| t.0);
            let waited = now.0.duration_since(since).unsigned_abs();
            if waited >= deadline {
                let message = format!("ReplicaSet {new_name:?} has timed out progressing.");
                let c = condition("Progressing", "False", "ProgressDeadlineExceeded", message, &now);
                set_condition(&mut conditions, c, false);
            } else {
                next = Next::After(deadline - waited + Duration::from_millis(100));
            }
        }
        let status = json!({
            "observedGeneration": d.meta().generation,
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": (replicas - available).max(0),
            "conditions": conditions,
            "collisionCount": previous.collision_count,
        });
        self.context.write_status(d, &self.context.deployments, status).await?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(replicas: i32, surge: serde_json::Value, unavailable: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"replicas": replicas, "selector": {}, "template": {},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}},
        }))
        .unwrap()
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        assert_eq!(surge_and_unavailable(&deployment(10, json!("25%"), json!("25%"))), (3, 2));
        assert_eq!(surge_and_unavailable(&deployment(3, json!(1), json!(0))), (1, 0));
        assert_eq!(surge_and_unavailable(&deployment(3, json!(0), json!(0))), (0, 1));
        assert_eq!(surge_and_unavailable(&deployment(1, json!("25%"), json!("25%"))), (1, 0));
    }

    #[test]
    fn a_rolling_update_steps_within_surge_and_unavailability() {
        // 10 replicas, surge 3, unavailable 2: the new set grows to 3 at first.
        assert_eq!(new_replicas(10, 3, 0, 10), 3);
        // Nothing more while the total is at its ceiling.
        assert_eq!(new_replicas(10, 3, 3, 13), 3);
        // It never passes the goal, and shrinks to it after a scale-down.
        assert_eq!(new_replicas(10, 3, 8, 10), 10);
        assert_eq!(new_replicas(4, 1, 6, 6), 4);
        // Old: 10 available; new: 3 not yet available. Up to 2 old pods may go.
        let old = [Sizes { replicas: 10, available: 10 }];
        assert_eq!(old_scale_down(10, 2, Sizes { replicas: 3, available: 0 }, &old), [8]);
        // Once the new pods are available, old ones go as far as availability allows.
        assert_eq!(old_scale_down(10, 2, Sizes { replicas: 3, available: 3 }, &old), [5]);
        // Unhealthy old pods go first and cost nothing.
        let sick = [Sizes { replicas: 2, available: 0 }, Sizes { replicas: 8, available: 8 }];
        assert_eq!(old_scale_down(10, 2, Sizes { replicas: 3, available: 0 }, &sick), [0, 8]);
        // maxUnavailable 0 with nothing new available: nothing goes.
        assert_eq!(
            old_scale_down(3, 0, Sizes { replicas: 1, available: 0 }, &[Sizes { replicas: 3, available: 3 }]),
            [3]
        );
    }

    /// A ReplicaSet last sized for a Deployment of `max_before` (surge included), created at
    /// `age` seconds after the epoch.
    fn share(replicas: i32, max_before: i32, age: i64) -> Share {
        Share { replicas, max_before: Some(max_before), created: Some(jiff::Timestamp::from_second(age).unwrap()) }
    }

    #[test]
    fn a_change_of_replicas_mid_rollout_is_shared_in_proportion() {
        // Upstream's cases (sync_test.go `TestScale`), maxSurge 0: new set first, then the old.
        // 5 → 10: the new set of 2 and the old of 3 become 4 and 6.
        assert_eq!(proportional_sizes(10, 0, 5, &[share(2, 5, 2), share(3, 5, 1)]), [4, 6]);
        // 5 → 3: 1 and 2.
        assert_eq!(proportional_sizes(3, 0, 5, &[share(2, 5, 2), share(3, 5, 1)]), [1, 2]);
        // 3 → 4 over three sets of 1: the rounding's leftover goes to the newest of the largest.
        assert_eq!(proportional_sizes(4, 0, 3, &[share(1, 3, 3), share(1, 3, 2), share(1, 3, 1)]), [2, 1, 1]);
        // 3 → 2: the oldest of the largest gives one up.
        assert_eq!(proportional_sizes(2, 0, 3, &[share(1, 3, 3), share(1, 3, 2), share(1, 3, 1)]), [1, 1, 0]);
        // To zero: everything goes.
        assert_eq!(proportional_sizes(0, 1, 3, &[share(2, 4, 2), share(2, 4, 1)]), [0, 0]);
        // With a surge of 3 on 10 (13 in all), 10 → 20 (23): 6 + 7 become 11 + 12.
        assert_eq!(proportional_sizes(20, 3, 10, &[share(6, 13, 2), share(7, 13, 1)]), [11, 12]);
        // A set without the annotation is sized against the Deployment's status.
        let bare = Share { max_before: None, ..share(2, 0, 2) };
        assert_eq!(proportional_sizes(10, 0, 5, &[bare, share(3, 5, 1)]), [4, 6]);
        // Already at the allowed size: nothing changes.
        assert_eq!(proportional_sizes(4, 1, 4, &[share(2, 5, 2), share(3, 5, 1)]), [2, 3]);
    }

    #[test]
    fn templates_are_the_same_but_for_the_hash_label() {
        let template = |hash: Option<&str>, image: &str| -> PodTemplateSpec {
            let mut labels = json!({"app": "web"});
            if let Some(hash) = hash {
                labels[HASH_LABEL] = json!(hash);
            }
            serde_json::from_value(
                json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": image}]}}),
            )
            .unwrap()
        };
        assert!(same_template(&template(None, "a"), &template(Some("abc"), "a")));
        assert!(!same_template(&template(None, "a"), &template(None, "b")));
        let hash = template_hash(&template(None, "a"), None);
        assert_eq!(hash, template_hash(&template(None, "a"), None));
        assert_ne!(hash, template_hash(&template(None, "a"), Some(1)));
        assert!(hash.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)), "{hash}");
    }
}
