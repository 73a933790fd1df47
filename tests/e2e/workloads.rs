//! Workloads as users run them: the scheduler places pods and the controllers keep Deployments,
//! Jobs, DaemonSets and StatefulSets as declared, driven by the real kubectl. Most run on hollow
//! nodes (`flotilla agent --hollow`), the real agent on a runtime that runs nothing; Jobs and
//! `kubectl logs deploy/…` run real wasm on the embedded node.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use flotilla_examples as examples;

use crate::harness::{Ports, Server, flotilla_bin};
use crate::kubectl::Kubectl;
use crate::pods::{apply, eventually, import};

/// `flotilla agent --hollow N`: N simulated nodes named `<prefix>-0…`; killed when dropped.
struct Hollow(Child);

impl Hollow {
    fn start(server: &Server, data_dir: &std::path::Path, count: usize, prefix: &str) -> Result<Hollow> {
        // They act for many nodes at once, which no node identity may: they run as the admin.
        let child = Command::new(flotilla_bin())
            .args(["agent", "--kubeconfig"])
            .arg(&server.kubeconfig)
            .arg("--data-dir")
            .arg(data_dir.join(format!("hollow-{prefix}")))
            .args(["--hollow", &count.to_string(), "--hollow-prefix", prefix])
            .env("FLOTILLA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start flotilla agent --hollow")?;
        Ok(Hollow(child))
    }
}

impl Drop for Hollow {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server without a node of its own, and `nodes` hollow nodes `hollow-0…`, all Ready.
fn hollow_cluster(nodes: usize, extra: &[&str]) -> Result<(tempfile::TempDir, Server, Hollow, Kubectl)> {
    let dir = tempfile::tempdir()?;
    let mut args = vec!["--no-node"];
    args.extend_from_slice(extra);
    let server = Server::start_with(dir.path(), Ports::free(), &args)?;
    let hollow = Hollow::start(&server, dir.path(), nodes, "hollow")?;
    let k = Kubectl::new("1.33", &server)?;
    eventually(&k, &["get", "nodes", "-o", "name"], 30, |out| out.lines().count() == nodes)?;
    Ok((dir, server, hollow, k))
}

fn deployment(name: &str, replicas: u32, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n      - name: app\n        image: {image}\n"
    )
}

/// `(name, node)` of the pods with `selector` that are not being deleted.
fn placements(k: &Kubectl, selector: &str) -> Result<Vec<(String, String)>> {
    let out = k.ok(&[
        "get",
        "pods",
        "-l",
        selector,
        "-o",
        "jsonpath={range .items[?(@.metadata.deletionTimestamp)]}{.metadata.name}{\"\\n\"}{end}",
    ])?;
    let deleting: Vec<&str> = out.lines().collect();
    let out = k.ok(&[
        "get",
        "pods",
        "-l",
        selector,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(name, _)| !deleting.contains(name))
        .map(|(n, node)| (n.to_string(), node.to_string()))
        .collect())
}

/// A hollow node is the real agent on a runtime that runs nothing: its pods go through the
/// kubelet's lifecycle (init containers, volumes from ConfigMaps, probes, graceful deletion),
/// where the old hollow nodes only wrote each pod Running.
#[test]
fn hollow_nodes_take_pods_through_the_kubelets_lifecycle() -> Result<()> {
    let (_dir, _server, _hollow, k) = hollow_cluster(1, &[])?;
    let node = k.ok(&[
        "get",
        "node",
        "hollow-0",
        "-o",
        "jsonpath={.metadata.labels.node\\.flotilla\\.dev/hollow} {.status.nodeInfo.containerRuntimeVersion} [{.spec.podCIDR}]",
    ])?;
    ensure!(node == "true hollow://0.1 []", "a hollow node publishes no pod range: {node}");
    let pod = |name: &str, config_map: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  initContainers:\n  - name: setup\n    image: setup:v1\n  containers:\n  - name: app\n    image: app:v1\n    readinessProbe:\n      httpGet:\n        port: 8080\n      periodSeconds: 1\n    volumeMounts:\n    - name: config\n      mountPath: /config\n  volumes:\n  - name: config\n    configMap:\n      name: {config_map}\n"
        )
    };
    apply(&k, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n")?;
    apply(&k, &pod("full", "settings"))?;
    apply(&k, &pod("wanting", "missing"))?;
    k.ok(&["wait", "pod/full", "--for=condition=Ready", "--timeout=60s"])?;
    let status = k.ok(&[
        "get",
        "pod",
        "full",
        "-o",
        "jsonpath={.status.initContainerStatuses[0].state.terminated.reason} {.status.containerStatuses[0].containerID} {.status.podIP}",
    ])?;
    let fields: Vec<&str> = status.split(' ').collect();
    ensure!(fields.len() == 3 && fields[0] == "Completed", "the init container ran to completion: {status}");
    ensure!(fields[1].starts_with("wasm://") && fields[2].starts_with("127.128.0."), "{status}");
    // Without its ConfigMap a pod waits, saying why, as on any node.
    eventually(
        &k,
        &["get", "pod", "wanting", "-o", "jsonpath={.status.initContainerStatuses[0].state.waiting.reason}"],
        30,
        |reason| reason == "CreateContainerConfigError",
    )?;
    // Deleted, its container is stopped and the pod goes.
    k.ok(&["delete", "pod", "full", "wanting", "--timeout=30s"])?;
    let left = k.ok(&["get", "pods", "-o", "name"])?;
    ensure!(left.is_empty(), "{left}");
    Ok(())
}

#[test]
fn a_deployment_rolls_out_scales_rolls_back_and_cascades_on_delete() -> Result<()> {
    let (_dir, _server, _hollow, k) = hollow_cluster(3, &[])?;
    apply(&k, &deployment("web", 3, "web:v1"))?;
    let status = k.ok(&["rollout", "status", "deploy/web", "--timeout=60s"])?;
    ensure!(status.contains("successfully rolled out"), "{status}");
    // Replicas spread over the nodes.
    let mut nodes: Vec<String> = placements(&k, "app=web")?.into_iter().map(|(_, node)| node).collect();
    nodes.sort();
    ensure!(nodes == ["hollow-0", "hollow-1", "hollow-2"], "{nodes:?}");
    let scheduled =
        k.ok(&["get", "events", "--field-selector", "reason=Scheduled", "-o", "jsonpath={.items[*].message}"])?;
    ensure!(scheduled.contains("Successfully assigned"), "{scheduled}");

    // A new template rolls out as a second ReplicaSet; the first is kept for rollback.
    k.ok(&["set", "image", "deploy/web", "app=web:v2"])?;
    k.ok(&["rollout", "status", "deploy/web", "--timeout=60s"])?;
    let images = k.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.containers[0].image}"])?;
    ensure!(images.split_whitespace().all(|i| i == "web:v2"), "{images}");
    let history = k.ok(&["rollout", "history", "deploy/web"])?;
    ensure!(history.contains("1 ") && history.contains("2 "), "{history}");
    ensure!(k.ok(&["get", "rs", "-l", "app=web", "-o", "name"])?.lines().count() == 2);
    let revision = k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    ])?;
    ensure!(revision == "2", "{revision}");

    // Undo brings the first template back as revision 3.
    k.ok(&["rollout", "undo", "deploy/web"])?;
    k.ok(&["rollout", "status", "deploy/web", "--timeout=60s"])?;
    eventually(
        &k,
        &["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.containers[0].image}"],
        30,
        |images| images.split_whitespace().count() == 3 && images.split_whitespace().all(|i| i == "web:v1"),
    )?;
    let revision = k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    ])?;
    ensure!(revision == "3", "{revision}");

    k.ok(&["scale", "deploy/web", "--replicas=5"])?;
    k.ok(&["rollout", "status", "deploy/web", "--timeout=60s"])?;
    eventually(&k, &["get", "deploy", "web", "-o", "jsonpath={.status.availableReplicas}"], 30, |n| n == "5")?;
    let described = k.ok(&["describe", "deploy", "web"])?;
    ensure!(described.contains("ScalingReplicaSet") && described.contains("Scaled up replica set"), "{described}");
    k.ok(&["rollout", "restart", "deploy/web"])?;
    k.ok(&["rollout", "status", "deploy/web", "--timeout=60s"])?;

    // A Service over 150 replicas: its Endpoints list them all, its EndpointSlices hold at
    // most 100 each.
    apply(
        &k,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n",
    )?;
    k.ok(&["scale", "deploy/web", "--replicas=150"])?;
    k.ok(&["rollout", "status", "deploy/web", "--timeout=120s"])?;
    eventually(&k, &["get", "endpoints", "web", "-o", "jsonpath={.subsets[*].addresses[*].ip}"], 30, |ips| {
        ips.split_whitespace().count() == 150
    })?;
    let sizes = eventually(
        &k,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "go-template={{range .items}}{{len .endpoints}} {{end}}",
        ],
        30,
        |sizes| {
            let mut sizes: Vec<&str> = sizes.split_whitespace().collect();
            sizes.sort();
            sizes == ["100", "50"]
        },
    )?;
    ensure!(!sizes.is_empty());

    // Deleting the Deployment takes its ReplicaSets and pods along.
    k.ok(&["delete", "deploy", "web"])?;
    eventually(&k, &["get", "rs,pods", "-l", "app=web", "-o", "name"], 30, |out| out.trim().is_empty())?;
    Ok(())
}

#[test]
fn a_deployment_scaled_mid_rollout_grows_its_replica_sets_in_proportion() -> Result<()> {
    // The ReplicaSets' sizes by revision, oldest first.
    const SIZES: [&str; 6] = [
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.metadata.annotations.deployment\\.kubernetes\\.io/revision}:{.spec.replicas} {end}",
    ];
    const PROGRESSING: [&str; 5] =
        ["get", "deploy", "web", "-o", "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}"];
    let in_order = |out: &str| -> String {
        let mut sets: Vec<(u32, &str)> = out
            .split_whitespace()
            .filter_map(|s| s.split_once(':'))
            .map(|(r, n)| (r.parse().unwrap_or(0), n))
            .collect();
        sets.sort();
        sets.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(" ")
    };
    let (_dir, _server, _hollow, k) = hollow_cluster(2, &[])?;
    let surge = deployment("web", 10, "web:v1").replace(
        "  replicas: 10\n",
        "  replicas: 10\n  progressDeadlineSeconds: 3\n  strategy:\n    rollingUpdate:\n      maxSurge: 2\n      maxUnavailable: 0\n",
    );
    apply(&k, &surge)?;
    k.ok(&["rollout", "status", "deploy/web", "--timeout=60s"])?;
    // With no node to run them, the new template's first 2 pods stay pending and the rollout
    // stalls at 10 old + 2 new.
    k.ok(&["cordon", "hollow-0", "hollow-1"])?;
    k.ok(&["set", "image", "deploy/web", "app=web:v2"])?;
    eventually(&k, &SIZES, 30, |s| in_order(s) == "10 2")?;
    // 10 → 20 replicas (22 with the surge): both sets grow by their share, 10 → 18 and 2 → 4,
    // rather than the new one taking all ten.
    k.ok(&["scale", "deploy/web", "--replicas=20"])?;
    eventually(&k, &SIZES, 30, |s| in_order(s) == "18 4")?;
    std::thread::sleep(Duration::from_secs(2));
    let settled = in_order(&k.ok(&SIZES)?);
    ensure!(settled == "18 4", "the stalled rollout moved on: {settled}");
    // Stalled past its progress deadline: the Deployment says so, and `rollout status` fails.
    eventually(&k, &PROGRESSING, 30, |reason| reason == "ProgressDeadlineExceeded")?;
    let said = k.fails(&["rollout", "status", "deploy/web", "--timeout=10s"])?;
    ensure!(said.contains("exceeded its progress deadline"), "{said}");
    // Nodes back: the rollout finishes at 20 new pods. `rollout status` fails at once while the
    // condition still says ProgressDeadlineExceeded (as upstream's does), and a 3 s deadline could
    // lapse again between two pods on a loaded machine, so the deadline is lifted first and the
    // rollout watched through its condition.
    k.ok(&["uncordon", "hollow-0", "hollow-1"])?;
    k.ok(&["patch", "deploy/web", "-p", r#"{"spec":{"progressDeadlineSeconds":600}}"#])?;
    eventually(&k, &PROGRESSING, 120, |reason| reason == "NewReplicaSetAvailable")?;
    k.ok(&["rollout", "status", "deploy/web", "--timeout=60s"])?;
    eventually(&k, &SIZES, 30, |s| in_order(s) == "0 20")?;
    Ok(())
}

#[test]
fn pause_resume_and_the_cascade_policies() -> Result<()> {
    let (_dir, _server, _hollow, k) = hollow_cluster(2, &[])?;
    apply(&k, &deployment("app", 2, "app:v1"))?;
    k.ok(&["rollout", "status", "deploy/app", "--timeout=60s"])?;
    // Paused, a new template makes no new ReplicaSet; resumed, it rolls out.
    k.ok(&["rollout", "pause", "deploy/app"])?;
    k.ok(&["set", "image", "deploy/app", "app=app:v2"])?;
    let reason = eventually(
        &k,
        &["get", "deploy", "app", "-o", "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}"],
        30,
        |r| r == "DeploymentPaused",
    )?;
    ensure!(reason == "DeploymentPaused");
    ensure!(k.ok(&["get", "rs", "-l", "app=app", "-o", "name"])?.lines().count() == 1);
    k.ok(&["rollout", "resume", "deploy/app"])?;
    k.ok(&["rollout", "status", "deploy/app", "--timeout=60s"])?;
    ensure!(k.ok(&["get", "rs", "-l", "app=app", "-o", "name"])?.lines().count() == 2);

    // Orphan: the ReplicaSets stay, no longer owned; their pods with them.
    k.ok(&["delete", "deploy", "app", "--cascade=orphan"])?;
    eventually(&k, &["get", "rs", "-l", "app=app", "-o", "jsonpath={.items[*].metadata.ownerReferences}"], 30, |o| {
        o.trim().is_empty()
    })?;
    ensure!(placements(&k, "app=app")?.len() == 2);
    // Foreground: the ReplicaSet goes only after its pods.
    let rs = k.ok(&["get", "rs", "-l", "app=app", "-o", "jsonpath={.items[?(@.spec.replicas==2)].metadata.name}"])?;
    k.ok(&["delete", "rs", &rs, "--cascade=foreground", "--wait=false"])?;
    eventually(&k, &["get", "rs,pods", "-l", "app=app", "-o", "name"], 30, |out| {
        !out.contains(&format!("replicaset.apps/{rs}")) && !out.contains("pod/")
    })?;
    Ok(())
}

#[test]
fn a_replication_controller_keeps_scales_and_cascades_as_a_replica_set_does() -> Result<()> {
    let (_dir, _server, _hollow, k) = hollow_cluster(2, &[])?;
    // No selector and no labels: both are the template's (upstream's defaults).
    let rc = "apiVersion: v1\nkind: ReplicationController\nmetadata:\n  name: legacy\nspec:\n  replicas: 2\n  template:\n    metadata:\n      labels:\n        app: legacy\n    spec:\n      containers:\n      - name: app\n        image: legacy:v1\n";
    apply(&k, rc)?;
    let defaulted = k.ok(&["get", "rc", "legacy", "-o", "jsonpath={.spec.selector.app} {.metadata.labels.app}"])?;
    ensure!(defaulted == "legacy legacy", "{defaulted}");
    let table = eventually(&k, &["get", "rc", "legacy"], 60, |out| {
        out.lines().nth(1).is_some_and(|l| l.split_whitespace().take(4).eq(["legacy", "2", "2", "2"]))
    })?;
    ensure!(table.starts_with("NAME     DESIRED   CURRENT   READY   AGE"), "{table}");
    ensure!(placements(&k, "app=legacy")?.len() == 2);
    let owner =
        k.ok(&["get", "pods", "-l", "app=legacy", "-o", "jsonpath={.items[0].metadata.ownerReferences[0].kind}"])?;
    ensure!(owner == "ReplicationController", "{owner}");

    k.ok(&["scale", "rc", "legacy", "--replicas=3"])?;
    eventually(&k, &["get", "rc", "legacy", "-o", "jsonpath={.status.readyReplicas}"], 60, |r| r == "3")?;
    let wide = k.ok(&["get", "rc", "legacy", "-o", "wide"])?;
    ensure!(wide.contains("legacy:v1") && wide.contains("app=legacy"), "{wide}");

    // A template its selector does not select is refused, as upstream refuses it.
    let stray = rc
        .replace("name: legacy\n", "name: stray\n")
        .replace("spec:\n  replicas: 2\n", "spec:\n  replicas: 2\n  selector:\n    app: other\n");
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), stray)?;
    let refused = k.fails(&["apply", "-f", file.path().to_str().unwrap()])?;
    ensure!(refused.contains("`selector` does not match template `labels`"), "{refused}");

    // Deleting it takes its pods (a background cascade, kubectl's default).
    k.ok(&["delete", "rc", "legacy"])?;
    eventually(&k, &["get", "pods", "-l", "app=legacy", "-o", "name"], 30, |out| out.trim().is_empty())?;
    Ok(())
}

#[test]
fn cordons_taints_and_selectors_keep_pods_off_nodes() -> Result<()> {
    let (_dir, _server, _hollow, k) = hollow_cluster(3, &[])?;
    k.ok(&["cordon", "hollow-0"])?;
    k.ok(&["taint", "nodes", "hollow-1", "dedicated=gpu:NoSchedule"])?;
    apply(&k, &deployment("api", 4, "api:v1"))?;
    k.ok(&["rollout", "status", "deploy/api", "--timeout=60s"])?;
    let nodes: Vec<String> = placements(&k, "app=api")?.into_iter().map(|(_, node)| node).collect();
    ensure!(nodes.len() == 4 && nodes.iter().all(|n| n == "hollow-2"), "{nodes:?}");

    // A pod that fits nowhere stays Pending and says why, in upstream's words.
    apply(
        &k,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: lost\nspec:\n  nodeSelector:\n    zone: moon\n  containers:\n  - name: app\n    image: app:v1\n",
    )?;
    let message = eventually(
        &k,
        &["get", "pod", "lost", "-o", "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}"],
        30,
        |m| !m.is_empty(),
    )?;
    ensure!(
        message
            == "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
                1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable.",
        "{message}"
    );
    let described = k.ok(&["describe", "pod", "lost"])?;
    ensure!(described.contains("FailedScheduling"), "{described}");
    // Labelling a node so that it fits brings the pod in.
    k.ok(&["label", "node", "hollow-2", "zone=moon"])?;
    eventually(&k, &["get", "pod", "lost", "-o", "jsonpath={.spec.nodeName}"], 30, |n| n == "hollow-2")?;

    // A DaemonSet lands on every node its pods tolerate: cordoned ones too, not the tainted one.
    apply(
        &k,
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: logger\nspec:\n  selector:\n    matchLabels:\n      app: logger\n  template:\n    metadata:\n      labels:\n        app: logger\n    spec:\n      containers:\n      - name: logger\n        image: logger:v1\n",
    )?;
    k.ok(&["rollout", "status", "ds/logger", "--timeout=60s"])?;
    let mut nodes: Vec<String> = placements(&k, "app=logger")?.into_iter().map(|(_, node)| node).collect();
    nodes.sort();
    ensure!(nodes == ["hollow-0", "hollow-2"], "{nodes:?}");
    k.ok(&["taint", "nodes", "hollow-1", "dedicated-"])?;
    eventually(&k, &["get", "ds", "logger", "-o", "jsonpath={.status.numberReady}"], 30, |n| n == "3")?;
    k.ok(&["set", "image", "ds/logger", "logger=logger:v2"])?;
    k.ok(&["rollout", "status", "ds/logger", "--timeout=60s"])?;
    let images = k.ok(&["get", "pods", "-l", "app=logger", "-o", "jsonpath={.items[*].spec.containers[0].image}"])?;
    ensure!(images.split_whitespace().filter(|i| *i == "logger:v2").count() == 3, "{images}");
    // Each template is a ControllerRevision: history lists both, undo brings v1 back as revision 3.
    let history = k.ok(&["rollout", "history", "ds/logger"])?;
    let revisions: Vec<&str> = history.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    ensure!(revisions == ["1", "2"], "{history}");
    let shown = k.ok(&["rollout", "history", "ds/logger", "--revision=1"])?;
    ensure!(shown.contains("logger:v1"), "{shown}");
    k.ok(&["rollout", "undo", "ds/logger"])?;
    k.ok(&["rollout", "status", "ds/logger", "--timeout=60s"])?;
    eventually(
        &k,
        &["get", "pods", "-l", "app=logger", "-o", "jsonpath={.items[*].spec.containers[0].image}"],
        30,
        |i| i.split_whitespace().filter(|i| *i == "logger:v1").count() == 3 && !i.contains("logger:v2"),
    )?;
    let history = k.ok(&["rollout", "history", "ds/logger"])?;
    let revisions: Vec<&str> = history.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    ensure!(revisions == ["2", "3"], "{history}");
    Ok(())
}

#[test]
fn statefulsets_keep_order_and_services_track_their_pods() -> Result<()> {
    let (_dir, _server, _hollow, k) = hollow_cluster(2, &[])?;
    apply(
        &k,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  selector:\n    app: db\n  ports:\n  - name: sql\n    port: 5432\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\nspec:\n  serviceName: db\n  replicas: 3\n  selector:\n    matchLabels:\n      app: db\n  template:\n    metadata:\n      labels:\n        app: db\n    spec:\n      containers:\n      - name: db\n        image: db:v1\n",
    )?;
    k.ok(&["rollout", "status", "sts/db", "--timeout=60s"])?;
    let mut names: Vec<String> = placements(&k, "app=db")?.into_iter().map(|(name, _)| name).collect();
    names.sort();
    ensure!(names == ["db-0", "db-1", "db-2"], "{names:?}");
    // Created in order: each pod is younger than the one before.
    let created =
        k.ok(&["get", "pods", "db-0", "db-1", "db-2", "-o", "jsonpath={.items[*].metadata.creationTimestamp}"])?;
    let times: Vec<&str> = created.split_whitespace().collect();
    ensure!(times.windows(2).all(|w| w[0] <= w[1]), "{created}");
    let endpoints =
        eventually(&k, &["get", "endpoints", "db", "-o", "jsonpath={.subsets[*].addresses[*].ip}"], 30, |ips| {
            ips.split_whitespace().count() == 3
        })?;
    let slice = k.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=db",
        "-o",
        "jsonpath={.items[*].endpoints[*].addresses[0]}",
    ])?;
    let (mut a, mut b): (Vec<&str>, Vec<&str>) =
        (endpoints.split_whitespace().collect(), slice.split_whitespace().collect());
    a.sort();
    b.sort();
    ensure!(a == b, "endpoints {endpoints} but slices {slice}");
    let ports =
        k.ok(&["get", "endpoints", "db", "-o", "jsonpath={.subsets[0].ports[0].name}:{.subsets[0].ports[0].port}"])?;
    ensure!(ports == "sql:5432", "{ports}");

    // An update goes pod by pod; undo returns to the first revision.
    k.ok(&["set", "image", "sts/db", "db=db:v2"])?;
    k.ok(&["rollout", "status", "sts/db", "--timeout=60s"])?;
    k.ok(&["rollout", "undo", "sts/db"])?;
    k.ok(&["rollout", "status", "sts/db", "--timeout=60s"])?;
    let images = k.ok(&["get", "pods", "-l", "app=db", "-o", "jsonpath={.items[*].spec.containers[0].image}"])?;
    ensure!(images == "db:v1 db:v1 db:v1", "{images}");
    let revisions = k.ok(&["get", "controllerrevisions", "-o", "jsonpath={.items[*].revision}"])?;
    let mut revisions: Vec<&str> = revisions.split_whitespace().collect();
    revisions.sort();
    ensure!(revisions == ["2", "3"], "{revisions:?}");

    k.ok(&["scale", "sts/db", "--replicas=1"])?;
    eventually(&k, &["get", "pods", "-l", "app=db", "-o", "name"], 30, |out| out.trim() == "pod/db-0")?;
    eventually(&k, &["get", "endpoints", "db", "-o", "jsonpath={.subsets[*].addresses[*].ip}"], 30, |ips| {
        ips.split_whitespace().count() == 1
    })?;
    // Deleting the namespace deletes everything in it, then the namespace.
    let namespace = k.namespace.clone();
    k.ok(&["delete", "namespace", &namespace, "--wait=false"])?;
    eventually(&k, &["get", "namespaces", "-o", "name"], 60, |out| {
        !out.lines().any(|l| l == format!("namespace/{namespace}"))
    })?;
    Ok(())
}

#[test]
fn a_node_whose_agent_stops_has_its_pods_replaced_elsewhere() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(
        dir.path(),
        Ports::free(),
        &["--no-node", "--node-grace-period", "12", "--default-toleration-seconds", "2"],
    )?;
    let doomed = Hollow::start(&server, dir.path(), 1, "doomed")?;
    let _steady = Hollow::start(&server, dir.path(), 1, "steady")?;
    let k = Kubectl::new("1.33", &server)?;
    eventually(&k, &["get", "nodes", "-o", "name"], 30, |out| out.lines().count() == 2)?;
    apply(&k, &deployment("svc", 2, "svc:v1"))?;
    k.ok(&["rollout", "status", "deploy/svc", "--timeout=60s"])?;
    let mut nodes: Vec<String> = placements(&k, "app=svc")?.into_iter().map(|(_, node)| node).collect();
    nodes.sort();
    ensure!(nodes == ["doomed-0", "steady-0"], "{nodes:?}");
    let tolerations =
        k.ok(&["get", "pods", "-l", "app=svc", "-o", "jsonpath={.items[0].spec.tolerations[*].tolerationSeconds}"])?;
    ensure!(tolerations == "2 2", "{tolerations}");

    drop(doomed);
    eventually(
        &k,
        &["get", "node", "doomed-0", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"],
        30,
        |s| s == "Unknown",
    )?;
    let taints = k.ok(&["get", "node", "doomed-0", "-o", "jsonpath={.spec.taints[*].key}"])?;
    ensure!(taints.contains("node.kubernetes.io/unreachable"), "{taints}");
    // Its pods are no longer ready, then evicted once their toleration ran out, and replaced.
    let ready = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=svc",
        "--field-selector",
        "spec.nodeName=doomed-0",
        "-o",
        "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
    ])?;
    ensure!(ready == "False", "{ready}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes: Vec<String> = placements(&k, "app=svc")?.into_iter().map(|(_, node)| node).collect();
        if nodes == ["steady-0", "steady-0"] {
            break;
        }
        ensure!(Instant::now() < deadline, "still {nodes:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    eventually(&k, &["get", "deploy", "svc", "-o", "jsonpath={.status.availableReplicas}"], 60, |n| n == "2")?;
    Ok(())
}

#[test]
fn jobs_complete_or_fail_and_logs_follow_a_deployment() -> Result<()> {
    let dir = tempfile::tempdir()?;
    import(dir.path(), examples::P1_HELLO, "hello:v1")?;
    import(dir.path(), examples::P1_ECHO, "echo:v1")?;
    import(dir.path(), examples::P1_TICKER, "ticker:v1")?;
    let server = Server::start(dir.path(), Ports::free())?;
    let k = Kubectl::new("1.33", &server)?;
    let job = |name: &str, image: &str, extra: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{extra}  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: {image}\n        imagePullPolicy: IfNotPresent\n        env:\n        - name: EXIT_CODE\n          value: \"3\"\n"
        )
    };
    apply(&k, &job("hello", "hello:v1", "  completions: 2\n"))?;
    k.ok(&["wait", "--for=condition=complete", "job/hello", "--timeout=60s"])?;
    let counts = k.ok(&["get", "job", "hello", "-o", "jsonpath={.status.succeeded} {.status.failed}"])?;
    ensure!(counts == "2 0", "{counts}");
    ensure!(k.ok(&["logs", "job/hello"])? == "hello from a wasm pod\n");
    // Counted, its pods no longer carry the tracking finalizer; deleting the Job takes them.
    let finalizers =
        k.ok(&["get", "pods", "-l", "job-name=hello", "-o", "jsonpath={.items[*].metadata.finalizers}"])?;
    ensure!(finalizers.trim().is_empty(), "{finalizers}");

    apply(&k, &job("doomed", "echo:v1", "  backoffLimit: 0\n"))?;
    k.ok(&["wait", "--for=condition=failed", "job/doomed", "--timeout=60s"])?;
    let reason =
        k.ok(&["get", "job", "doomed", "-o", "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}"])?;
    ensure!(reason == "BackoffLimitExceeded", "{reason}");
    // A finished Job with ttlSecondsAfterFinished goes, with its pods, that long after.
    apply(&k, &job("brief", "hello:v1", "  ttlSecondsAfterFinished: 1\n"))?;
    eventually(&k, &["get", "jobs", "-o", "name"], 60, |out| {
        out.contains("job.batch/hello") && !out.contains("job.batch/brief")
    })?;
    eventually(&k, &["get", "pods", "-l", "job-name=brief", "-o", "name"], 30, |out| out.trim().is_empty())?;
    k.ok(&["delete", "job", "hello", "doomed"])?;
    eventually(&k, &["get", "pods", "-l", "job-name in (hello,doomed)", "-o", "name"], 30, |out| {
        out.trim().is_empty()
    })?;

    // `kubectl logs deploy/…` finds a pod of the Deployment.
    apply(
        &k,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ticker\nspec:\n  selector:\n    matchLabels:\n      app: ticker\n  template:\n    metadata:\n      labels:\n        app: ticker\n    spec:\n      containers:\n      - name: ticker\n        image: ticker:v1\n        imagePullPolicy: IfNotPresent\n        env:\n        - name: TICK_MS\n          value: \"100\"\n",
    )?;
    k.ok(&["rollout", "status", "deploy/ticker", "--timeout=60s"])?;
    let logs = eventually(&k, &["logs", "deploy/ticker"], 30, |l| l.contains("tick 1"))?;
    ensure!(logs.starts_with("tick 0\n"), "{logs}");
    let recent = k.ok(&["logs", "deploy/ticker", "--since=1h", "--timestamps"])?;
    ensure!(recent.lines().next().is_some_and(|l| l.ends_with("Z tick 0")), "{recent}");
    std::thread::sleep(Duration::from_millis(1500));
    let last_second = k.ok(&["logs", "deploy/ticker", "--since=1s"])?;
    ensure!(!last_second.contains("tick 0\n") && last_second.contains("tick "), "{last_second}");
    Ok(())
}
