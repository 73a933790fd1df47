//! What to do next for a pod: a pure function of its restart policy, whether it is stopping,
//! and its containers' records (the kubelet's `computePodActions`). The worker executes the plan
//! and plans again whenever something changes.

use std::time::Instant;

use super::record::{ContainerRecord, Run};

/// A container of the pod: init containers run one by one before the regular ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Slot {
    Init(usize),
    Main(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub(super) fn parse(policy: Option<&str>) -> RestartPolicy {
        match policy {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a regular container that exited with `code` runs again.
    pub(super) fn restarts(self, code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Never => false,
        }
    }

    /// Whether a failed init container runs again: init containers are retried unless the
    /// policy is `Never`.
    pub(super) fn retries_init(self) -> bool {
        self != RestartPolicy::Never
    }
}

/// The containers of a pod as the plan sees them.
#[derive(Debug)]
pub(super) struct PodView<'a> {
    pub restart_policy: RestartPolicy,
    /// Deleted, past its deadline, or otherwise to be stopped for good.
    pub stopping: bool,
    pub init: &'a [ContainerRecord],
    pub main: &'a [ContainerRecord],
}

/// What to do now, and when to plan again at the latest.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    pub start: Vec<Slot>,
    pub kill: Vec<Slot>,
    /// A back-off or retry ends then: plan again.
    pub wake_at: Option<Instant>,
}

impl Plan {
    fn wake(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |t| t.min(at)));
    }
}

pub(super) fn plan(pod: &PodView<'_>, now: Instant) -> Plan {
    let mut plan = Plan::default();
    if pod.stopping {
        let active = |(i, c): (usize, &ContainerRecord)| c.is_active().then_some(i);
        plan.kill.extend(pod.init.iter().enumerate().filter_map(active).map(Slot::Init));
        plan.kill.extend(pod.main.iter().enumerate().filter_map(active).map(Slot::Main));
        return plan;
    }
    for (i, container) in pod.init.iter().enumerate() {
        match &container.run {
            Run::Exited(ended) if ended.exit_code == 0 => continue,
            Run::Exited(_) if !pod.restart_policy.retries_init() => return plan,
            Run::Running { .. } | Run::Starting { .. } => return plan,
            Run::Exited(_) | Run::Waiting { .. } => {
                start_when_due(&mut plan, Slot::Init(i), container, now);
                return plan;
            }
        }
    }
    // The kubelet starts a pod's containers one at a time, in order, each once the one before
    // it has started and its postStart hook is done (a sidecar proxy that must be up before
    // the app relies on it): one still starting holds back those after it. One waiting out a
    // back-off or a retry delay holds back nothing.
    for (i, container) in pod.main.iter().enumerate() {
        match &container.run {
            Run::Running { .. } => {}
            Run::Starting { .. } => return plan,
            Run::Exited(ended) if !pod.restart_policy.restarts(ended.exit_code) => {}
            Run::Exited(_) | Run::Waiting { .. } => {
                if start_when_due(&mut plan, Slot::Main(i), container, now) {
                    return plan;
                }
            }
        }
    }
    plan
}

/// Starts a container now (`true`), or plans to when its back-off or retry delay is over.
fn start_when_due(plan: &mut Plan, slot: Slot, container: &ContainerRecord, now: Instant) -> bool {
    let due = match (&container.run, container.exited_at) {
        (Run::Exited(_), Some(exited_at)) => container.backoff.remaining(exited_at, now).map(|wait| now + wait),
        _ => container.retry_at.filter(|at| *at > now),
    };
    match due {
        Some(at) => plan.wake(at),
        None => plan.start.push(slot),
    }
    due.is_none()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jiff::Timestamp;

    use super::*;
    use crate::pods::record::Terminated;

    fn exited(name: &str, code: i32, at: Instant) -> ContainerRecord {
        let mut record = ContainerRecord::new(name, "img", "ContainerCreating");
        record.start(Timestamp::now(), "wasm://x".into());
        let now = Timestamp::now();
        record.exit(
            Terminated {
                exit_code: code,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: None,
                started_at: now,
                finished_at: now,
                container_id: "wasm://x".into(),
            },
            at,
        );
        record
    }

    fn running(name: &str) -> ContainerRecord {
        let mut record = ContainerRecord::new(name, "img", "ContainerCreating");
        record.start(Timestamp::now(), "wasm://y".into());
        record
    }

    fn waiting(name: &str) -> ContainerRecord {
        ContainerRecord::new(name, "img", "ContainerCreating")
    }

    fn view<'a>(policy: RestartPolicy, init: &'a [ContainerRecord], main: &'a [ContainerRecord]) -> PodView<'a> {
        PodView { restart_policy: policy, stopping: false, init, main }
    }

    #[test]
    fn init_containers_run_one_at_a_time_before_the_others() {
        let now = Instant::now();
        let init = [exited("a", 0, now), waiting("b")];
        let main = [waiting("app")];
        assert_eq!(plan(&view(RestartPolicy::Always, &init, &main), now).start, [Slot::Init(1)]);
        let init = [exited("a", 0, now), running("b")];
        assert_eq!(plan(&view(RestartPolicy::Always, &init, &main), now), Plan::default());
        let init = [exited("a", 0, now), exited("b", 0, now)];
        assert_eq!(plan(&view(RestartPolicy::Always, &init, &main), now).start, [Slot::Main(0)]);
        // A failed init container is retried unless the policy is Never, which fails the pod.
        let init = [exited("a", 1, now)];
        assert_eq!(plan(&view(RestartPolicy::OnFailure, &init, &main), now).start, [Slot::Init(0)]);
        assert_eq!(plan(&view(RestartPolicy::Never, &init, &main), now), Plan::default());
    }

    #[test]
    fn ended_containers_restart_by_policy_after_their_back_off() {
        let now = Instant::now();
        for (policy, code, restarts) in [
            (RestartPolicy::Always, 0, true),
            (RestartPolicy::Always, 1, true),
            (RestartPolicy::OnFailure, 0, false),
            (RestartPolicy::OnFailure, 1, true),
            (RestartPolicy::Never, 1, false),
        ] {
            let main = [exited("app", code, now)];
            let started = plan(&view(policy, &[], &main), now).start;
            assert_eq!(started == [Slot::Main(0)], restarts, "{policy:?} exit {code}");
        }
        // After one restart the next waits out the back-off.
        let mut main = [exited("app", 1, now)];
        main[0].backoff.next(now);
        let later = now + Duration::from_secs(3);
        let planned = plan(&view(RestartPolicy::Always, &[], &main), later);
        assert_eq!(planned.start, []);
        assert_eq!(planned.wake_at, Some(now + Duration::from_secs(10)));
        assert_eq!(
            plan(&view(RestartPolicy::Always, &[], &main), now + Duration::from_secs(10)).start,
            [Slot::Main(0)]
        );
    }

    #[test]
    fn a_stopping_pod_kills_what_runs_and_starts_nothing() {
        let now = Instant::now();
        let main = [running("a"), waiting("b"), exited("c", 1, now)];
        let mut pod = view(RestartPolicy::Always, &[], &main);
        pod.stopping = true;
        assert_eq!(plan(&pod, now), Plan { start: vec![], kill: vec![Slot::Main(0)], wake_at: None });
    }

    #[test]
    fn containers_start_one_at_a_time_each_once_the_one_before_it_has_started() {
        let now = Instant::now();
        let main = [waiting("proxy"), waiting("app")];
        assert_eq!(plan(&view(RestartPolicy::Always, &[], &main), now).start, [Slot::Main(0)]);
        // Started, its postStart not done yet: the next waits.
        let mut starting = waiting("proxy");
        starting.begin();
        let main = [starting, waiting("app")];
        assert_eq!(plan(&view(RestartPolicy::Always, &[], &main), now), Plan::default());
        let main = [running("proxy"), waiting("app")];
        assert_eq!(plan(&view(RestartPolicy::Always, &[], &main), now).start, [Slot::Main(1)]);
        // One waiting out its back-off holds back nothing.
        let mut main = [exited("proxy", 1, now), waiting("app")];
        main[0].backoff.next(now);
        let planned = plan(&view(RestartPolicy::Always, &[], &main), now + Duration::from_secs(1));
        assert_eq!(planned.start, [Slot::Main(1)]);
        assert_eq!(planned.wake_at, Some(now + Duration::from_secs(10)));
    }

    #[test]
    fn a_failed_start_is_retried_when_its_delay_is_over() {
        let now = Instant::now();
        let mut main = [waiting("app")];
        main[0].retry_at = Some(now + Duration::from_secs(5));
        assert_eq!(plan(&view(RestartPolicy::Always, &[], &main), now).wake_at, main[0].retry_at);
        assert_eq!(plan(&view(RestartPolicy::Always, &[], &main), now + Duration::from_secs(5)).start, [Slot::Main(0)]);
    }
}
