//! A pod's status, computed from its containers' records exactly as the kubelet shapes it:
//! container states, the phase (upstream's `getPhase`), the conditions, the QoS class.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::{self, RestartPolicy, is_sidecar};
use super::record::{ContainerRecord, Run, Terminated};
use super::termination;

/// Why a pod is being stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stop {
    /// Its deletion was requested.
    Deleted,
    /// It ran longer than `activeDeadlineSeconds`.
    DeadlineExceeded,
    /// The node cannot run it at all (the kubelet's admission): it fails without starting.
    Rejected { reason: String, message: String },
    /// The node ran short of memory and chose it to free some (the kubelet's eviction manager).
    Evicted { message: String },
}

/// Everything a pod's status is computed from.
#[derive(Debug)]
pub(super) struct StatusInput<'a> {
    pub pod: &'a Pod,
    pub restart_policy: RestartPolicy,
    pub init: &'a [ContainerRecord],
    pub main: &'a [ContainerRecord],
    pub stop: Option<Stop>,
    /// The sandbox exists with its IP and volumes.
    pub sandbox_ready: bool,
    pub pod_ip: Option<String>,
    pub host_ip: &'a str,
    pub start_time: Timestamp,
    pub now: Timestamp,
}

pub(super) const PHASE_PENDING: &str = "Pending";
pub(super) const PHASE_RUNNING: &str = "Running";
pub(super) const PHASE_SUCCEEDED: &str = "Succeeded";
pub(super) const PHASE_FAILED: &str = "Failed";

pub(super) fn is_terminal_phase(phase: Option<&str>) -> bool {
    matches!(phase, Some(PHASE_SUCCEEDED | PHASE_FAILED))
}

pub(super) fn render(input: &StatusInput<'_>) -> PodStatus {
    let spec = input.pod.spec.as_ref();
    let init_specs = spec.and_then(|s| s.init_containers.as_deref()).unwrap_or_default();
    let main_specs = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let stopping = input.stop.is_some();
    // Nothing restarts once the pod stops or its regular containers are done, sidecars included.
    let winding_down = stopping || plan::finished(input.restart_policy, input.init, input.main);
    let container_statuses = |records: &[ContainerRecord], init: bool| -> Vec<ContainerStatus> {
        records.iter().map(|record| container_status(input, record, init, winding_down)).collect()
    };
    let init_statuses = container_statuses(input.init, true);
    let main_statuses = container_statuses(input.main, false);
    let active = input.init.iter().chain(input.main).any(ContainerRecord::is_active);
    let terminal = stopping && !active;
    let mut phase = phase(input.restart_policy, init_specs, &init_statuses, &main_statuses, terminal);
    let previous = input.pod.status.as_ref();
    // A pod never leaves a terminal phase.
    if let Some(old) = previous.and_then(|s| s.phase.as_deref()).filter(|p| is_terminal_phase(Some(p))) {
        phase = old;
    }
    let (mut reason, mut message) = (None, None);
    if input.stop == Some(Stop::DeadlineExceeded) {
        phase = PHASE_FAILED;
        reason = Some("DeadlineExceeded".to_string());
        message = Some("Pod was active on the node longer than the specified deadline".to_string());
    } else if let Some(Stop::Rejected { reason: why, message: what }) = &input.stop {
        phase = PHASE_FAILED;
        reason = Some(why.clone());
        message = Some(what.clone());
    } else if let Some(Stop::Evicted { message: what }) = &input.stop {
        phase = PHASE_FAILED;
        reason = Some("Evicted".to_string());
        message = Some(what.clone());
    } else if previous.and_then(|s| s.phase.as_deref()) == Some(phase) {
        reason = previous.and_then(|s| s.reason.clone());
        message = previous.and_then(|s| s.message.clone());
    }

    let mut conditions = Vec::new();
    let mut condition = |kind: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
        let status = if ok { "True" } else { "False" };
        // A condition keeps the time of its last transition while its status stays.
        let since = previous
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == kind && c.status == status))
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(input.now));
        conditions.push(PodCondition {
            type_: kind.into(),
            status: status.into(),
            reason: reason.map(String::from),
            message,
            last_transition_time: Some(since),
            ..Default::default()
        });
    };
    condition("PodReadyToStartContainers", input.sandbox_ready && !terminal, None, None);
    // A regular init container is done once it has completed (it is then `ready`), a sidecar
    // once it has started. A pod whose regular containers have run was initialized, whatever its
    // sidecars do since.
    let incomplete: Vec<&str> = init_specs
        .iter()
        .zip(&init_statuses)
        .filter(|(spec, s)| if is_sidecar(spec) { s.started != Some(true) } else { !s.ready })
        .map(|(_, s)| s.name.as_str())
        .collect();
    if phase == PHASE_SUCCEEDED {
        condition("Initialized", true, Some("PodCompleted"), None);
    } else if incomplete.is_empty() || any_started(&main_statuses) {
        condition("Initialized", true, None, None);
    } else {
        condition("Initialized", false, Some("ContainersNotInitialized"), Some(listed("incomplete", &incomplete)));
    }
    // Sidecars count towards the pod's readiness, before its regular containers.
    let sidecars = init_specs.iter().zip(&init_statuses).filter(|(spec, _)| is_sidecar(spec)).map(|(_, s)| s);
    let unready: Vec<&str> = sidecars.chain(&main_statuses).filter(|s| !s.ready).map(|s| s.name.as_str()).collect();
    for kind in ["Ready", "ContainersReady"] {
        if phase == PHASE_SUCCEEDED {
            condition(kind, false, Some("PodCompleted"), None);
        } else if unready.is_empty() {
            condition(kind, true, None, None);
        } else {
            condition(kind, false, Some("ContainersNotReady"), Some(listed("unready", &unready)));
        }
    }
    condition("PodScheduled", true, None, None);
    if let Some(Stop::Evicted { message }) = &input.stop {
        condition("DisruptionTarget", true, Some("TerminationByKubelet"), Some(message.clone()));
    }

    PodStatus {
        phase: Some(phase.into()),
        reason,
        message,
        conditions: Some(conditions),
        host_ip: Some(input.host_ip.into()),
        host_ips: Some(vec![HostIP { ip: input.host_ip.into() }]),
        pod_ip: input.pod_ip.clone(),
        pod_ips: input.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: Some(Time(input.start_time)),
        init_container_statuses: (!init_specs.is_empty()).then_some(init_statuses),
        container_statuses: Some(main_statuses),
        qos_class: Some(qos_class(init_specs.iter().chain(main_specs)).into()),
        ..Default::default()
    }
}

/// `containers with unready status: [a b]`, as upstream formats a Go string slice.
fn listed(what: &str, names: &[&str]) -> String {
    format!("containers with {what} status: [{}]", names.join(" "))
}

/// A container's status; `winding_down`, nothing of the pod restarts.
fn container_status(
    input: &StatusInput<'_>,
    record: &ContainerRecord,
    init: bool,
    winding_down: bool,
) -> ContainerStatus {
    // A pod's termination messages share 12 KiB, as the kubelet's status manager cuts them.
    let containers = input.init.len() + input.main.len();
    let terminated = |t: &Terminated| ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: t.exit_code,
            reason: Some(t.reason.clone()),
            message: t.message.as_deref().map(|m| termination::within_share(m, containers).to_string()),
            started_at: Some(Time(t.started_at)),
            finished_at: Some(Time(t.finished_at)),
            container_id: Some(t.container_id.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let waiting = |reason: &str, message: Option<String>| ContainerState {
        waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message }),
        ..Default::default()
    };
    let mut last = record.last.as_ref().map(terminated);
    let mut container_id = None;
    let state = match &record.run {
        Run::Waiting { reason, message } => waiting(reason, message.clone()),
        Run::Starting { shown: Some((reason, message)) } => waiting(reason, message.clone()),
        Run::Starting { shown: None } => waiting("ContainerCreating", None),
        Run::Running { started_at, container_id: id } => {
            container_id = Some(id.clone());
            ContainerState {
                running: Some(ContainerStateRunning { started_at: Some(Time(*started_at)) }),
                ..Default::default()
            }
        }
        Run::Exited(ended) => {
            container_id = Some(ended.container_id.clone());
            let again = if record.sidecar {
                true
            } else if init {
                ended.exit_code != 0 && input.restart_policy.retries_init()
            } else {
                input.restart_policy.restarts(ended.exit_code)
            };
            if again && !winding_down {
                last = Some(terminated(ended));
                let pod = input.pod.metadata.name.as_deref().unwrap_or_default();
                let namespace = input.pod.metadata.namespace.as_deref().unwrap_or_default();
                let uid = input.pod.metadata.uid.as_deref().unwrap_or_default();
                let message = format!(
                    "back-off {} restarting failed container={} pod={pod}_{namespace}({uid})",
                    flotilla_api::go::duration(record.backoff.delay()),
                    record.name
                );
                waiting("CrashLoopBackOff", Some(message))
            } else {
                terminated(ended)
            }
        }
    };
    // A regular init container that has completed is ready, as upstream's prober shows it.
    let completed = init && !record.sidecar && matches!(&record.run, Run::Exited(ended) if ended.exit_code == 0);
    ContainerStatus {
        name: record.name.clone(),
        image: record.image.clone(),
        image_id: record.image_id.clone().unwrap_or_default(),
        container_id,
        ready: completed || (record.ready && record.started && record.is_running()),
        started: Some(record.started && record.is_running()),
        restart_count: record.restart_count,
        state: Some(state),
        last_state: Some(last.unwrap_or_default()),
        ..Default::default()
    }
}

/// Upstream's `getPhase`, over the rendered container statuses. A sidecar that has ended is
/// left out; one running counts as running, and holds the pod pending until it has started.
fn phase(
    policy: RestartPolicy,
    init_specs: &[Container],
    init: &[ContainerStatus],
    main: &[ContainerStatus],
    terminal: bool,
) -> &'static str {
    let (mut pending_init, mut failed_init) = (0, 0);
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for spec in init_specs {
        let Some(status) = init.iter().find(|s| s.name == spec.name) else {
            pending_init += 1;
            continue;
        };
        let state = status.state.clone().unwrap_or_default();
        let last = status.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        if is_sidecar(spec) {
            match (state.running, state.terminated, state.waiting) {
                (Some(_), _, _) => {
                    pending_init += usize::from(status.started != Some(true));
                    running += 1;
                }
                (_, Some(_), _) => {}
                (_, _, Some(_)) if last.is_some() => {}
                _ => pending_init += 1,
            }
            continue;
        }
        match (state.running, state.terminated, state.waiting) {
            (Some(_), _, _) => pending_init += 1,
            (_, Some(t), _) => failed_init += usize::from(t.exit_code != 0),
            (_, _, Some(_)) => match last {
                Some(t) => failed_init += usize::from(t.exit_code != 0),
                None => pending_init += 1,
            },
            _ => pending_init += 1,
        }
    }
    for status in main {
        let state = status.state.clone().unwrap_or_default();
        match (state.running, state.terminated, state.waiting) {
            (Some(_), _, _) => running += 1,
            (_, Some(t), _) => {
                stopped += 1;
                succeeded += usize::from(t.exit_code == 0);
            }
            _ if status.last_state.as_ref().and_then(|s| s.terminated.as_ref()).is_some() => stopped += 1,
            _ => waiting += 1,
        }
    }
    if failed_init > 0 && policy == RestartPolicy::Never {
        return PHASE_FAILED;
    }
    // A pod whose regular containers have run is not pending again while a sidecar restarts.
    if (pending_init > 0 && !any_started(main)) || waiting > 0 {
        return PHASE_PENDING;
    }
    if running > 0 {
        return PHASE_RUNNING;
    }
    if stopped > 0 {
        if terminal {
            return if stopped == succeeded { PHASE_SUCCEEDED } else { PHASE_FAILED };
        }
        return match policy {
            RestartPolicy::Always => PHASE_RUNNING,
            _ if stopped == succeeded => PHASE_SUCCEEDED,
            RestartPolicy::Never => PHASE_FAILED,
            RestartPolicy::OnFailure => PHASE_RUNNING,
        };
    }
    PHASE_PENDING
}

/// Whether any of the pod's regular containers has started (upstream's
/// `HasAnyRegularContainerStarted`): its init containers were done then.
fn any_started(main: &[ContainerStatus]) -> bool {
    main.iter().any(|s| s.state.as_ref().is_some_and(|st| st.running.is_some() || st.terminated.is_some()))
}

/// Upstream's QoS class: Guaranteed when every container limits cpu and memory and requests
/// what it limits, BestEffort when none requests or limits anything, Burstable otherwise.
pub(super) fn qos_class<'a>(containers: impl Iterator<Item = &'a Container> + Clone) -> &'static str {
    let quantity = |c: &'a Container, limits: bool, resource: &str| {
        let resources = c.resources.as_ref()?;
        let map = if limits { resources.limits.as_ref() } else { resources.requests.as_ref() };
        map?.get(resource).map(|q| q.0.clone()).filter(|q| flotilla_api::quantity::parse(q).is_ok_and(|v| v > 0))
    };
    let any = containers
        .clone()
        .any(|c| ["cpu", "memory"].iter().any(|r| quantity(c, true, r).is_some() || quantity(c, false, r).is_some()));
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.into_iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = quantity(c, true, r);
            // A request left out defaults to the limit.
            let request = quantity(c, false, r).or_else(|| limit.clone());
            limit.is_some()
                && flotilla_api::quantity::parse(limit.as_deref().unwrap_or_default()).ok()
                    == flotilla_api::quantity::parse(request.as_deref().unwrap_or_default()).ok()
        })
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

#[cfg(test)]
mod tests;
