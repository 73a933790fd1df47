//! Functions that scale to zero, as users run them: a release `flotilla server --no-node`
//! (reading nodes and evaluating HPAs every second: `--metrics-resolution 1s`,
//! `--horizontal-pod-autoscaler-sync-period 1s`) and a `flotilla agent` relaying in userspace,
//! serving `wasm-examples/handler` (a `wasi:http` component) behind Services and HPAs with
//! `minReplicas: 0`.
//!
//! 1. A cold request: the function at zero replicas (its pods gone, its Service without
//!    endpoints), one request on a new connection to its cluster IP, timed until its answer:
//!    the node holds it, the HPA wakes on the node's Event and scales the Deployment to one,
//!    the pod starts and turns Ready, its EndpointSlice reaches the node, and the request goes
//!    on. p50 and p99 over `--wakeups`, beside a warm request through the same Service.
//!    Between wake-ups the HPA takes the idle function back to zero (its scale-down window is
//!    0 here): a benchmark that scaled it down itself would have the HPA count each wake-up
//!    against its scale-up rate (4 pods per 15 s) without the scale-down that offsets it. Its
//!    target per pod scales as Knative's autoscaler does, which goes to zero once a stable
//!    window without a request has passed: Knative's shortest, 6 s, so that 200 wake-ups take
//!    half an hour rather than hours.
//! 2. Warm throughput through a Service whose function scales from zero (every connection
//!    asks whether to hold it; every request is counted) beside a plain Service to the same
//!    pod: `wrk` requests/s and the ratio.
//! 3. A load step: from one replica, `wrk` on a function whose requests each take 50 ms, timed
//!    until the HPA scales the Deployment out: its target per pod puts it in Knative's panic
//!    mode, read every second, which evaluates the HPA at once, whatever its sync period.
//! 4. `--functions` functions deployed at zero (a Deployment, a Service and an HPA each): the
//!    agent's and the server's memory per function; then cold requests again, beside them (up
//!    to 20): their HPAs, evaluated every second, each ask what nodes hold for their Service,
//!    which must not hold up a wake-up.
//! 5. What a function at zero costs beyond its objects: `--functions` functions at zero in a
//!    new cluster, and as many whose HPA's minimum is 1 (the same objects, nothing held for
//!    them, as upstream has an idle Deployment) in another, each measured from the same start.
//!    The difference is what scaling from zero adds. (Measured one after the other in one
//!    cluster, the second set finds the heap the first grew and looks cheaper.)
//!
//! `cargo bench -p flotilla-benches --bench serverless -- [--wakeups N] [--functions N]`

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use flotilla_benches::kube_api::Connection;
use flotilla_benches::process::{Cluster, ClusterConfig};
use flotilla_benches::{Report, Samples, wrk};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
struct Args {
    /// Cold requests, each from zero replicas.
    #[arg(long, default_value_t = 200)]
    wakeups: usize,
    /// Functions deployed at zero for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    functions: usize,
    /// Seconds of each load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Every scenario at a tiny size: that the benchmark still runs (CI).
    #[arg(long)]
    smoke: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

const NAMESPACE: &str = "bench";
const NODE: &str = "bench-node";
/// The cluster's ranges, away from the single-host defaults and the other benchmarks'.
const SERVICE_CIDR: &str = "127.70.0.0/16";
const NODE_IP: &str = "127.71.0.1";
const POD_CIDR: &str = "127.72.0.0/16";

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        (args.wakeups, args.functions, args.seconds) = (3, 10, 1);
    }
    let (cluster, mut connection) = start().await?;
    let mut report = Report::solo("serverless").smoke(args.smoke);

    eprintln!("== a cold request from zero replicas, {} times", args.wakeups);
    let ip = function(&mut connection, "cold", 0, (0, 3), true).await?;
    let front = SocketAddr::new(ip.into(), 80);
    let (mut cold, mut warm) = (Samples::default(), Samples::default());
    for _ in 0..args.wakeups {
        at_zero(&mut connection, "cold").await?;
        cold.extend(vec![request(front, "/").await?]);
        // And at once another, to the pod now up.
        warm.extend(vec![request(front, "/").await?]);
    }
    report.add("cold request through the Service, p50", "ms", cold.quantile_ms(0.5), None);
    report.add("cold request through the Service, p99", "ms", cold.quantile_ms(0.99), None);
    report.add("warm request through the Service, p50", "ms", warm.quantile_ms(0.5), None);

    eprintln!("== warm throughput: a Service that scales from zero beside a plain one");
    let ip = function(&mut connection, "warm", 1, (0, 1), false).await?;
    ready(&mut connection, "warm", 1).await?;
    let held = format!("http://{ip}/");
    let plain = plain_service(&mut connection, "warm").await?;
    let plain = format!("http://{plain}/");
    match (wrk(&held, args.seconds, 32), wrk(&plain, args.seconds, 32)) {
        (Ok((held_rps, _)), Ok((plain_rps, _))) => {
            report.add("HTTP through a Service scaling from zero, wrk 32: requests/s", "requests/s", held_rps, None);
            report.add("HTTP through a plain Service, wrk 32: requests/s", "requests/s", plain_rps, None);
            report.add("scaling from zero / plain", "ratio", held_rps / plain_rps, None);
        }
        (held, plain) => eprintln!("wrk: {held:?} {plain:?} (scripts/bench installs it)"),
    }

    eprintln!("== a load step to the HPA's first scale-out");
    let step = function(&mut connection, "step", 1, (0, 5), false).await?;
    ready(&mut connection, "step", 1).await?;
    let url = format!("http://{step}/?sleep_ms=50");
    let started = Instant::now();
    let seconds = if args.smoke { 5 } else { 20 };
    let load = tokio::task::spawn_blocking(move || wrk(&url, seconds, 16));
    let deployment = format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/step");
    let deadline = Instant::now() + Duration::from_secs(60);
    let took = loop {
        let read: Value = serde_json::from_slice(&connection.get(&deployment).await?)?;
        if read["spec"]["replicas"].as_i64().unwrap_or(0) > 1 {
            break started.elapsed();
        }
        ensure!(Instant::now() < deadline, "the HPA never scaled out under load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    report.add("load step to the first scale-out", "ms", took.as_secs_f64() * 1e3, None);
    if let Err(e) = load.await? {
        eprintln!("wrk: {e} (scripts/bench installs it)");
    }
    eprintln!("== {} functions at zero", args.functions);
    let (agent_before, server_before) = memory(&cluster)?;
    functions_at_zero(&mut connection, "idle", args.functions).await?;
    let (agent_after, server_after) = memory(&cluster)?;
    let per = |before: f64, after: f64| (after - before) * 1024.0 / args.functions as f64;
    let idle = format!("{} functions at zero", args.functions);
    report.add(format!("{idle}: agent memory per function"), "KiB", per(agent_before, agent_after), None);
    report.add(format!("{idle}: server memory per function"), "KiB", per(server_before, server_after), None);

    eprintln!("== a cold request beside {} functions at zero", args.functions);
    // Their HPAs are evaluated every second, each asking what nodes hold for its Service: a
    // wake-up must not wait behind them.
    let mut beside = Samples::default();
    for _ in 0..args.wakeups.min(20) {
        at_zero(&mut connection, "cold").await?;
        beside.extend(vec![request(front, "/").await?]);
    }
    report.add(format!("cold request beside {idle}, p50"), "ms", beside.quantile_ms(0.5), None);

    let (agent, _) = cluster.agent.memory_mib()?;
    report.add("agent RSS at the end", "MiB", agent, None);
    drop(cluster);

    eprintln!(
        "== {} functions at zero, and as many that do not scale from zero, each in a new cluster",
        args.functions
    );
    let (agent_at_zero, server_at_zero) = in_a_new_cluster(true, args.functions).await?;
    let (agent_objects, server_objects) = in_a_new_cluster(false, args.functions).await?;
    let plain = format!("{} idle functions that do not scale from zero", args.functions);
    report.add(format!("{idle}, in a new cluster: agent memory per function"), "KiB", agent_at_zero, None);
    report.add(format!("{idle}, in a new cluster: server memory per function"), "KiB", server_at_zero, None);
    report.add(format!("{plain}: agent memory per function"), "KiB", agent_objects, None);
    report.add(format!("{plain}: server memory per function"), "KiB", server_objects, None);
    report.add("at zero beyond the objects: agent memory per function", "KiB", agent_at_zero - agent_objects, None);
    report.add("at zero beyond the objects: server memory per function", "KiB", server_at_zero - server_objects, None);
    report.publish()?;
    Ok(())
}

/// The agent's and the server's memory per function (KiB) in a new cluster, after `count`
/// functions at zero or, unless `at_zero`, as many whose HPA's minimum is 1: the same three
/// objects, nothing held for them, as upstream has an idle Deployment (an HPA does not scale a
/// target at zero up to its minimum).
async fn in_a_new_cluster(at_zero: bool, count: usize) -> Result<(f64, f64)> {
    let (cluster, mut connection) = start().await?;
    let (agent_before, server_before) = memory(&cluster)?;
    if at_zero {
        functions_at_zero(&mut connection, "idle", count).await?;
    } else {
        for i in 0..count {
            function(&mut connection, &format!("plain-{i}"), 0, (1, 3), false).await?;
        }
        tokio::time::sleep(SETTLE).await;
    }
    let (agent_after, server_after) = memory(&cluster)?;
    let per = |before: f64, after: f64| (after - before) * 1024.0 / count as f64;
    Ok((per(agent_before, agent_after), per(server_before, server_after)))
}

/// A control plane and a node, the benchmark's namespace created: ready for functions.
async fn start() -> Result<(Cluster, Connection)> {
    let cluster = Cluster::start(&ClusterConfig {
        node: NODE,
        node_ip: Some(NODE_IP),
        pod_cidr: POD_CIDR,
        service_cidr: Some(SERVICE_CIDR),
        max_pods: None,
        images: &[(flotilla_examples::P2_HANDLER, "handler:bench")],
        proxy_mode: None,
        server_args: &["--metrics-resolution", "1s", "--horizontal-pod-autoscaler-sync-period", "1s"],
    })?;
    let mut connection = cluster.api.connect().await?;
    connection.create("/api/v1/namespaces", &json!({"metadata": {"name": NAMESPACE}})).await?;
    // Until the node is Ready and a moment more: memory measured from here is the functions'.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let node: Value = connection
            .get(&format!("/api/v1/nodes/{NODE}"))
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if ready {
            break;
        }
        ensure!(Instant::now() < deadline, "node {NODE} never turned Ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(SETTLE).await;
    Ok((cluster, connection))
}

/// The agent's and the server's resident memory, MiB.
fn memory(cluster: &Cluster) -> Result<(f64, f64)> {
    Ok((cluster.agent.memory_mib()?.0, cluster.server.memory_mib()?.0))
}

/// How long memory is left to settle after functions are deployed.
const SETTLE: Duration = Duration::from_secs(5);

/// `count` functions `<prefix>-<i>` deployed at zero, once the agent has seen them all (every
/// Service's frontend listens, holding) and a moment after.
async fn functions_at_zero(connection: &mut Connection, prefix: &str, count: usize) -> Result<()> {
    for i in 0..count {
        function(connection, &format!("{prefix}-{i}"), 0, (0, 3), false).await?;
    }
    let services = format!("/api/v1/namespaces/{NAMESPACE}/services");
    let listed: Value = serde_json::from_slice(&connection.get(&services).await?)?;
    let mut fronts = Vec::new();
    for service in listed["items"].as_array().into_iter().flatten() {
        let name = service["metadata"]["name"].as_str().unwrap_or_default();
        if name.starts_with(&format!("{prefix}-")) {
            fronts.push(service["spec"]["clusterIP"].as_str().context("a cluster IP")?.parse::<Ipv4Addr>()?);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for front in &fronts {
        while TcpStream::connect((*front, 80)).await.is_err() {
            ensure!(Instant::now() < deadline, "{front} never listened for its function at zero");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(SETTLE).await;
    Ok(())
}

/// Function `name`: a Deployment of `replicas` handler pods, a Service, and an HPA from `min`
/// (zero: the function scales from zero) to `max` on its requests in flight (two per replica),
/// which scales it down at once when `idles_to_zero` (its stable window the shortest Knative
/// allows), else never. Its cluster IP.
async fn function(
    connection: &mut Connection,
    name: &str,
    replicas: i32,
    (min, max): (i32, i32),
    idles_to_zero: bool,
) -> Result<Ipv4Addr> {
    let labels = json!({"app": name});
    let container = json!({"name": "handler", "image": "handler:bench", "ports": [{"containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}});
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}}});
    connection.create(&format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments"), &deployment).await?;
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}});
    connection.create(&format!("/api/v1/namespaces/{NAMESPACE}/services"), &service).await?;
    let window = if idles_to_zero { "6s" } else { "60s" };
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "annotations": {"autoscaling.knative.dev/window": window}},
    "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicas": min, "maxReplicas": max,
        "metrics": [{"type": "Object", "object": {
            "describedObject": {"apiVersion": "v1", "kind": "Service", "name": name},
            "metric": {"name": "requests_in_flight"},
            "target": {"type": "AverageValue", "averageValue": "2"}}}],
        "behavior": {"scaleDown": if idles_to_zero {
            json!({"stabilizationWindowSeconds": 0})
        } else {
            json!({"selectPolicy": "Disabled"})
        }}}});
    connection.create(&format!("/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers"), &hpa).await?;
    let read: Value =
        serde_json::from_slice(&connection.get(&format!("/api/v1/namespaces/{NAMESPACE}/services/{name}")).await?)?;
    Ok(read["spec"]["clusterIP"].as_str().context("a cluster IP")?.parse()?)
}

/// A Service without an HPA, to the pods of function `name`: its cluster IP, once it answers.
async fn plain_service(connection: &mut Connection, name: &str) -> Result<Ipv4Addr> {
    let plain = format!("{name}-plain");
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": plain},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}});
    connection.create(&format!("/api/v1/namespaces/{NAMESPACE}/services"), &service).await?;
    let read: Value =
        serde_json::from_slice(&connection.get(&format!("/api/v1/namespaces/{NAMESPACE}/services/{plain}")).await?)?;
    let ip: Ipv4Addr = read["spec"]["clusterIP"].as_str().context("a cluster IP")?.parse()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(SocketAddr::new(ip.into(), 80), "/").await.is_err() {
        ensure!(Instant::now() < deadline, "{plain} never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(ip)
}

/// Waits until Deployment `name` has `replicas` ready.
async fn ready(connection: &mut Connection, name: &str, replicas: i64) -> Result<()> {
    let path = format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let read: Value = serde_json::from_slice(&connection.get(&path).await?)?;
        if read["status"]["readyReplicas"].as_i64().unwrap_or(0) == replicas {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{name} never had {replicas} ready: {}", read["status"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the HPA has taken idle function `name` to zero: its pods gone, its Service
/// without endpoints, and a moment for the node to have the empty slice (a request before
/// would go to the pod that is gone, and be refused).
async fn at_zero(connection: &mut Connection, name: &str) -> Result<()> {
    let slices = format!(
        "/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{name}"
    );
    let pods = format!("/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=app%3D{name}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed: Value = serde_json::from_slice(&connection.get(&pods).await?)?;
        let slices: Value = serde_json::from_slice(&connection.get(&slices).await?)?;
        let endpoints = slices["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .count();
        if listed["items"].as_array().is_none_or(Vec::is_empty) && endpoints == 0 {
            break;
        }
        ensure!(Instant::now() < deadline, "{name} never went to zero");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// One `GET path` on a new connection to `at`, until its 200: how long it took.
async fn request(at: SocketAddr, path: &str) -> Result<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(at).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    ensure!(response.starts_with(b"HTTP/1.1 200"), "{at}: {}", String::from_utf8_lossy(&response));
    Ok(started.elapsed())
}
