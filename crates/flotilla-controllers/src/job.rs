//! The Job controller: runs pods until `completions` of them succeed, `parallelism` at a time;
//! a job whose pods fail more than `backoffLimit` times, or that runs past
//! `activeDeadlineSeconds`, fails; a finished job goes `ttlSecondsAfterFinished` later. Pods
//! that failed are replaced after upstream's back-off (10 s doubling, at most 6 min).
//!
//! Every pod is counted exactly once, as upstream counts them: a Job's pods carry the
//! `batch.kubernetes.io/job-tracking` finalizer, so a pod that finishes stays until the
//! controller has recorded it — first in `status.uncountedTerminatedPods`, written before the
//! finalizer is taken off, then in `succeeded` or `failed`. A pod deleted before it succeeded
//! counts as failed.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_client::{Change, EventType, ObjectKey, WorkQueue, controller_of};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::pods::{controller_reference, from_template, is_active, is_ready, sort_for_deletion};
use crate::{
    Context, Error, Informers, Next, OBSERVE_TIMEOUT, Reconciler, enqueue_controller, spawn_workers, unless_gone,
};

/// The finalizer that keeps a Job's pod until the Job has counted it.
const TRACKING: &str = "batch.kubernetes.io/job-tracking";
const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(360);

pub(crate) fn start(context: &Context, informers: &mut Informers) -> Vec<JoinHandle<()>> {
    let queue = WorkQueue::named("job", &context.queues);
    let q = queue.clone();
    informers.jobs.on_change(move |change| {
        let (Change::Applied { new: job, .. } | Change::Deleted(job)) = change;
        q.add(ObjectKey::of(&**job));
    });
    enqueue_controller(&mut informers.pods, "Job", &queue);
    let (jobs, pods) = (context.jobs.clone(), context.pods.clone());
    spawn_workers(Arc::new(JobController { context: context.clone() }), queue, 2, async move {
        jobs.synced().await;
        pods.synced().await;
    })
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn finished_condition(job: &Job) -> Option<&JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn is_tracked(pod: &Pod) -> bool {
    pod.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == TRACKING))
}

/// What the Job has counted: for good, and recorded but not yet final (the pods whose
/// finalizer is still being taken off).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) succeeded: i32,
    pub(crate) failed: i32,
    pub(crate) uncounted_succeeded: BTreeSet<String>,
    pub(crate) uncounted_failed: BTreeSet<String>,
}

impl Tally {
    fn of(status: &JobStatus) -> Tally {
        let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        Tally {
            succeeded: status.succeeded.unwrap_or(0),
            failed: status.failed.unwrap_or(0),
            uncounted_succeeded: uncounted.succeeded.unwrap_or_default().into_iter().collect(),
            uncounted_failed: uncounted.failed.unwrap_or_default().into_iter().collect(),
        }
    }

    fn succeeded(&self) -> i32 {
        self.succeeded + self.uncounted_succeeded.len() as i32
    }

    fn failed(&self) -> i32 {
        self.failed + self.uncounted_failed.len() as i32
    }

    /// Its status fields, as a merge patch: an emptied list is taken out.
    fn status(&self) -> serde_json::Value {
        let list = |uids: &BTreeSet<String>| if uids.is_empty() { json!(null) } else { json!(uids) };
        json!({
            "succeeded": self.succeeded,
            "failed": self.failed,
            "uncountedTerminatedPods": {
                "succeeded": list(&self.uncounted_succeeded),
                "failed": list(&self.uncounted_failed),
            },
        })
    }

    /// Counts for good the recorded pods that `released` says are no longer held.
    fn settle(&mut self, released: &HashSet<String>) {
        let (before_succeeded, before_failed) = (self.uncounted_succeeded.len(), self.uncounted_failed.len());
        self.uncounted_succeeded.retain(|uid| !released.contains(uid));
        self.uncounted_failed.retain(|uid| !released.contains(uid));
        self.succeeded += (before_succeeded - self.uncounted_succeeded.len()) as i32;
        self.failed += (before_failed - self.uncounted_failed.len()) as i32;
    }
}

/// Upstream's `trackJobStatusAndRemoveFinalizers` as a pure step: the tally once the Job's pods
/// that finished are recorded — succeeded, or failed (also a pod being deleted, and once the
/// Job itself finished, every pod) — and the pods whose finalizer may go once it is written.
/// Recorded pods that are gone or no longer carry the finalizer count for good.
pub(crate) fn tally(before: &Tally, pods: &[Arc<Pod>], job_finished: bool) -> (Tally, Vec<Arc<Pod>>) {
    let mut after = before.clone();
    let held: HashSet<String> = pods.iter().filter(|p| is_tracked(p)).filter_map(|p| p.metadata.uid.clone()).collect();
    let released: HashSet<String> = after
        .uncounted_succeeded
        .iter()
        .chain(&after.uncounted_failed)
        .filter(|uid| !held.contains(*uid))
        .cloned()
        .collect();
    after.settle(&released);
    let mut release = Vec::new();
    for pod in pods.iter().filter(|p| is_tracked(p)) {
        let Some(uid) = pod.metadata.uid.clone() else { continue };
        let succeeded = match phase(pod) {
            Some("Succeeded") => true,
            Some("Failed") => false,
            _ if pod.metadata.deletion_timestamp.is_some() || job_finished => false,
            _ => continue,
        };
        if !after.uncounted_succeeded.contains(&uid) && !after.uncounted_failed.contains(&uid) {
            if succeeded {
                after.uncounted_succeeded.insert(uid)
            } else {
                after.uncounted_failed.insert(uid)
            };
        }
        release.push(pod.clone());
    }
    (after, release)
}

/// What the job's pods add up to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) active: usize,
    pub(crate) succeeded: i32,
    pub(crate) failed: i32,
}

/// What to do next with a running job.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Complete,
    Fail {
        reason: &'static str,
        message: &'static str,
    },
    /// Run this many pods at once (create or delete to get there).
    Run(usize),
}

/// Upstream's job arithmetic: failure first (back-off limit, deadline), then completion, then
/// how many pods should be running.
pub(crate) fn decide(job: &Job, counts: &Counts, active_for: Option<Duration>) -> Decision {
    let spec = job.spec.clone().unwrap_or_default();
    if counts.failed > spec.backoff_limit.unwrap_or(6) {
        return Decision::Fail {
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit",
        };
    }
    if let (Some(deadline), Some(active_for)) = (spec.active_deadline_seconds, active_for)
        && active_for >= Duration::from_secs(deadline.max(0) as u64)
    {
        return Decision::Fail { reason: "DeadlineExceeded", message: "Job was active longer than specified deadline" };
    }
    let parallelism = spec.parallelism.unwrap_or(1).max(0) as usize;
    match spec.completions {
        Some(completions) if counts.succeeded >= completions => Decision::Complete,
        Some(completions) => Decision::Run(parallelism.min((completions - counts.succeeded).max(0) as usize)),
        // A work queue: done once one succeeded and the rest finished.
        None if counts.succeeded > 0 && counts.active == 0 => Decision::Complete,
        None if counts.succeeded > 0 => Decision::Run(counts.active.min(parallelism)),
        None => Decision::Run(parallelism),
    }
}

struct JobController {
    context: Context,
}

impl Reconciler for JobController {
    const NAME: &'static str = "job";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Next, Error> {
        let namespace = key.namespace.as_deref().unwrap_or("default");
        let pod_api: Api<Pod> = Api::namespaced(self.context.client.clone(), namespace);
        let Some(job) = self.context.jobs.get(key).filter(|j| j.meta().deletion_timestamp.is_none()) else {
            // A Job that is going no longer counts its pods: they are let go.
            let orphans: Vec<Arc<Pod>> = self
                .context
                .pods
                .in_namespace(namespace)
                .into_iter()
                .filter(|p| is_tracked(p) && controller_of(&**p).is_some_and(|o| o.kind == "Job" && o.name == key.name))
                .collect();
            release(&pod_api, &orphans).await?;
            return Ok(Next::Done);
        };
        let jobs: Api<Job> = Api::namespaced(self.context.client.clone(), namespace);
        let now = Timestamp::now();
        let uid = job.uid().unwrap_or_default();
        let pods: Vec<Arc<Pod>> = self.context.pods.controlled_by(&uid);
        let status = job.status.clone().unwrap_or_default();
        let finished = finished_condition(&job);
        let tallied = self.count(&job, &pod_api, &pods, finished.is_some()).await?;
        if let Some(finished) = finished {
            self.context.write_status(&*job, &self.context.jobs, tallied.status()).await?;
            return self.expire(&jobs, &job, finished, now).await;
        }
        let on_failure =
            job.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|s| s.restart_policy.as_deref())
                == Some("OnFailure");
        let mut active: Vec<Arc<Pod>> = pods.iter().filter(|p| is_active(p)).cloned().collect();
        // With `OnFailure` the kubelet restarts a failing container in place; each restart
        // counts as a failure, as upstream counts it.
        let restarts: i32 = if on_failure {
            active
                .iter()
                .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
                .flatten()
                .map(|c| c.restart_count)
                .sum()
        } else {
            0
        };
        let counts =
            Counts { active: active.len(), succeeded: tallied.succeeded(), failed: tallied.failed() + restarts };
        let start = status.start_time.as_ref().map_or(now, |t| t.0);
        let active_for = now.duration_since(start).unsigned_abs();
        let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
        let mut next = Next::Done;
        let mut conditions = status.conditions.clone().unwrap_or_default();
        let mut completion_time = status.completion_time.clone();
        let decision = if suspended { Decision::Run(0) } else { decide(&job, &counts, Some(active_for)) };
        let mut written = 0;
        match decision {
            Decision::Complete => {
                written = written.max(self.context.delete_pods(&*job, &pod_api, &active).await?);
                active.clear();
                let time = Time(now);
                for kind in ["SuccessCriteriaMet", "Complete"] {
                    conditions.push(condition(kind, None, None, &time));
                }
                completion_time = Some(time);
                self.context.events.object(&*job, EventType::Normal, "Completed", "Job completed".into());
            }
            Decision::Fail { reason, message } => {
                written = written.max(self.context.delete_pods(&*job, &pod_api, &active).await?);
                active.clear();
                let time = Time(now);
                for kind in ["FailureTarget", "Failed"] {
                    conditions.push(condition(kind, Some(reason), Some(message), &time));
                }
                self.context.events.object(&*job, EventType::Warning, reason, message.into());
            }
            Decision::Run(wanted) if active.len() > wanted => {
                sort_for_deletion(&mut active);
                let surplus: Vec<_> = active.drain(..active.len() - wanted).collect();
                written = written.max(self.context.delete_pods(&*job, &pod_api, &surplus).await?);
            }
            Decision::Run(wanted) => {
                let missing = wanted - active.len();
                let wait = backoff_left(&pods, counts.failed, now);
                match wait {
                    Some(wait) if missing > 0 => next = Next::After(wait),
                    _ => {
                        let template = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
                        let owner = controller_reference(&*job);
                        let mut pod = from_template(&template, namespace, &format!("{}-", job.name_any()), owner);
                        pod.metadata.finalizers.get_or_insert_with(Vec::new).push(TRACKING.into());
                        written = written.max(self.context.create_pods(&*job, &pod_api, vec![pod; missing]).await?);
                    }
                }
                if let Some(deadline) = job.spec.as_ref().and_then(|s| s.active_deadline_seconds) {
                    let left = Duration::from_secs(deadline.max(0) as u64).saturating_sub(active_for);
                    next = next.min(Next::After(left + Duration::from_millis(100)));
                }
            }
        }
        if written > 0 && !self.context.pods.observed(written, OBSERVE_TIMEOUT).await {
            return Err(Error::Lagging);
        }
        let active_now: Vec<Arc<Pod>> =
            self.context.pods.controlled_by(&uid).into_iter().filter(|p| is_active(p)).collect();
        // Pods deleted just now are counted on the next round, once the caches show them going.
        let mut new_status = tallied.status();
        let fields = json!({
            "active": active_now.len(),
            "ready": active_now.iter().filter(|p| is_ready(p)).count(),
            "startTime": status.start_time.clone().unwrap_or(Time(start)),
            "conditions": conditions,
            "completionTime": completion_time,
        });
        if let (Some(status), serde_json::Value::Object(fields)) = (new_status.as_object_mut(), fields) {
            status.extend(fields);
        }
        if suspended {
            new_status["startTime"] = json!(null);
        }
        self.context.write_status(&*job, &self.context.jobs, new_status).await?;
        Ok(next)
    }
}

fn condition(kind: &str, reason: Option<&str>, message: Option<&str>, now: &Time) -> JobCondition {
    let (reason, message) = match kind {
        "SuccessCriteriaMet" => ("CompletionsReached", "Reached expected number of succeeded pods"),
        "Complete" => ("CompletionsReached", "Reached expected number of succeeded pods"),
        _ => (reason.unwrap_or_default(), message.unwrap_or_default()),
    };
    JobCondition {
        type_: kind.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// How long until a replacement for a failed pod may start: 10 s after the newest failure,
/// doubling with each failure, at most 6 min.
fn backoff_left(pods: &[Arc<Pod>], failures: i32, now: Timestamp) -> Option<Duration> {
    if failures <= 0 {
        return None;
    }
    let last = pods
        .iter()
        .filter(|p| phase(p) == Some("Failed"))
        .filter_map(|p| {
            let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
            statuses
                .iter()
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0))
                .max()
        })
        .max()?;
    let delay = INITIAL_BACKOFF.saturating_mul(1 << (failures - 1).min(10)).min(MAX_BACKOFF);
    let since = now.duration_since(last).unsigned_abs();
    (since < delay).then(|| delay - since)
}

impl JobController {
    /// Records the pods that finished ([`tally`]), writing the record before taking their
    /// finalizers off, and returns the tally with the released pods counted for good.
    async fn count(&self, job: &Job, api: &Api<Pod>, pods: &[Arc<Pod>], finished: bool) -> Result<Tally, Error> {
        let before = Tally::of(&job.status.clone().unwrap_or_default());
        let (mut after, releasing) = tally(&before, pods, finished);
        if after != before {
            self.context.write_status(job, &self.context.jobs, after.status()).await?;
        }
        let released = release(api, &releasing).await?;
        after.settle(&released);
        Ok(after)
    }
    /// A finished job with `ttlSecondsAfterFinished` is deleted (with its pods) once that passed.
    async fn expire(&self, api: &Api<Job>, job: &Job, finished: &JobCondition, now: Timestamp) -> Result<Next, Error> {
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else { return Ok(Next::Done) };
        let at = finished.last_transition_time.as_ref().map_or(now, |t| t.0);
        let waited = now.duration_since(at).unsigned_abs();
        let ttl = Duration::from_secs(ttl.max(0) as u64);
        if waited < ttl {
            return Ok(Next::After(ttl - waited + Duration::from_millis(100)));
        }
        match api.delete(&job.name_any(), &DeleteParams::background()).await {
            Ok(_) => Ok(Next::Done),
            Err(kube::Error::Api(err)) if err.code == 404 => Ok(Next::Done),
            Err(err) => Err(err.into()),
        }
    }
}

/// Takes the tracking finalizer off `pods`; the uids of those no longer held.
async fn release(api: &Api<Pod>, pods: &[Arc<Pod>]) -> Result<HashSet<String>, Error> {
    let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING]}});
    let results = futures::future::join_all(pods.iter().map(|pod| async {
        let result = api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&patch)).await;
        (pod.metadata.uid.clone().unwrap_or_default(), result)
    }))
    .await;
    let mut released = HashSet::new();
    for (uid, result) in results {
        unless_gone(result)?;
        released.insert(uid);
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: serde_json::Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j"}, "spec": spec})).unwrap()
    }

    fn pod(uid: &str, phase: &str, tracked: bool, deleting: bool) -> Arc<Pod> {
        let finalizers = if tracked { json!([TRACKING]) } else { json!(null) };
        let deleted = if deleting { json!("2026-01-01T00:00:00Z") } else { json!(null) };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": uid, "uid": uid, "finalizers": finalizers, "deletionTimestamp": deleted},
                "status": {"phase": phase},
            }))
            .unwrap(),
        )
    }

    fn uids(pods: &[Arc<Pod>]) -> Vec<&str> {
        pods.iter().map(|p| p.metadata.uid.as_deref().unwrap()).collect()
    }

    #[test]
    fn each_finished_pod_is_recorded_then_counted_once() {
        let running = pod("run", "Running", true, false);
        let done = pod("ok", "Succeeded", true, false);
        let crashed = pod("bad", "Failed", true, false);
        let deleted = pod("del", "Running", true, true);
        let (after, release) = tally(&Tally::default(), &[running.clone(), done, crashed, deleted], false);
        assert_eq!((after.succeeded, after.failed), (0, 0), "recorded, not yet counted for good");
        assert_eq!(after.uncounted_succeeded, BTreeSet::from(["ok".to_string()]));
        assert_eq!(after.uncounted_failed, BTreeSet::from(["bad".to_string(), "del".to_string()]));
        assert_eq!((after.succeeded(), after.failed()), (1, 2));
        assert_eq!(uids(&release), ["ok", "bad", "del"]);

        // Once their finalizers are off (or they are gone), they count for good, once: a
        // finished pod without the finalizer is not recorded again.
        let released = [running.clone(), pod("ok", "Succeeded", false, false)];
        let (later, release) = tally(&after, &released, false);
        assert_eq!((later.succeeded, later.failed), (1, 2));
        assert!(later.uncounted_succeeded.is_empty() && later.uncounted_failed.is_empty());
        assert!(release.is_empty());
        let (again, _) = tally(&later, &released, false);
        assert_eq!(again, later);

        // A finished Job lets every pod go, counting the unfinished ones as failed.
        let (last, release) = tally(&later, &[running], true);
        assert_eq!((last.succeeded(), last.failed()), (1, 3));
        assert_eq!(uids(&release), ["run"]);
    }

    #[test]
    fn completions_parallelism_and_limits() {
        let j = job(json!({"completions": 5, "parallelism": 2, "backoffLimit": 1, "template": {}}));
        assert_eq!(decide(&j, &Counts::default(), None), Decision::Run(2));
        assert_eq!(decide(&j, &Counts { active: 1, succeeded: 4, failed: 0 }, None), Decision::Run(1));
        assert_eq!(decide(&j, &Counts { active: 0, succeeded: 5, failed: 1 }, None), Decision::Complete);
        assert!(matches!(
            decide(&j, &Counts { active: 0, succeeded: 0, failed: 2 }, None),
            Decision::Fail { reason: "BackoffLimitExceeded", .. }
        ));
        let deadline = job(json!({"completions": 1, "activeDeadlineSeconds": 5, "template": {}}));
        assert_eq!(decide(&deadline, &Counts::default(), Some(Duration::from_secs(4))), Decision::Run(1));
        assert!(matches!(
            decide(&deadline, &Counts::default(), Some(Duration::from_secs(5))),
            Decision::Fail { reason: "DeadlineExceeded", .. }
        ));
        // A work queue (no completions) finishes when one succeeded and the rest are done.
        let queue = job(json!({"parallelism": 3, "template": {}}));
        assert_eq!(decide(&queue, &Counts::default(), None), Decision::Run(3));
        assert_eq!(decide(&queue, &Counts { active: 2, succeeded: 1, failed: 0 }, None), Decision::Run(2));
        assert_eq!(decide(&queue, &Counts { active: 0, succeeded: 1, failed: 0 }, None), Decision::Complete);
    }
}
