//! A function scaled to zero and back, with the real kubectl and curl: an HPA with
//! `minReplicas: 0` on its Service's `requests_in_flight` (the custom metrics API) takes an idle
//! Deployment to zero; a request to the Service's cluster IP is held by the node while the HPA,
//! woken by the node's `Activating` Event, scales it back to one, and is answered once the pod
//! is ready; a wake-up that cannot succeed answers 503 and leaves an Event. Under `hey`, a
//! function at one replica scales out in a panic (Knative's panic window), long before the
//! HPA's next sync, with every request answered, and back to zero once idle.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use flotilla_examples as examples;

use crate::autoscale::wait;
use crate::harness::{Ports, Server};
use crate::kubectl::Kubectl;
use crate::metrics::{node_api, sample, scrape};
use crate::pods::{apply, import};

const FUNCTION: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: fn
spec:
  replicas: 1
  selector:
    matchLabels: {app: fn}
  template:
    metadata:
      labels: {app: fn}
    spec:
      containers:
      - name: app
        image: handler:v1
        imagePullPolicy: IfNotPresent
        ports:
        - containerPort: 8080
";

/// Zero when idle (its requests averaged over Knative's shortest stable window, 6 s), one
/// replica more per two requests in flight.
pub(crate) const AUTOSCALER: &str = "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: fn
  annotations:
    autoscaling.knative.dev/window: 6s
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: fn}
  minReplicas: 0
  maxReplicas: 3
  metrics:
  - type: Object
    object:
      describedObject: {apiVersion: v1, kind: Service, name: fn}
      metric: {name: requests_in_flight}
      target: {type: AverageValue, averageValue: '2'}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 0}
";

/// The function's Deployment has no replica, no pod, and its Service no endpoint. (A request
/// in the moment between its last pod's end and its slice's change is refused, as upstream's.)
fn at_zero(k: &Kubectl) -> Result<()> {
    wait(k, "deployment/fn", "{.spec.replicas}", 60, |r| r == "0")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !k.ok(&["get", "pods", "-l", "app=fn", "-o", "name"])?.is_empty() {
        ensure!(Instant::now() < deadline, "the function's pods never went");
        std::thread::sleep(Duration::from_millis(200));
    }
    let slices =
        ["get", "endpointslices", "-l", "kubernetes.io/service-name=fn", "-o", "jsonpath={.items[*].endpoints}"];
    while k.ok(&slices)?.contains("addresses") {
        ensure!(Instant::now() < deadline, "the function's Service kept its endpoints");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The node's proxy follows the slice within milliseconds.
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}

/// curl's status code and body for `url`, given `secs` at most.
fn curl(url: &str, secs: u64) -> Result<(String, String)> {
    let out =
        Command::new("curl").args(["-s", "--max-time", &secs.to_string(), "-w", "\n%{http_code}", url]).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = match out.status.code() {
        Some(0) => code.to_string(),
        exit => format!("{code} (curl exit {exit:?})"),
    };
    Ok((code, body.to_string()))
}

/// A server started with `args` and the function running at one replica behind its Service:
/// the Service's cluster IP.
fn serving(dir: &std::path::Path, args: &[&str]) -> Result<(Server, Kubectl, String)> {
    let server = Server::start_with(dir, Ports::free(), args)?;
    import(dir, examples::P2_HANDLER, "handler:v1")?;
    let k = Kubectl::new("1.33", &server)?;
    apply(&k, FUNCTION)?;
    k.ok(&["rollout", "status", "deploy/fn", "--timeout=60s"])?;
    k.ok(&["expose", "deploy", "fn", "--port=80", "--target-port=8080"])?;
    let ip = k.ok(&["get", "svc", "fn", "-o", "jsonpath={.spec.clusterIP}"])?;
    Ok((server, k, ip))
}

#[test]
fn a_function_goes_to_zero_when_idle_and_a_request_brings_it_back() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let args =
        ["--metrics-resolution", "1s", "--horizontal-pod-autoscaler-sync-period", "1s", "--activation-timeout", "15s"];
    let (_server, k, ip) = serving(dir.path(), &args)?;
    let url = format!("http://{ip}/");

    // The custom metrics API: the pods' and the Service's requests in flight.
    let ns = &k.namespace;
    let path = format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/services/fn/requests_in_flight");
    let deadline = Instant::now() + Duration::from_secs(30);
    let value = loop {
        if let Ok(list) = k.ok(&["get", "--raw", &path]) {
            let list: serde_json::Value = serde_json::from_str(&list)?;
            if let Some(item) = list.pointer("/items/0") {
                break item.clone();
            }
        }
        ensure!(Instant::now() < deadline, "no requests_in_flight for the Service");
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(value["describedObject"]["kind"] == "Service" && value["value"] == "0", "{value}");
    let pods = format!(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/requests_per_second?labelSelector=app%3Dfn"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !k.ok(&["get", "--raw", &pods])?.contains("\"kind\":\"Pod\"") {
        ensure!(Instant::now() < deadline, "no requests_per_second for the pods");
        std::thread::sleep(Duration::from_millis(200));
    }
    let missing = k.fails(&["get", "--raw", &path.replace("requests_in_flight", "bananas")])?;
    ensure!(missing.contains("the server could not find the metric bananas for services fn"), "{missing}");
    let groups = k.ok(&["api-versions"])?;
    ensure!(groups.lines().any(|l| l == "custom.metrics.k8s.io/v1beta2"), "{groups}");

    // Idle: to zero.
    apply(&k, AUTOSCALER)?;
    at_zero(&k)?;

    // A request brings it back, and is answered.
    let started = Instant::now();
    let (code, body) = curl(&url, 30)?;
    let woke = started.elapsed();
    ensure!(code == "200" && body.starts_with("hello from fn-"), "{code}: {body} after {woke:?}");
    eprintln!("answered from zero in {woke:?}");
    let reasons = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=Service",
        "-o",
        "jsonpath={.items[*].reason}",
    ])?;
    ensure!(reasons.split(' ').any(|r| r == "Activating"), "{reasons}");
    let said = wait(&k, "events", "{.items[?(@.reason==\"SuccessfulRescale\")].message}", 30, |m| {
        m.contains("New size: 1; reason: Service metric requests_in_flight above target")
    })?;
    ensure!(said.contains("New size: 0; reason: All metrics below target"), "{said}");

    // Back at zero, a burst: every request is held and every one answered.
    at_zero(&k)?;
    let burst: Vec<_> = (0..12)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || curl(&url, 30))
        })
        .collect();
    let mut answered = 0;
    for request in burst {
        let (code, body) = request.join().expect("a curl thread")?;
        ensure!(code == "200" && body.starts_with("hello from fn-"), "{code}: {body}");
        answered += 1;
    }
    ensure!(answered == 12);

    // A function calling it by name from its own pod: the guest's connection is held too.
    at_zero(&k)?;
    let caller = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: caller\nspec:\n  containers:\n  - name: caller\n    image: handler:v1\n    imagePullPolicy: IfNotPresent\n    ports:\n    - containerPort: 8080\n";
    apply(&k, caller)?;
    k.ok(&["wait", "--for=condition=Ready", "pod/caller", "--timeout=60s"])?;
    let caller_ip = k.ok(&["get", "pod", "caller", "-o", "jsonpath={.status.podIP}"])?;
    let (code, body) = curl(&format!("http://{caller_ip}:8080/?call=fn"), 30)?;
    ensure!(code == "200" && body.starts_with("called fn: hello from fn-"), "{code}: {body}");

    // A wake-up that cannot succeed (an image nowhere to be found): 503 that says why, and an
    // Event, after the activation timeout; never a hang.
    at_zero(&k)?;
    k.ok(&["set", "image", "deployment/fn", "app=missing:v1"])?;
    let started = Instant::now();
    let (code, body) = curl(&url, 40)?;
    ensure!(code == "503", "{code}: {body}");
    ensure!(body.contains("has no ready endpoint after 15s"), "{body}");
    ensure!(started.elapsed() < Duration::from_secs(30), "answered after {:?}", started.elapsed());
    wait(&k, "events", "{.items[?(@.reason==\"ActivationFailed\")].message}", 30, |m| {
        m.contains("No endpoint became ready within 15s of a request")
    })?;

    // The node's metrics tell what became of the connections it held: the first, the burst and
    // the guest's passed on; the last timed out.
    let node = crate::pods::node_name(&k)?;
    let text = scrape(dir.path(), &format!("https://{}", node_api(&k, &node)?))?;
    let passed = sample(&text, "flotilla_activator_connections_total{result=\"passed\"}");
    ensure!(passed >= Some(14.0), "{text}");
    ensure!(sample(&text, "flotilla_activator_connections_total{result=\"timed_out\"}") >= Some(1.0), "{text}");
    ensure!(sample(&text, "flotilla_activator_waited_seconds_total ") > Some(0.0), "{text}");
    Ok(())
}

#[test]
fn a_function_answers_the_requests_it_holds_when_its_pod_is_deleted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Ports::free())?;
    import(dir.path(), examples::P2_HANDLER, "handler:v1")?;
    let k = Kubectl::new("1.33", &server)?;
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: slow\nspec:\n  terminationGracePeriodSeconds: 20\n  containers:\n  - name: slow\n    image: handler:v1\n    imagePullPolicy: IfNotPresent\n    ports:\n    - containerPort: 8080\n";
    apply(&k, pod)?;
    k.ok(&["wait", "--for=condition=Ready", "pod/slow", "--timeout=60s"])?;
    let ip = k.ok(&["get", "pod", "slow", "-o", "jsonpath={.status.podIP}"])?;
    let url = format!("http://{ip}:8080/?sleep_ms=3000");
    let slow = std::thread::spawn(move || curl(&url, 20));
    std::thread::sleep(Duration::from_millis(1000));
    let deleted = Instant::now();
    k.ok(&["delete", "pod", "slow", "--wait=false"])?;
    // No new connection is taken once the pod is stopping; the one in flight is answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    while curl(&format!("http://{ip}:8080/"), 1)?.0 == "200" {
        ensure!(Instant::now() < deadline, "the stopping pod still takes new connections");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = slow.join().expect("the curl thread")?;
    ensure!(code == "200" && body.starts_with("hello from slow"), "{code}: {body}");
    // And the pod goes once it has, not at the end of its grace period.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !k.ok(&["get", "pods", "--field-selector=metadata.name=slow", "-o", "name"])?.is_empty() {
        ensure!(Instant::now() < deadline, "the pod stayed after its last request");
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(deleted.elapsed() < Duration::from_secs(15), "gone after {:?}", deleted.elapsed());
    let said = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=slow,reason=Killing",
        "-o",
        "jsonpath={.items[*].message}",
    ])?;
    ensure!(said.contains("Stopping container slow"), "{said}");
    Ok(())
}

#[test]
fn a_function_scales_out_in_a_panic_under_load_and_back_to_zero_when_idle() -> Result<()> {
    // The HPA's sync period is a minute: only its panic window can scale out sooner.
    let dir = tempfile::tempdir()?;
    let args = ["--metrics-resolution", "1s", "--horizontal-pod-autoscaler-sync-period", "60s"];
    let (_server, k, ip) = serving(dir.path(), &args)?;
    // At least one replica while loaded; four at most.
    let autoscaler = AUTOSCALER.replace("minReplicas: 0", "minReplicas: 1").replace("maxReplicas: 3", "maxReplicas: 4");
    apply(&k, &autoscaler)?;
    wait(&k, "hpa/fn", "{.status.currentReplicas}", 30, |r| r == "1")?;
    let created = Instant::now();

    // Eight clients at once, each request 200 ms: eight in flight, four replicas' worth.
    let url = format!("http://{ip}/?sleep_ms=200");
    let hey = std::thread::spawn(move || Command::new("hey").args(["-c", "8", "-z", "12s", "-t", "20", &url]).output());
    // To the four that eight in flight ask for, within the load: the next sync is a minute
    // after the HPA's first evaluation, so only the panic window's reading every second can
    // have scaled it out. (Its first reading of the load may cover part of a second, and ask
    // for two or three first.)
    wait(&k, "deployment/fn", "{.spec.replicas}", 12, |r| r == "4")?;
    let scaled = created.elapsed();
    let out = hey.join().expect("hey's thread").context("run hey (scripts/test installs it)")?;
    let report = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "hey failed: {report}");
    ensure!(!report.contains("Error distribution"), "requests failed or hung: {report}");
    // hey's "Status code distribution": `[200] 412 responses`, a line per status.
    let statuses: Vec<(&str, u64)> = report
        .lines()
        .filter_map(|l| {
            let (status, count) = l.trim().strip_prefix('[')?.split_once(']')?;
            Some((status, count.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    let answered = statuses.iter().find(|(status, _)| *status == "200").map_or(0, |s| s.1);
    let sent: u64 = statuses.iter().map(|s| s.1).sum();
    ensure!(answered > 100 && answered == sent, "{answered} of {sent} answered 200: {report}");
    let said =
        k.ok(&["get", "events", "--field-selector", "reason=SuccessfulRescale", "-o", "jsonpath={.items[*].message}"])?;
    ensure!(said.contains("reason: Service metric requests_in_flight above target"), "{said}");
    eprintln!("scaled out to 4 in a panic {scaled:?} after the HPA's evaluation; {answered} requests answered");

    // Idle, and allowed to: to zero, once the stable window (6 s) has seen no request and the
    // panic is over (at the HPA's evaluation on its changed spec, not a minute later; the
    // last counts, read each second, may trail the load by a second or two).
    std::thread::sleep(Duration::from_secs(9));
    k.ok(&["patch", "hpa", "fn", "--type=merge", "-p", r#"{"spec":{"minReplicas":0}}"#])?;
    at_zero(&k)?;
    Ok(())
}
