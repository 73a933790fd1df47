//! What to do next for a pod: a pure function of its restart policy, whether it is stopping
//! (and by when), its containers' records and the time (the kubelet's `computePodActions`). The
//! worker executes the plan and plans again whenever something changes.

use std::time::Instant;

use k8s_openapi::api::core::v1::Container;

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

/// Whether an init container is a sidecar: one that restarts always (`restartPolicy: Always`)
/// and runs beside the pod's regular containers once it has started.
pub(super) fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

/// The containers of a pod as the plan sees them.
#[derive(Debug)]
pub(super) struct PodView<'a> {
    pub restart_policy: RestartPolicy,
    /// Deleted, past its deadline, or otherwise to be stopped for good.
    pub stopping: bool,
    /// When a pod winding down (stopping, or [`finished`]) must have stopped: its grace period's
    /// end, once it is known. Sidecars waiting for their turn to stop wait no longer.
    pub stop_by: Option<Instant>,
    pub init: &'a [ContainerRecord],
    pub main: &'a [ContainerRecord],
}

impl PodView<'_> {
    /// Nothing of the pod starts again: it is stopping, or it has [`finished`].
    pub(super) fn winding_down(&self) -> bool {
        self.stopping || finished(self.restart_policy, self.init, self.main)
    }
}

/// What to do now, and when to plan again at the latest.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    pub start: Vec<Slot>,
    pub kill: Vec<Slot>,
    /// Sidecars of a pod winding down that wait for their turn to stop: their `preStop` hooks
    /// run now, as upstream's do, and they are stopped (put in [`kill`](Self::kill)) once their
    /// turn has come.
    pub pre_stop: Vec<Slot>,
    /// A back-off or retry ends then, or the grace period that sidecars wait within: plan again.
    pub wake_at: Option<Instant>,
}

impl Plan {
    fn wake(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |t| t.min(at)));
    }
}

/// Whether the pod's work is over for good, though its sidecars may still run: every regular
/// container has ended and is not to restart, or an init container failed and the policy is
/// `Never` (upstream's `KillPod` when nothing is left to keep or to start). Its sidecars are
/// then stopped: the pod runs until they have, and its phase is then its regular containers'.
pub(super) fn finished(policy: RestartPolicy, init: &[ContainerRecord], main: &[ContainerRecord]) -> bool {
    let failed_init = |c: &ContainerRecord| !c.sidecar && matches!(&c.run, Run::Exited(ended) if ended.exit_code != 0);
    if !policy.retries_init() && init.iter().any(failed_init) {
        return true;
    }
    !main.is_empty() && main.iter().all(|c| matches!(&c.run, Run::Exited(ended) if !policy.restarts(ended.exit_code)))
}

pub(super) fn plan(pod: &PodView<'_>, now: Instant) -> Plan {
    let mut plan = Plan::default();
    if pod.winding_down() {
        stop_in_order(pod, now, &mut plan);
        return plan;
    }
    if !initialize(pod, now, &mut plan) {
        return plan;
    }
    // The kubelet starts a pod's containers one at a time, in order, each once the one before
    // it has started and its postStart hook is done (a proxy that must be up before the app
    // relies on it): one still starting holds back those after it. One waiting out a back-off
    // or a retry delay holds back nothing.
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

/// The init containers' part of the plan (the kubelet's `computeInitContainerActions`, walked
/// forwards): whether the pod is initialized, so that its regular containers may start. Init
/// containers start one at a time, in order: each once the one before it has completed, or,
/// for a sidecar, has started (its `postStart` done and its startup probe passed). A sidecar
/// that has ended restarts, after its back-off, whatever the pod's restart policy; until it has
/// started once, it holds back what follows it.
fn initialize(pod: &PodView<'_>, now: Instant, plan: &mut Plan) -> bool {
    for (i, container) in pod.init.iter().enumerate() {
        // Whether the pod got past this one before: a later container has run.
        let passed = || pod.init[i + 1..].iter().chain(pod.main).any(ContainerRecord::has_run);
        match (&container.run, container.sidecar) {
            (Run::Exited(ended), false) if ended.exit_code == 0 => {}
            (Run::Running { .. }, true) if container.started => {}
            (Run::Running { .. } | Run::Starting { .. }, true) if passed() => {}
            (Run::Running { .. } | Run::Starting { .. }, _) => return false,
            (Run::Exited(_) | Run::Waiting { .. }, sidecar) => {
                start_when_due(plan, Slot::Init(i), container, now);
                if !(sidecar && passed()) {
                    return false;
                }
            }
        }
    }
    true
}

/// Stops a pod winding down in upstream's order (its `terminationOrdering`): its regular
/// containers, and an init container that runs, at once; its sidecars after the regular
/// containers, the last first, each once the regular containers and the sidecars after it have
/// ended, or once the pod's grace period is over, whichever comes first.
fn stop_in_order(pod: &PodView<'_>, now: Instant, plan: &mut Plan) {
    let slots = pod.init.iter().enumerate().map(|(i, c)| (Slot::Init(i), c));
    let slots = slots.chain(pod.main.iter().enumerate().map(|(i, c)| (Slot::Main(i), c)));
    let (sidecars, others): (Vec<_>, Vec<_>) = slots.filter(|(_, c)| c.is_active()).partition(|(_, c)| c.sidecar);
    plan.kill.extend(others.iter().map(|(slot, _)| *slot));
    let overdue = pod.stop_by.is_some_and(|by| now >= by);
    let mut after = others.iter().any(|(slot, _)| matches!(slot, Slot::Main(_)));
    for (slot, _) in sidecars.into_iter().rev() {
        if after && !overdue {
            plan.pre_stop.push(slot);
        } else {
            plan.kill.push(slot);
        }
        after = true;
    }
    if let Some(by) = pod.stop_by.filter(|_| !plan.pre_stop.is_empty()) {
        plan.wake(by);
    }
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
        record.started = true;
        record
    }

    fn waiting(name: &str) -> ContainerRecord {
        ContainerRecord::new(name, "img", "ContainerCreating")
    }

    fn view<'a>(policy: RestartPolicy, init: &'a [ContainerRecord], main: &'a [ContainerRecord]) -> PodView<'a> {
        PodView { restart_policy: policy, stopping: false, stop_by: None, init, main }
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
        assert_eq!(plan(&pod, now), Plan { kill: vec![Slot::Main(0)], ..Plan::default() });
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

    fn sidecar(mut record: ContainerRecord) -> ContainerRecord {
        record.sidecar = true;
        record
    }

    #[test]
    fn a_sidecar_lets_the_next_container_start_once_it_has_started() {
        let now = Instant::now();
        let main = [waiting("app")];
        let init = [sidecar(waiting("proxy")), waiting("setup")];
        assert_eq!(plan(&view(RestartPolicy::Never, &init, &main), now).start, [Slot::Init(0)]);
        // Running, its startup probe not passed yet: the rest wait.
        let mut proxy = sidecar(running("proxy"));
        proxy.started = false;
        let init = [proxy, waiting("setup")];
        assert_eq!(plan(&view(RestartPolicy::Never, &init, &main), now), Plan::default());
        let init = [sidecar(running("proxy")), waiting("setup")];
        assert_eq!(plan(&view(RestartPolicy::Never, &init, &main), now).start, [Slot::Init(1)]);
        let init = [sidecar(running("proxy")), exited("setup", 0, now)];
        assert_eq!(plan(&view(RestartPolicy::Never, &init, &main), now).start, [Slot::Main(0)]);
        // One that ends before it has let anything start holds the rest back until it has.
        let init = [sidecar(exited("proxy", 1, now)), waiting("setup")];
        assert_eq!(plan(&view(RestartPolicy::Never, &init, &main), now).start, [Slot::Init(0)]);
    }

    #[test]
    fn a_sidecar_restarts_after_its_back_off_whatever_the_pod_policy_and_holds_back_nothing() {
        let now = Instant::now();
        let init = [sidecar(exited("proxy", 0, now))];
        let main = [running("app"), waiting("late")];
        let planned = plan(&view(RestartPolicy::Never, &init, &main), now);
        assert_eq!(planned.start, [Slot::Init(0), Slot::Main(1)]);
        let mut init = [sidecar(exited("proxy", 1, now))];
        init[0].backoff.next(now);
        let planned = plan(&view(RestartPolicy::OnFailure, &init, &main), now + Duration::from_secs(1));
        assert_eq!(planned.start, [Slot::Main(1)]);
        assert_eq!(planned.wake_at, Some(now + Duration::from_secs(10)));
        // Restarted, its startup probe pending: the pod's containers go on.
        let mut proxy = sidecar(running("proxy"));
        proxy.started = false;
        let init = [proxy];
        assert_eq!(plan(&view(RestartPolicy::Always, &init, &main), now).start, [Slot::Main(1)]);
    }

    #[test]
    fn sidecars_stop_once_the_regular_containers_are_done_the_last_first() {
        let now = Instant::now();
        let by = now + Duration::from_secs(30);
        let init = [sidecar(running("a")), exited("setup", 0, now), sidecar(running("b"))];
        // A pod that does not restart its containers is done once they have ended.
        let main = [exited("app", 0, now)];
        let mut pod = view(RestartPolicy::Never, &init, &main);
        assert!(pod.winding_down());
        pod.stop_by = Some(by);
        let planned = plan(&pod, now);
        assert_eq!((planned.kill, planned.pre_stop), (vec![Slot::Init(2)], vec![Slot::Init(0)]));
        assert_eq!(planned.wake_at, Some(by));
        // Past the grace period, none waits.
        let planned = plan(&pod, by);
        assert_eq!(planned.kill, [Slot::Init(2), Slot::Init(0)]);
        // One that restarts them is not done.
        assert!(!view(RestartPolicy::Always, &init, &main).winding_down());
        assert!(!view(RestartPolicy::OnFailure, &init, &[exited("app", 1, now)]).winding_down());
        // An init container that fails under Never ends the pod: its sidecars stop.
        let init = [sidecar(running("a")), exited("setup", 1, now)];
        let planned = plan(&view(RestartPolicy::Never, &init, &[waiting("app")]), now);
        assert_eq!((planned.start, planned.kill), (vec![], vec![Slot::Init(0)]));
    }

    #[test]
    fn a_stopping_pod_stops_its_sidecars_after_its_containers() {
        let now = Instant::now();
        let init = [sidecar(running("a")), sidecar(running("b"))];
        let main = [running("app")];
        let mut pod = view(RestartPolicy::Always, &init, &main);
        pod.stopping = true;
        pod.stop_by = Some(now + Duration::from_secs(30));
        let planned = plan(&pod, now);
        assert_eq!(planned.kill, [Slot::Main(0)]);
        assert_eq!(planned.pre_stop, [Slot::Init(1), Slot::Init(0)]);
        assert_eq!(planned.wake_at, pod.stop_by);
        // No stop deadline known yet: they wait all the same, with nothing to wake for.
        pod.stop_by = None;
        assert_eq!(plan(&pod, now).wake_at, None);
        // An init container that runs is stopped beside them, not waited for.
        let init = [sidecar(running("a")), running("setup")];
        let main = [waiting("app")];
        let mut pod = view(RestartPolicy::Always, &init, &main);
        pod.stopping = true;
        assert_eq!(plan(&pod, now).kill, [Slot::Init(1), Slot::Init(0)]);
    }
}
