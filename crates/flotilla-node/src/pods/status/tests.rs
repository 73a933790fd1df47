use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
        "spec": spec,
    }))
    .unwrap()
}

fn ended(code: i32) -> Terminated {
    let now = Timestamp::now();
    Terminated {
        exit_code: code,
        reason: if code == 0 { "Completed" } else { "Error" }.into(),
        message: None,
        started_at: now,
        finished_at: now,
        container_id: "wasm://abc".into(),
    }
}

fn record(name: &str, run: Run) -> ContainerRecord {
    let mut record = ContainerRecord::new(name, "hello", "ContainerCreating");
    record.run = run;
    record
}

fn render_with(pod: &Pod, policy: RestartPolicy, init: &[ContainerRecord], main: &[ContainerRecord]) -> PodStatus {
    render(&StatusInput {
        pod,
        restart_policy: policy,
        init,
        main,
        stop: None,
        sandbox_ready: true,
        pod_ip: Some("127.44.0.2".into()),
        host_ip: "127.0.0.1",
        start_time: Timestamp::now(),
        now: Timestamp::now(),
    })
}

fn condition<'a>(status: &'a PodStatus, kind: &str) -> &'a PodCondition {
    status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == kind).unwrap()
}

#[test]
fn a_completed_run_to_completion_pod_succeeds() {
    let pod = pod(json!({"containers": [{"name": "app", "image": "hello"}], "restartPolicy": "Never"}));
    let status = render_with(&pod, RestartPolicy::Never, &[], &[record("app", Run::Exited(ended(0)))]);
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let ready = condition(&status, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("PodCompleted")));
    let state = status.container_statuses.unwrap()[0].state.clone().unwrap();
    assert_eq!(state.terminated.unwrap().reason.as_deref(), Some("Completed"));
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
}

#[test]
fn a_crashing_container_waits_in_crash_loop_back_off_and_the_pod_runs() {
    let pod = pod(json!({"containers": [{"name": "app", "image": "hello"}]}));
    let mut crashing = record("app", Run::Exited(ended(134)));
    crashing.restart_count = 2;
    crashing.backoff.next(Instant::now());
    crashing.backoff.next(Instant::now());
    let status = render_with(&pod, RestartPolicy::Always, &[], &[crashing]);
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let container = &status.container_statuses.as_ref().unwrap()[0];
    let waiting = container.state.clone().unwrap().waiting.unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    assert_eq!(waiting.message.as_deref(), Some("back-off 20s restarting failed container=app pod=web_default(u1)"));
    assert_eq!(container.last_state.clone().unwrap().terminated.unwrap().exit_code, 134);
    assert_eq!(container.restart_count, 2);
    let ready = condition(&status, "ContainersReady");
    assert_eq!(ready.message.as_deref(), Some("containers with unready status: [app]"));
    // With `Never` the same exit is final, and the pod fails.
    let status = render_with(&pod, RestartPolicy::Never, &[], &[record("app", Run::Exited(ended(134)))]);
    assert_eq!(status.phase.as_deref(), Some("Failed"));
}

#[test]
fn a_pod_is_pending_while_its_init_containers_run() {
    let pod = pod(json!({
        "initContainers": [{"name": "setup", "image": "hello"}],
        "containers": [{"name": "app", "image": "hello"}],
    }));
    let running = Run::Running { started_at: Timestamp::now(), container_id: "wasm://1".into() };
    let init = [record("setup", running)];
    let main = [record("app", Run::Waiting { reason: "PodInitializing".into(), message: None })];
    let status = render_with(&pod, RestartPolicy::Always, &init, &main);
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let initialized = condition(&status, "Initialized");
    assert_eq!(initialized.reason.as_deref(), Some("ContainersNotInitialized"));
    assert_eq!(initialized.message.as_deref(), Some("containers with incomplete status: [setup]"));
    // A failed init container with `Never` fails the pod.
    let init = [record("setup", Run::Exited(ended(1)))];
    assert_eq!(render_with(&pod, RestartPolicy::Never, &init, &main).phase.as_deref(), Some("Failed"));
}

#[test]
fn a_running_pod_is_ready_and_keeps_its_transition_times() {
    let mut pod = pod(json!({"containers": [{"name": "app", "image": "hello",
        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}]}));
    let mut running = record("app", Run::Running { started_at: Timestamp::now(), container_id: "wasm://1".into() });
    running.started = true;
    running.ready = true;
    let first = render_with(&pod, RestartPolicy::Always, &[], std::slice::from_ref(&running));
    assert_eq!(first.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&first, "Ready").status, "True");
    assert_eq!(first.qos_class.as_deref(), Some("Guaranteed"));
    pod.status = Some(first.clone());
    std::thread::sleep(Duration::from_millis(5));
    let second = render_with(&pod, RestartPolicy::Always, &[], &[running]);
    assert_eq!(condition(&second, "Ready").last_transition_time, condition(&first, "Ready").last_transition_time);
}

#[test]
fn a_pod_past_its_deadline_fails_with_the_reason() {
    let pod = pod(json!({"containers": [{"name": "app", "image": "hello"}], "activeDeadlineSeconds": 1}));
    let main = [record("app", Run::Exited(ended(137)))];
    let status = render(&StatusInput {
        pod: &pod,
        restart_policy: RestartPolicy::Always,
        init: &[],
        main: &main,
        stop: Some(Stop::DeadlineExceeded),
        sandbox_ready: true,
        pod_ip: None,
        host_ip: "127.0.0.1",
        start_time: Timestamp::now(),
        now: Timestamp::now(),
    });
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    // Stopped for good: the container shows its end, not a back-off.
    let state = status.container_statuses.unwrap()[0].state.clone().unwrap();
    assert_eq!(state.terminated.unwrap().exit_code, 137);
}

#[test]
fn qos_classes_and_durations_read_as_upstream_writes_them() {
    let containers = |resources: serde_json::Value| -> Vec<Container> {
        serde_json::from_value(json!([{"name": "a", "resources": resources}])).unwrap()
    };
    assert_eq!(qos_class(containers(json!({})).iter()), "BestEffort");
    assert_eq!(qos_class(containers(json!({"requests": {"memory": "1Mi"}})).iter()), "Burstable");
    assert_eq!(
        qos_class(containers(json!({"limits": {"cpu": "1", "memory": "1Mi"}, "requests": {"cpu": "1000m"}})).iter()),
        "Guaranteed"
    );
}

#[test]
fn a_retried_start_goes_on_showing_why_the_last_attempt_failed() {
    let pod = pod(json!({"containers": [{"name": "app", "image": "absent"}]}));
    let mut retried = record("app", Run::Waiting { reason: "ContainerCreating".into(), message: None });
    retried.failed_to_start("ErrImageNeverPull", "not present".into(), Instant::now());
    retried.begin();
    let status = render_with(&pod, RestartPolicy::Always, &[], &[retried]);
    let waiting = status.container_statuses.unwrap()[0].state.clone().unwrap().waiting.unwrap();
    assert_eq!(
        (waiting.reason.as_deref(), waiting.message.as_deref()),
        (Some("ErrImageNeverPull"), Some("not present"))
    );
    // A first attempt shows that the container is being created.
    let mut first = record("app", Run::Waiting { reason: "ContainerCreating".into(), message: None });
    first.begin();
    let status = render_with(&pod, RestartPolicy::Always, &[], &[first]);
    let waiting = status.container_statuses.unwrap()[0].state.clone().unwrap().waiting.unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
}

#[test]
fn sidecars_count_towards_readiness_but_not_towards_the_phase_once_ended() {
    let pod = pod(json!({
        "restartPolicy": "Never",
        "initContainers": [
            {"name": "proxy", "image": "hello", "restartPolicy": "Always"},
            {"name": "setup", "image": "hello"},
        ],
        "containers": [{"name": "app", "image": "hello"}],
    }));
    let running = |name: &str, started: bool| {
        let mut r = record(name, Run::Running { started_at: Timestamp::now(), container_id: "wasm://1".into() });
        r.sidecar = name == "proxy";
        (r.started, r.ready) = (started, started);
        r
    };
    let initializing = Run::Waiting { reason: "PodInitializing".into(), message: None };
    // A sidecar that has not started yet holds the pod pending and uninitialized.
    let init = [running("proxy", false), record("setup", initializing.clone())];
    let main = [record("app", initializing.clone())];
    let status = render_with(&pod, RestartPolicy::Never, &init, &main);
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let initialized = condition(&status, "Initialized");
    assert_eq!(initialized.message.as_deref(), Some("containers with incomplete status: [proxy setup]"));
    // Started, and the init container completed (it is then ready, as upstream shows it): the
    // pod runs; the sidecar's readiness counts, before the app's.
    let mut proxy = running("proxy", true);
    proxy.ready = false;
    let init = [proxy, record("setup", Run::Exited(ended(0)))];
    let main = [running("app", true)];
    let status = render_with(&pod, RestartPolicy::Never, &init, &main);
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&status, "Initialized").status, "True");
    let statuses = status.init_container_statuses.as_ref().unwrap();
    assert_eq!((statuses[0].ready, statuses[0].started), (false, Some(true)));
    assert_eq!((statuses[1].ready, statuses[1].started), (true, Some(false)));
    let ready = condition(&status, "Ready");
    assert_eq!(ready.message.as_deref(), Some("containers with unready status: [proxy]"));
    // A sidecar that ended restarts whatever the pod's policy: it waits in back-off, and the pod,
    // whose app has run, is initialized and running all the same.
    let mut ended_proxy = record("proxy", Run::Exited(ended(1)));
    ended_proxy.sidecar = true;
    let init = [ended_proxy.clone(), record("setup", Run::Exited(ended(0)))];
    let status = render_with(&pod, RestartPolicy::Never, &init, &main);
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&status, "Initialized").status, "True");
    let proxy = &status.init_container_statuses.as_ref().unwrap()[0];
    assert_eq!(proxy.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("CrashLoopBackOff"));
    // Once the app is done, the sidecar's end is final, and left out of the phase.
    let main = [record("app", Run::Exited(ended(0)))];
    let init = [ended_proxy, record("setup", Run::Exited(ended(0)))];
    let status = render_with(&pod, RestartPolicy::Never, &init, &main);
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let proxy = &status.init_container_statuses.as_ref().unwrap()[0];
    assert_eq!(proxy.state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 1);
    let initialized = condition(&status, "Initialized");
    assert_eq!((initialized.status.as_str(), initialized.reason.as_deref()), ("True", Some("PodCompleted")));
}
