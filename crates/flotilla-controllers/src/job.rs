//! The Job controller: runs pods until `completions` of them succeed, `parallelism` at a time;
//! a job whose pods fail more than `backoffLimit` times, or that runs past
//! `activeDeadlineSeconds`, fails; a finished job goes `ttlSecondsAfterFinished` later. Pods
//! that failed are replaced after upstream's back-off (10 s doubling, at most 6 min). The
//! counts only grow: a finished pod deleted later still counts.

use std::sync::Arc;
use std::time::Duration;

use flotilla_client::{Change, EventType, ObjectKey, WorkQueue};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::pods::{controller_reference, from_template, is_active, is_ready, sort_for_deletion};
use crate::{Context, Error, Informers, Next, OBSERVE_TIMEOUT, Reconciler, enqueue_controller, spawn_workers};

const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(360);

pub(crate) fn start(context: &Context, informers: &mut Informers) -> Vec<JoinHandle<()>> {
    let queue = WorkQueue::new();
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
        let Some(job) = self.context.jobs.get(key) else { return Ok(Next::Done) };
        if job.meta().deletion_timestamp.is_some() {
            return Ok(Next::Done);
        }
        let namespace = key.namespace.as_deref().unwrap_or("default");
        let jobs: Api<Job> = Api::namespaced(self.context.client.clone(), namespace);
        let now = Timestamp::now();
        if let Some(finished) = finished_condition(&job) {
            return self.expire(&jobs, &job, finished, now).await;
        }
        let uid = job.uid().unwrap_or_default();
        let pods: Vec<Arc<Pod>> = self.context.pods.controlled_by(&uid);
        let status = job.status.clone().unwrap_or_default();
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
        let counts = Counts {
            active: active.len(),
            succeeded: status
                .succeeded
                .unwrap_or(0)
                .max(pods.iter().filter(|p| phase(p) == Some("Succeeded")).count() as i32),
            failed: status
                .failed
                .unwrap_or(0)
                .max(pods.iter().filter(|p| phase(p) == Some("Failed")).count() as i32 + restarts),
        };
        let start = status.start_time.as_ref().map_or(now, |t| t.0);
        let active_for = now.duration_since(start).unsigned_abs();
        let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
        let pod_api: Api<Pod> = Api::namespaced(self.context.client.clone(), namespace);
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
                        let pod = from_template(&template, namespace, &format!("{}-", job.name_any()), owner);
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
        let mut new_status = json!({
            "active": active_now.len(),
            "ready": active_now.iter().filter(|p| is_ready(p)).count(),
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "startTime": status.start_time.clone().unwrap_or(Time(start)),
            "conditions": conditions,
            "completionTime": completion_time,
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: serde_json::Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j"}, "spec": spec})).unwrap()
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
