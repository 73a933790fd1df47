//! The HorizontalPodAutoscaler through the real kubectl: a Deployment whose pods burn CPU is
//! scaled out to its maximum, and back in when its pods go idle, on the resource metrics the
//! nodes measure. The server reads the nodes and evaluates HPAs every second here
//! (`--metrics-resolution`, `--horizontal-pod-autoscaler-sync-period`).

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use flotilla_examples as examples;

use crate::harness::{Ports, Server};
use crate::kubectl::Kubectl;
use crate::pods::{apply, import};

fn deployment(name: &str, image: &str, requests: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: app
        image: {image}
        imagePullPolicy: IfNotPresent
        ports:
        - containerPort: 8080
{requests}"
    )
}

/// Waits up to `secs` for `jsonpath` of `what` to read as `check` wants.
pub(crate) fn wait(k: &Kubectl, what: &str, jsonpath: &str, secs: u64, check: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = k.ok(&["get", what, "-o", &format!("jsonpath={jsonpath}")])?;
        if check(&last) {
            return Ok(last);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("{what} {jsonpath} never read as wanted; last: {last:?}")
}

/// Waits up to a minute for a `SuccessfulRescale` Event saying `message` (Events are written
/// behind the decision, by a queue that a loaded machine may hold up).
fn rescaled(k: &Kubectl, message: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut said = String::new();
    while Instant::now() < deadline {
        let selector = "reason=SuccessfulRescale";
        said = k.ok(&["get", "events", "--field-selector", selector, "-o", "jsonpath={.items[*].message}"])?;
        if said.contains(message) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let all = k.run_lossy(&[
        "get",
        "events",
        "-o",
        "custom-columns=OBJECT:.involvedObject.name,REASON:.reason,MESSAGE:.message",
    ]);
    let hpa = k.run_lossy(&["get", "hpa", "-o", "yaml"]);
    bail!("no SuccessfulRescale Event said {message:?}; they said {said:?}\nevents:\n{all}\n{hpa}")
}

#[test]
fn an_hpa_scales_a_busy_deployment_out_and_an_idle_one_back_in() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let args = ["--metrics-resolution", "1s", "--horizontal-pod-autoscaler-sync-period", "1s"];
    let server = Server::start_with(dir.path(), Ports::free(), &args)?;
    import(dir.path(), examples::P1_SPIN, "spin:v1")?;
    import(dir.path(), examples::P1_HTTP, "http:v1")?;
    let k = Kubectl::new("1.33", &server)?;

    // Each pod asks for 100m and burns up to its 200m limit: about 200% of its request.
    let burning = "        resources:\n          requests: {cpu: 100m}\n          limits: {cpu: 200m}\n";
    apply(&k, &deployment("burn", "spin:v1", burning))?;
    let created = k.ok(&["autoscale", "deployment", "burn", "--min=1", "--max=3", "--cpu-percent=50"])?;
    ensure!(created.contains("autoscaled"), "{created}");
    // Scaling in follows at once rather than after upstream's five minutes.
    let patch = r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":0}}}}"#;
    k.ok(&["patch", "hpa", "burn", "--type=merge", "-p", patch])?;
    wait(&k, "deployment/burn", "{.spec.replicas}", 90, |r| r == "3")?;
    // Events are written behind the decision, and the HPA sees the new size at its next run.
    rescaled(&k, "New size: 3; reason: cpu resource utilization (percentage of request) above target")?;
    wait(&k, "hpa/burn", "{.status.currentReplicas}", 30, |r| r == "3")?;
    let row = k.ok(&["get", "hpa", "burn", "--no-headers"])?;
    let fields: Vec<&str> = row.split_whitespace().collect();
    ensure!(fields[1] == "Deployment/burn" && fields[2] == "cpu:" && fields[3].ends_with("%/50%"), "{row}");
    ensure!(fields[4..7] == ["1", "3", "3"], "{row}");
    let active =
        k.ok(&["get", "hpa", "burn", "-o", "jsonpath={.status.conditions[?(@.type==\"ScalingActive\")].reason}"])?;
    ensure!(active == "ValidMetricFound", "{active}");

    // Idle pods: back to the minimum.
    k.ok(&["set", "image", "deployment/burn", "app=http:v1"])?;
    if let Err(e) = wait(&k, "deployment/burn", "{.spec.replicas}", 120, |r| r == "1") {
        let described = k.ok(&["describe", "hpa", "burn"])?;
        let top = k.run_lossy(&["top", "pod"]);
        let pods = k.ok(&["get", "pods", "-o", "wide"])?;
        bail!("{e}\n{described}\n{top}\n{pods}");
    }
    rescaled(&k, "New size: 1; reason: All metrics below target")?;

    // Pods that request no CPU have no utilization: the HPA says so and leaves them be.
    apply(&k, &deployment("unrequested", "http:v1", ""))?;
    k.ok(&["autoscale", "deployment", "unrequested", "--max=2", "--cpu-percent=50"])?;
    let jsonpath = "{.status.conditions[?(@.type==\"ScalingActive\")].message}";
    let said = wait(&k, "hpa/unrequested", jsonpath, 60, |m| m.contains("missing request for cpu"))?;
    ensure!(said.starts_with("the HPA was unable to compute the replica count"), "{said}");
    ensure!(k.ok(&["get", "deployment", "unrequested", "-o", "jsonpath={.spec.replicas}"])? == "1");

    // kubectl before 1.33 creates autoscaling/v1 HPAs: stored as v2, shown in either.
    let old = Kubectl::new("1.27", &server)?;
    apply(&old, &deployment("legacy", "http:v1", "        resources:\n          requests: {cpu: 100m}\n"))?;
    old.ok(&["autoscale", "deployment", "legacy", "--max=4", "--cpu-percent=60"])?;
    let path = format!("/apis/autoscaling/v1/namespaces/{}/horizontalpodautoscalers/legacy", old.namespace);
    let v1: serde_json::Value = serde_json::from_str(&old.ok(&["get", "--raw", &path])?)?;
    ensure!(v1["apiVersion"] == "autoscaling/v1" && v1["spec"]["targetCPUUtilizationPercentage"] == 60, "{v1}");
    let as_v2 = |field: &str| old.ok(&["get", "hpa.v2.autoscaling", "legacy", "-o", &format!("jsonpath={field}")]);
    ensure!(as_v2("{.spec.metrics[0].resource.target.averageUtilization}")? == "60");
    // Patched through v1, as v1 shows it.
    old.ok(&["patch", "hpa.v1.autoscaling", "legacy", "-p", r#"{"spec":{"maxReplicas":6}}"#])?;
    ensure!(as_v2("{.spec.maxReplicas}")? == "6");
    let current = "{.status.currentCPUUtilizationPercentage}";
    wait(&old, "hpa.v1.autoscaling/legacy", current, 30, |u| !u.is_empty())?;
    let events =
        old.ok(&["get", "--raw", &format!("{}?watch=true&timeoutSeconds=1", path.rsplit_once('/').unwrap().0)])?;
    ensure!(events.lines().count() >= 1, "no event: {events}");
    ensure!(events.lines().all(|e| e.contains("\"apiVersion\":\"autoscaling/v1\"")), "{events}");

    // Server-side apply would record field ownership against v2's fields: refused in v1.
    let v1_manifest = "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: legacy}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: legacy}\n  maxReplicas: 5\n";
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), v1_manifest)?;
    let refused = old.fails(&["apply", "--server-side", "-f", file.path().to_str().unwrap()])?;
    ensure!(
        refused.contains("server-side apply of horizontalpodautoscalers is not supported in autoscaling/v1"),
        "{refused}"
    );

    // What the API refuses, in upstream's words.
    let bad = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: bad}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burn}\n  minReplicas: 0\n  maxReplicas: 0\n";
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), bad)?;
    let refused = k.fails(&["apply", "-f", file.path().to_str().unwrap()])?;
    ensure!(refused.contains("must be greater than 0") && refused.contains("Object or External metric"), "{refused}");
    Ok(())
}
