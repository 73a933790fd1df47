//! What controllers ask of pods: whether one counts, is ready or available, which to remove
//! first, and a new one from a template.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use flotilla_client::{EventType, resource_version};
use futures::future::join_all;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};

use crate::{Context, Error, Next, OBSERVE_TIMEOUT};

/// A pod that counts toward its controller's replicas: not finished, not being deleted.
pub(crate) fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// When the pod's Ready condition became true, if it is ready.
pub(crate) fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let condition = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    (condition.status == "True").then(|| condition.last_transition_time.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0))
}

pub(crate) fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready` (upstream's `IsPodAvailable`); otherwise how long until it
/// will be, if it is ready at all.
pub(crate) fn availability(pod: &Pod, min_ready: Duration, now: Timestamp) -> Result<(), Option<Duration>> {
    let since = ready_since(pod).ok_or(None)?;
    if min_ready.is_zero() {
        return Ok(());
    }
    let ready_for = now.duration_since(since).unsigned_abs();
    if ready_for >= min_ready { Ok(()) } else { Err(Some(min_ready - ready_for)) }
}

pub(crate) fn is_available(pod: &Pod, min_ready: Duration, now: Timestamp) -> bool {
    availability(pod, min_ready, now).is_ok()
}

/// When to look again at `pods`' availability: once the first of those Ready but not yet for
/// `min_ready` has been (a work queue keeps one time per key, the earliest).
pub(crate) fn next_available(
    pods: impl IntoIterator<Item = impl AsRef<Pod>>,
    min_ready: Duration,
    now: Timestamp,
) -> Next {
    pods.into_iter().fold(Next::Done, |next, pod| match availability(pod.as_ref(), min_ready, now) {
        Err(Some(wait)) => next.min(Next::After(wait + Duration::from_millis(100))),
        _ => next,
    })
}

/// Which of two pods to delete first when scaling down (upstream's `ActivePods` order):
/// unscheduled before scheduled, pending before unknown before running, not ready before
/// ready, ready for less time first, more restarts first, newer first.
pub(crate) fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let scheduled = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
    let phase_rank = |p: &Pod| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    };
    let restarts = |p: &Pod| -> i32 {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    scheduled(a)
        .cmp(&scheduled(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(is_ready(a).cmp(&is_ready(b)))
        // Ready more recently first: a later `since` sorts earlier.
        .then(ready_since(b).cmp(&ready_since(a)))
        .then(restarts(b).cmp(&restarts(a)))
        .then(created(b).cmp(&created(a)))
}

/// Sorts pods so that the first are the ones to delete.
pub(crate) fn sort_for_deletion(pods: &mut [Arc<Pod>]) {
    pods.sort_by(|a, b| deletion_order(a, b));
}

/// The controller reference an owner puts on what it creates.
pub(crate) fn controller_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A pod from `template`, named `<prefix><random>` by the API server, owned by `owner`.
pub(crate) fn from_template(template: &PodTemplateSpec, namespace: &str, prefix: &str, owner: OwnerReference) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix.into()),
            namespace: Some(namespace.into()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Creating and deleting an owner's pods, as upstream's `PodControl`: each write recorded as an
/// Event on the owner (`SuccessfulCreate`, `FailedDelete`, …), and the revision returned that
/// the caches must reach before they show it.
impl Context {
    /// Creates `pods` in batches of 1, 2, 4, … (upstream's slow start), so that a template that
    /// cannot be created fails once rather than once per pod.
    pub(crate) async fn create_pods<K: Resource<DynamicType = ()>>(
        &self,
        owner: &K,
        api: &Api<Pod>,
        pods: Vec<Pod>,
    ) -> Result<u64, Error> {
        let params = PostParams::default();
        let (mut written, mut batch) = (0, 1);
        let mut pods = pods.into_iter().peekable();
        while pods.peek().is_some() {
            let chunk: Vec<Pod> = pods.by_ref().take(batch).collect();
            for result in join_all(chunk.iter().map(|pod| api.create(&params, pod))).await {
                match result {
                    Ok(created) => {
                        written = written.max(resource_version(&created));
                        let message = format!("Created pod: {}", created.name_any());
                        self.events.object(owner, EventType::Normal, "SuccessfulCreate", message);
                    }
                    Err(err) => {
                        self.events.object(owner, EventType::Warning, "FailedCreate", format!("Error creating: {err}"));
                        if written > 0 {
                            // Let the caches catch up with what did get created before a retry.
                            self.pods.observed(written, OBSERVE_TIMEOUT).await;
                        }
                        return Err(err.into());
                    }
                }
            }
            batch *= 2;
        }
        Ok(written)
    }

    /// Deletes `pods` (gracefully: a pod on a node stays, terminating, until its node is done).
    pub(crate) async fn delete_pods<K: Resource<DynamicType = ()>>(
        &self,
        owner: &K,
        api: &Api<Pod>,
        pods: &[Arc<Pod>],
    ) -> Result<u64, Error> {
        let params = DeleteParams::background();
        let results = join_all(pods.iter().map(|pod| async {
            let name = pod.name_any();
            let result = api.delete(&name, &params).await;
            (name, result)
        }))
        .await;
        let (mut written, mut gone) = (0, false);
        for (name, result) in results {
            match result {
                Ok(either) => {
                    // A pod that stays, terminating, says at which revision; one that went at
                    // once leaves nothing to say it.
                    match either.left() {
                        Some(pod) => written = written.max(resource_version(&pod)),
                        None => gone = true,
                    }
                    self.events.object(owner, EventType::Normal, "SuccessfulDelete", format!("Deleted pod: {name}"));
                }
                Err(kube::Error::Api(err)) if err.code == 404 => {}
                Err(err) => {
                    self.events.object(owner, EventType::Warning, "FailedDelete", format!("Error deleting: {err}"));
                    return Err(err.into());
                }
            }
        }
        if gone {
            written = written.max(crate::current_revision(api).await?);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"nodeName": node, "containers": []},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn unscheduled_pending_and_unready_pods_go_first() {
        let mut pods = vec![
            pod("running-ready", Some("n"), "Running", true),
            pod("running-unready", Some("n"), "Running", false),
            pod("pending", Some("n"), "Pending", false),
            pod("unscheduled", None, "Pending", false),
        ];
        sort_for_deletion(&mut pods);
        let names: Vec<_> = pods.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["unscheduled", "pending", "running-unready", "running-ready"]);
    }

    #[test]
    fn available_once_ready_for_min_ready_seconds() {
        let mut ready: Pod = (*pod("p", Some("n"), "Running", true)).clone();
        let since: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        ready.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(since));
        let later = |s: i64| since + jiff::SignedDuration::from_secs(s);
        assert_eq!(availability(&ready, Duration::from_secs(10), later(4)), Err(Some(Duration::from_secs(6))));
        assert!(is_available(&ready, Duration::from_secs(10), later(10)));
        assert!(is_available(&ready, Duration::ZERO, since));
        assert_eq!(availability(&pod("u", None, "Pending", false), Duration::ZERO, since), Err(None));
    }
}
