//! The StatefulSet controller: pods with stable names `<name>-0 … <name>-(N-1)`, created in
//! order and each only once the one before is Running and Ready (`OrderedReady`), or all at once
//! (`Parallel`); scaled down from the highest ordinal; updated one pod at a time from the
//! highest ordinal down to the partition, with `currentRevision`/`updateRevision` as
//! `kubectl rollout status` reads them. Revisions are ControllerRevisions ([`history`]), named as
//! upstream names them, `<set>-<hash>`, which is the pods' `controller-revision-hash`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use flotilla_client::{Change, EventType, ObjectKey, WorkQueue, resource_version};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::daemonset::REVISION_LABEL;
use crate::history;
use crate::pods::{controller_reference, from_template, is_active, is_available, is_ready, next_available};
use crate::{Context, Error, Informers, Next, OBSERVE_TIMEOUT, Reconciler, enqueue_controller, spawn_workers};

const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub(crate) fn start(context: &Context, informers: &mut Informers) -> Vec<JoinHandle<()>> {
    let queue = WorkQueue::named("statefulset", &context.queues);
    let q = queue.clone();
    informers.statefulsets.on_change(move |change| {
        let (Change::Applied { new: sts, .. } | Change::Deleted(sts)) = change;
        q.add(ObjectKey::of(&**sts));
    });
    enqueue_controller(&mut informers.pods, "StatefulSet", &queue);
    enqueue_controller(&mut informers.controllerrevisions, "StatefulSet", &queue);
    let context = context.clone();
    spawn_workers(Arc::new(StatefulSetController { context: context.clone() }), queue, 2, async move {
        context.statefulsets.synced().await;
        context.pods.synced().await;
        context.controllerrevisions.synced().await;
    })
}

/// The ordinal in `<set>-<ordinal>`.
fn ordinal(set: &str, pod: &str) -> Option<usize> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// What to do in one step: at most a few writes, each only when the set is ready for it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Create(usize),
    Delete(usize),
    Wait,
}

/// One pod's state as the plan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) healthy: bool,
    pub(crate) updated: bool,
    pub(crate) terminating: bool,
    pub(crate) failed: bool,
}

/// The next actions for a set of `replicas` with `members` by ordinal (upstream's
/// `updateStatefulSet`): failed pods are replaced, missing ones created (in order unless
/// `parallel`), the surplus removed from the top, then one outdated pod at a time from the
/// top down to `partition` is deleted to come back with the new template.
pub(crate) fn plan(
    replicas: usize,
    members: &BTreeMap<usize, Member>,
    parallel: bool,
    partition: usize,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for ordinal in 0..replicas {
        match members.get(&ordinal) {
            Some(m) if m.failed && !m.terminating => {
                actions.push(Action::Delete(ordinal));
                if !parallel {
                    return actions;
                }
            }
            None => {
                actions.push(Action::Create(ordinal));
                if !parallel {
                    return actions;
                }
            }
            Some(m) if !parallel && (!m.healthy || m.terminating) => return vec![Action::Wait],
            _ => {}
        }
    }
    let surplus: Vec<usize> = members.keys().rev().copied().filter(|o| *o >= replicas).collect();
    for ordinal in surplus {
        let member = members[&ordinal];
        if member.terminating {
            if !parallel {
                return vec![Action::Wait];
            }
            continue;
        }
        actions.push(Action::Delete(ordinal));
        if !parallel {
            return actions;
        }
    }
    if !actions.is_empty() {
        return actions;
    }
    // Rolling update, one pod at a time, only when every pod is healthy.
    if members.values().any(|m| !m.healthy || m.terminating) {
        return vec![Action::Wait];
    }
    match (partition..replicas).rev().find(|o| members.get(o).is_some_and(|m| !m.updated)) {
        Some(ordinal) => vec![Action::Delete(ordinal)],
        None => Vec::new(),
    }
}

struct StatefulSetController {
    context: Context,
}

impl Reconciler for StatefulSetController {
    const NAME: &'static str = "statefulset";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Next, Error> {
        let Some(sts) = self.context.statefulsets.get(key) else { return Ok(Next::Done) };
        if sts.meta().deletion_timestamp.is_some() {
            return Ok(Next::Done);
        }
        let namespace = key.namespace.as_deref().unwrap_or("default");
        let name = sts.name_any();
        let uid = sts.uid().unwrap_or_default();
        let spec = sts.spec.clone().unwrap_or_default();
        let pods = self.owned(&uid, &name);
        // The revisions pods still run, and the one the set is at, stay in the history.
        let previous = sts.status.clone().unwrap_or_default();
        let mut in_use: HashSet<&String> = pods.values().filter_map(|p| p.labels().get(REVISION_LABEL)).collect();
        in_use.extend(previous.current_revision.as_ref());
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let synced = history::sync(&self.context, &*sts, &spec.template, previous.collision_count, limit, |r| {
            in_use.contains(&r.name_any())
        })
        .await?;
        let revision = synced.revision.name_any();
        let min_ready = std::time::Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
        let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
        let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
        let on_delete = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("OnDelete");
        let partition = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0)
            .max(0) as usize;
        let members: BTreeMap<usize, Member> = pods
            .iter()
            .map(|(o, p)| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                (
                    *o,
                    Member {
                        healthy: phase == Some("Running") && is_ready(p),
                        updated: on_delete || p.labels().get(REVISION_LABEL) == Some(&revision),
                        terminating: p.metadata.deletion_timestamp.is_some(),
                        failed: phase == Some("Failed") || phase == Some("Succeeded"),
                    },
                )
            })
            .collect();
        let api: Api<Pod> = Api::namespaced(self.context.client.clone(), namespace);
        let mut written = 0;
        let mut gone = false;
        for action in plan(replicas, &members, parallel, partition) {
            match action {
                Action::Wait => {}
                Action::Create(ordinal) => {
                    let mut template = spec.template.clone();
                    let labels = template
                        .metadata
                        .get_or_insert_with(Default::default)
                        .labels
                        .get_or_insert_with(Default::default);
                    let pod_name = format!("{name}-{ordinal}");
                    labels.insert(REVISION_LABEL.into(), revision.clone());
                    labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
                    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
                    let mut pod = from_template(&template, namespace, "", controller_reference(&*sts));
                    pod.metadata.generate_name = None;
                    pod.metadata.name = Some(pod_name.clone());
                    let pod_spec = pod.spec.get_or_insert_with(Default::default);
                    pod_spec.hostname = Some(pod_name.clone());
                    pod_spec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
                    match api.create(&PostParams::default(), &pod).await {
                        Ok(created) => {
                            written = written.max(resource_version(&created));
                            let message = format!("create Pod {pod_name} in StatefulSet {name} successful");
                            self.context.events.object(&*sts, EventType::Normal, "SuccessfulCreate", message);
                        }
                        // The old pod of that name is still going.
                        Err(kube::Error::Api(err)) if err.code == 409 => {}
                        Err(err) => {
                            let message = format!("create Pod {pod_name} in StatefulSet {name} failed error: {err}");
                            self.context.events.object(&*sts, EventType::Warning, "FailedCreate", message);
                            return Err(err.into());
                        }
                    }
                }
                Action::Delete(ordinal) => {
                    let pod_name = format!("{name}-{ordinal}");
                    match api.delete(&pod_name, &DeleteParams::background()).await {
                        Ok(either) => {
                            match either.left() {
                                Some(pod) => written = written.max(resource_version(&pod)),
                                None => gone = true,
                            }
                            let message = format!("delete Pod {pod_name} in StatefulSet {name} successful");
                            self.context.events.object(&*sts, EventType::Normal, "SuccessfulDelete", message);
                        }
                        Err(kube::Error::Api(err)) if err.code == 404 => {}
                        Err(err) => return Err(err.into()),
                    }
                }
            }
        }
        if gone {
            written = written.max(crate::current_revision(&api).await?);
        }
        if written > 0 && !self.context.pods.observed(written, OBSERVE_TIMEOUT).await {
            return Err(Error::Lagging);
        }

        let now = jiff::Timestamp::now();
        let pods = self.owned(&uid, &name);
        let active: Vec<&Arc<Pod>> = pods.values().filter(|p| is_active(p)).collect();
        let updated = active.iter().filter(|p| p.labels().get(REVISION_LABEL) == Some(&revision)).count();
        // The set is at the update revision once every pod is.
        let current_revision = if updated == replicas && active.len() == replicas {
            revision.clone()
        } else {
            previous.current_revision.clone().unwrap_or_else(|| revision.clone())
        };
        let current = active.iter().filter(|p| p.labels().get(REVISION_LABEL) == Some(&current_revision)).count();
        let status = json!({
            "observedGeneration": sts.meta().generation,
            "replicas": active.len(),
            "readyReplicas": active.iter().filter(|p| is_ready(p)).count(),
            "availableReplicas": active.iter().filter(|p| is_available(p, min_ready, now)).count(),
            "currentReplicas": current,
            "updatedReplicas": updated,
            "currentRevision": current_revision,
            "updateRevision": revision,
            "collisionCount": synced.collisions.unwrap_or(0),
        });
        self.context.write_status(&*sts, &self.context.statefulsets, status).await?;
        Ok(next_available(&active, min_ready, now))
    }
}

impl StatefulSetController {
    /// The set's pods by ordinal.
    fn owned(&self, uid: &str, name: &str) -> BTreeMap<usize, Arc<Pod>> {
        self.context
            .pods
            .controlled_by(uid)
            .into_iter()
            .filter_map(|p| Some((ordinal(name, p.metadata.name.as_deref()?)?, p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTHY: Member = Member { healthy: true, updated: true, terminating: false, failed: false };
    const STARTING: Member = Member { healthy: false, ..HEALTHY };
    const OLD: Member = Member { updated: false, ..HEALTHY };

    fn members(list: &[Member]) -> BTreeMap<usize, Member> {
        list.iter().copied().enumerate().collect()
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_and_scales_down_from_the_top() {
        assert_eq!(plan(3, &members(&[]), false, 0), [Action::Create(0)]);
        assert_eq!(plan(3, &members(&[STARTING]), false, 0), [Action::Wait]);
        assert_eq!(plan(3, &members(&[HEALTHY]), false, 0), [Action::Create(1)]);
        assert_eq!(plan(1, &members(&[HEALTHY, HEALTHY, HEALTHY]), false, 0), [Action::Delete(2)]);
        assert_eq!(plan(3, &members(&[HEALTHY, HEALTHY, HEALTHY]), false, 0), []);
    }

    #[test]
    fn parallel_creates_and_deletes_at_once() {
        assert_eq!(plan(3, &members(&[]), true, 0), [Action::Create(0), Action::Create(1), Action::Create(2)]);
        assert_eq!(plan(1, &members(&[HEALTHY, STARTING, HEALTHY]), true, 0), [Action::Delete(2), Action::Delete(1)]);
    }

    #[test]
    fn updates_go_from_the_top_down_to_the_partition() {
        assert_eq!(plan(3, &members(&[OLD, OLD, OLD]), false, 0), [Action::Delete(2)]);
        assert_eq!(plan(3, &members(&[OLD, OLD, HEALTHY]), false, 0), [Action::Delete(1)]);
        assert_eq!(plan(3, &members(&[OLD, STARTING, HEALTHY]), false, 0), [Action::Wait]);
        assert_eq!(plan(3, &members(&[OLD, HEALTHY, HEALTHY]), false, 1), []);
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-x"), None);
    }
}
