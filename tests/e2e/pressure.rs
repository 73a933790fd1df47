//! A node short of memory: guests that allocate all they can meet their limits (a container
//! that declares none gets the node's default), and greedy pods that together outgrow what the
//! node offers are evicted as the kubelet evicts them, so that the node and a neighbour live.
//! The node reserves all but 700Mi of this machine for the system (`--system-reserved`), so
//! the test needs no more than that of it, and the pods reach the limits in seconds.
//! A node short of disk reports it, and is sent no pods.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use flotilla_examples as examples;

use crate::harness::{Ports, Server};
use crate::kubectl::Kubectl;
use crate::pods::{apply, eventually, import, node_name, pod, wait_for};

/// A value from `/proc/meminfo`, in KiB.
fn meminfo_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = text.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
    kib.unwrap_or(0)
}

#[test]
fn a_node_short_of_memory_evicts_the_greediest_pod_and_keeps_the_rest() -> Result<()> {
    const FOR_PODS_KIB: u64 = 700 << 10;
    ensure!(meminfo_kib("MemAvailable:") > FOR_PODS_KIB + (300 << 10), "this test needs about 1 GiB of free memory");
    let reserved = format!("memory={}Ki", meminfo_kib("MemTotal:") - FOR_PODS_KIB);
    let dir = tempfile::tempdir()?;
    let args = ["--system-reserved", &reserved, "--eviction-pressure-transition-period", "30s"];
    let server = Server::start_with(dir.path(), Ports::free(), &args)?;
    import(dir.path(), examples::P1_HOG, "hog:v1")?;
    import(dir.path(), examples::P1_HTTP, "http:v1")?;
    let k = Kubectl::new("1.33", &server)?;
    let node = node_name(&k)?;
    let node_field = |path: &str| k.ok(&["get", "node", &node, "-o", &format!("jsonpath={path}")]);
    // Allocatable is what is left less the eviction threshold, as upstream computes it.
    ensure!(node_field("{.status.allocatable.memory}")? == "600Mi");

    // A guest without a limit is bounded by the node's default for one.
    apply(&k, &pod("unbounded", &node, "hog:v1", "Never", "", ""))?;
    wait_for(&k, "unbounded", "{.status.phase}", 30, |p| p == "Failed")?;
    let ended = k.ok(&[
        "get",
        "pod",
        "unbounded",
        "-o",
        "jsonpath={.status.containerStatuses[0].state.terminated.reason} {.status.containerStatuses[0].state.terminated.message}",
    ])?;
    ensure!(ended.starts_with("OOMKilled") && ended.contains("limit is 268435456"), "{ended}");

    let guaranteed = "    resources:\n      limits: {cpu: 100m, memory: 32Mi}\n    ports:\n    - containerPort: 8080\n";
    apply(&k, &pod("neighbour", &node, "http:v1", "Always", guaranteed, ""))?;
    wait_for(&k, "neighbour", "{.status.phase}", 30, |p| p == "Running")?;
    // Three guests that each take 224Mi and keep it: 672Mi together, past the 600Mi offered.
    let greedy = "    env:\n    - {name: STOP_MIB, value: \"224\"}\n    - {name: CHUNK_MIB, value: \"16\"}\n";
    let hogs = ["hog-a", "hog-b", "hog-c"];
    for name in hogs {
        apply(&k, &pod(name, &node, "hog:v1", "Never", greedy, ""))?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut evicted, mut pressure_seen, mut tainted) = (Vec::new(), false, false);
    while Instant::now() < deadline && (evicted.is_empty() || !pressure_seen || !tainted) {
        evicted = hogs
            .iter()
            .filter(|h| {
                k.ok(&["get", "pod", h, "-o", "jsonpath={.status.reason}"]).is_ok_and(|reason| reason == "Evicted")
            })
            .collect();
        pressure_seen |= node_field("{.status.conditions[?(@.type==\"MemoryPressure\")].status}")? == "True";
        tainted |= node_field("{.spec.taints[*].key}")?.contains("node.kubernetes.io/memory-pressure");
        std::thread::sleep(Duration::from_millis(300));
    }
    ensure!(!evicted.is_empty(), "no pod was evicted");
    ensure!(pressure_seen, "the node never reported MemoryPressure");
    ensure!(tainted, "the node was never tainted for its memory pressure");

    // While the node is under pressure, a new pod that requests nothing is not taken on.
    apply(&k, &pod("late", &node, "hog:v1", "Never", greedy, ""))?;
    let late = wait_for(&k, "late", "{.status.phase} {.status.reason}", 30, |s| s.starts_with("Failed"))?;
    ensure!(late == "Failed Evicted", "{late}");

    let victim = evicted[0];
    let field = |path: &str| k.ok(&["get", "pod", victim, "-o", &format!("jsonpath={path}")]);
    ensure!(field("{.status.phase}")? == "Failed");
    let message = field("{.status.message}")?;
    ensure!(
        message.starts_with("The node was low on resource: memory. Threshold quantity: 100Mi, available: ")
            && message.contains(&format!("Container {victim} was using ")),
        "{message}"
    );
    let disruption = field("{.status.conditions[?(@.type==\"DisruptionTarget\")].reason}")?;
    ensure!(disruption == "TerminationByKubelet", "{disruption}");
    let events =
        k.ok(&["get", "events", "--field-selector", &format!("involvedObject.name={victim},reason=Evicted")])?;
    ensure!(events.contains("The node was low on resource: memory."), "{events}");

    // The others live: the neighbour never restarted, the node is ready and answers.
    let running: Vec<_> = hogs
        .iter()
        .filter(|h| k.ok(&["get", "pod", h, "-o", "jsonpath={.status.phase}"]).is_ok_and(|p| p == "Running"))
        .collect();
    ensure!(!running.is_empty(), "every greedy pod went, where one was enough");
    let neighbour = k.ok(&[
        "get",
        "pod",
        "neighbour",
        "-o",
        "jsonpath={.status.phase} {.status.containerStatuses[0].restartCount}",
    ])?;
    ensure!(neighbour == "Running 0", "{neighbour}");
    ensure!(node_field("{.status.conditions[?(@.type==\"Ready\")].status}")? == "True");
    Ok(())
}

/// A node whose disk is short (here: a threshold no disk meets, `nodefs.available<1Ei`)
/// reports `DiskPressure`, is tainted for it, and the scheduler sends it no pod.
#[test]
fn a_node_short_of_disk_reports_disk_pressure_and_is_sent_no_pods() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), Ports::free(), &["--eviction-hard", "nodefs.available<1Ei"])?;
    import(dir.path(), examples::P1_HTTP, "http:v1")?;
    let k = Kubectl::new("1.33", &server)?;
    let node = node_name(&k)?;
    let jsonpath = "jsonpath={.status.conditions[?(@.type==\"DiskPressure\")].reason} {.spec.taints[*].key}";
    eventually(&k, &["get", "node", &node, "-o", jsonpath], 30, |out| {
        out.starts_with("KubeletHasDiskPressure ") && out.contains("node.kubernetes.io/disk-pressure")
    })?;
    let unplaced = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: unplaced\nspec:\n  containers:\n  - name: http\n    image: http:v1\n    imagePullPolicy: IfNotPresent\n";
    apply(&k, unplaced)?;
    let events = eventually(&k, &["get", "events", "--field-selector", "involvedObject.name=unplaced"], 30, |out| {
        out.contains("FailedScheduling")
    })?;
    ensure!(events.contains("untolerated taint {node.kubernetes.io/disk-pressure: }"), "{events}");
    ensure!(k.ok(&["get", "pod", "unplaced", "-o", "jsonpath={.spec.nodeName}"])?.is_empty());
    Ok(())
}
