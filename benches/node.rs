//! A node under load, through the API as users drive it: a release `flotilla server --no-node`
//! and a `flotilla agent` (so the agent's memory is its own) on loopback.
//!
//! 1. Pod start latency: each of `--latency-pods` ticker pods created alone, timed from the
//!    create request to the watch event that shows its container started (as the upstream SLO
//!    measures, with client clocks: `creationTimestamp` has whole seconds only).
//! 2. A `wasi:http` handler pod: one request at a time (each meets a new instance: a cold
//!    start), then `wrk` for requests per second.
//! 3. Density: ticker pods created by 32 clients until `--density-pods` run on the one node;
//!    the agent's resident memory, how much of it is the guests' linear memory (the pool's
//!    mapping in `/proc/<pid>/smaps`), and the rest per pod.
//! 4. The runtime alone: a container of a cached module, instantiation to exit.
//! 5. Linux containers (as root, with `busybox-static`): each of `--oci-pods` busybox pods
//!    created alone, timed as in 1., beside `runc run` of the same image (create, start, exit,
//!    delete) in the same run; then the agent's resident memory per running busybox pod. (crun
//!    refuses a hybrid cgroup hierarchy, which this machine has: runc is the peer.)
//!
//! `cargo bench -p flotilla-benches --bench node -- [--latency-pods N] [--density-pods N] [--oci-pods N]`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use flotilla_benches::kube_api::{Api, Connection};
use flotilla_benches::process::{Cluster, ClusterConfig};
use flotilla_benches::{Report, Samples};
use http::Method;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
struct Args {
    /// Pods whose start is timed, one at a time.
    #[arg(long, default_value_t = 1000)]
    latency_pods: usize,
    /// Pods running at once for the density measurement.
    #[arg(long, default_value_t = 10_000)]
    density_pods: usize,
    /// Concurrent clients creating the density pods.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Requests to the wasi:http handler one at a time.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Busybox pods (Linux containers) whose start is timed, one at a time, and then kept
    /// running for the agent's memory per pod.
    #[arg(long, default_value_t = 100)]
    oci_pods: usize,
    /// Seconds of `wrk` against the handler.
    #[arg(long, default_value_t = 10)]
    wrk_seconds: u64,
    /// Every scenario at a tiny size: that the benchmark still runs (CI).
    #[arg(long)]
    smoke: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

const NAMESPACE: &str = "bench";
const NODE: &str = "bench-node";

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        (args.latency_pods, args.density_pods, args.clients, args.requests, args.wrk_seconds) = (10, 20, 4, 20, 1);
        args.oci_pods = 3;
    }
    // Linux containers need root, and the test image busybox.
    let oci_dir = tempfile::tempdir()?;
    let busybox = if rustix::process::geteuid().is_root() {
        match flotilla_examples::busybox::layer() {
            Ok(layer) => {
                let digest = flotilla_wasm::digest(&layer);
                let archive = flotilla_examples::busybox::saved_image(oci_dir.path(), &layer, &digest)?;
                Some((layer, archive.to_string_lossy().into_owned()))
            }
            Err(err) => {
                eprintln!("no Linux containers: {err}");
                None
            }
        }
    } else {
        eprintln!("no Linux containers: not root");
        None
    };
    let mut report = Report::solo("node").smoke(args.smoke);
    let mut images =
        vec![(flotilla_examples::P1_TICKER, "ticker:bench"), (flotilla_examples::P2_HANDLER, "handler:bench")];
    if let Some((_, archive)) = &busybox {
        images.push((archive, "busybox:bench"));
    }
    let cluster = Cluster::start(&ClusterConfig {
        node: NODE,
        node_ip: None,
        pod_cidr: "127.64.0.0/16",
        service_cidr: None,
        max_pods: Some(args.density_pods + args.oci_pods + 100),
        images: &images,
        proxy_mode: None,
        server_args: &[],
    })?;
    let api = &cluster.api;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, _) = cluster.agent.memory_mib()?;
    report.add("agent RSS idle, no pods", "MiB", idle_rss, None);

    let mut connection = api.connect().await?;
    connection.create("/api/v1/namespaces", &json!({"metadata": {"name": NAMESPACE}})).await?;
    let mut started = Started::watch(api).await?;
    let collection = format!("/api/v1/namespaces/{NAMESPACE}/pods");

    eprintln!("== pod start latency, {} pods one at a time", args.latency_pods);
    let names = (0..args.latency_pods).map(|i| format!("lat-{i}"));
    let mut latency = one_at_a_time(&mut connection, &mut started, &collection, names, ticker).await?;
    let label = format!("pod start, create to started, {} pods one at a time", args.latency_pods);
    report.add(format!("{label}: p50"), "ms", latency.quantile_ms(0.50), None);
    report.add(format!("{label}: p99"), "ms", latency.quantile_ms(0.99), None);

    eprintln!("== wasi:http handler");
    connection.create(&collection, &handler("fn")).await?;
    started.wait_for("fn").await?;
    let ip = pod_ip(&mut connection, "fn").await?;
    let mut cold = Samples::default();
    let all = Instant::now();
    for i in 0..args.requests {
        cold.extend(vec![http_get(&ip, &format!("/r{i}")).await?]);
    }
    cold.elapsed = all.elapsed();
    report.add("wasi:http request, new instance each, one at a time: p50", "ms", cold.quantile_ms(0.50), None);
    report.add("wasi:http request, new instance each, one at a time: p99", "ms", cold.quantile_ms(0.99), None);
    match flotilla_benches::wrk(&format!("http://{ip}:8080/"), args.wrk_seconds, 32) {
        Ok((per_second, p99)) => {
            report.add("wasi:http with wrk, 32 connections: requests/s", "requests/s", per_second, None);
            report.add("wasi:http with wrk, 32 connections: p99", "ms", p99, None);
        }
        Err(err) => eprintln!("wrk: {err:#} (scripts/bench installs it)"),
    }

    let target = args.density_pods;
    let more = target.saturating_sub(args.latency_pods + 1);
    eprintln!("== density: {more} more pods, to {target}");
    let all = Instant::now();
    let names: Vec<String> = (0..more).map(|i| format!("pod-{i}")).collect();
    let creating = create_all(api, &collection, &names, args.clients);
    let waiting = started.wait_for_all(&names);
    let (created, waited) = tokio::join!(creating, waiting);
    created?;
    waited?;
    let took = all.elapsed();
    report.add(
        format!("{more} pods created and started by {} clients", args.clients),
        "pods/s",
        more as f64 / took.as_secs_f64(),
        None,
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let running = count_started(&mut connection).await?;
    ensure!(running >= target, "{running} pods run, not {target}");
    report.add("pods running on the node", "pods", running as f64, None);
    let (rss, peak) = cluster.agent.memory_mib()?;
    let guests = pool_rss_mib(cluster.agent.pid())?;
    report.add(format!("agent RSS with {running} pods"), "MiB", rss, None);
    report.add("  of which the guests' linear memory", "MiB", guests, None);
    report.add(
        "agent RSS per pod, beyond the guest's linear memory",
        "KiB",
        (rss - guests - idle_rss) * 1024.0 / running as f64,
        None,
    );
    report.add("agent RSS per pod, all of it", "KiB", (rss - idle_rss) * 1024.0 / running as f64, None);
    report.add("agent RSS peak", "MiB", peak, None);
    report.add(format!("server RSS with {running} pods"), "MiB", cluster.server.memory_mib()?.0, None);

    eprintln!("== the runtime alone");
    let dir = tempfile::tempdir()?;
    let runtime = flotilla_wasm::Runtime::new(flotilla_wasm::RuntimeConfig::new(dir.path().to_path_buf()))?;
    let program = runtime.load(&std::fs::read(flotilla_examples::P1_HELLO)?)?;
    let mut runs = Samples::default();
    for _ in 0..2000 {
        runs.extend(vec![flotilla_benches::wasm::run(&runtime, &program).await?]);
    }
    report.add("cached module, instantiation to exit: p50", "µs", runs.quantile_ms(0.50) * 1e3, None);
    report.publish()?;

    let Some((layer, _)) = busybox else { return Ok(()) };
    let mut oci = Report::new("node-oci", "runc").smoke(args.smoke);
    eprintln!("== Linux containers: {} busybox pods one at a time, and runc", args.oci_pods);
    let mut runc = runc_runs(&layer, oci_dir.path(), args.oci_pods)?;
    let (before, _) = cluster.agent.memory_mib()?;
    let names = (0..args.oci_pods).map(|i| format!("oci-{i}"));
    let mut latency = one_at_a_time(&mut connection, &mut started, &collection, names, busybox_pod).await?;
    let scenario = "busybox pod created to started (ours) / runc run, create to delete (peer)";
    oci.add(format!("{scenario}: p50"), "ms", latency.quantile_ms(0.50), runc.as_mut().map(|c| c.quantile_ms(0.50)));
    oci.add(format!("{scenario}: p99"), "ms", latency.quantile_ms(0.99), runc.as_mut().map(|c| c.quantile_ms(0.99)));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (after, _) = cluster.agent.memory_mib()?;
    oci.add(
        format!("agent RSS per running busybox pod ({} pods)", args.oci_pods),
        "KiB",
        (after - before) * 1024.0 / args.oci_pods as f64,
        None,
    );
    // The containers' parent, one per node (not per pod), which outlives the agent.
    let keeper = cluster.agent.child_with_arg("keep").context("the agent started no keeper")?;
    // Most of its RSS is the binary's pages, which the agent maps too: its own is the rest.
    let with = format!("with {} busybox pods", args.oci_pods);
    let (keeper_rss, keeper_own) = (
        flotilla_benches::process::status_mib(keeper, "VmRSS:")?,
        flotilla_benches::process::status_mib(keeper, "RssAnon:")?,
    );
    oci.add(format!("keeper RSS, the node's one, {with}"), "MiB", keeper_rss, None);
    oci.add(format!("keeper memory of its own (RssAnon), {with}"), "MiB", keeper_own, None);
    for i in 0..args.oci_pods {
        connection.call(Method::DELETE, &format!("{collection}/oci-{i}"), "application/json", Vec::new()).await?;
    }
    oci.publish()?;
    // The agent removes a pod's container, mounts and interface before the pod goes from the
    // API: it is stopped only then, so that it leaves nothing on the machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list: Value = serde_json::from_slice(&connection.get(&collection).await?)?;
        let items = list["items"].as_array().into_iter().flatten();
        if !items.filter_map(|pod| pod["metadata"]["name"].as_str()).any(|name| name.starts_with("oci-")) {
            break;
        }
        ensure!(Instant::now() < deadline, "the busybox pods were not removed within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// Creates the pods `names` (made by `pod`) one at a time, each once the one before started:
/// how long each took from its create request to the watch event that shows it started.
async fn one_at_a_time(
    connection: &mut Connection,
    started: &mut Started,
    collection: &str,
    names: impl Iterator<Item = String>,
    pod: fn(&str) -> Value,
) -> Result<Samples> {
    let mut latency = Samples::default();
    let all = Instant::now();
    for name in names {
        let sent = Instant::now();
        connection.create(collection, &pod(&name)).await?;
        let at = started.wait_for(&name).await?;
        latency.extend(vec![at - sent]);
    }
    latency.elapsed = all.elapsed();
    Ok(latency)
}

/// A busybox pod that sleeps (a Linux container) on the bench node.
fn busybox_pod(name: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 0, "containers": [{
            "name": "sleep", "image": "busybox:bench", "imagePullPolicy": "IfNotPresent",
            "command": ["sleep", "3600"],
        }]},
    })
}

/// `runc run` of the busybox image, `runs` times: each creates, starts, waits for and deletes
/// a container running `true`, from a bundle made once (its root the layer unpacked, its
/// config `runc spec`'s). `None` when runc is not installed.
fn runc_runs(layer: &[u8], dir: &std::path::Path, runs: usize) -> Result<Option<Samples>> {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs"))?;
    tar::Archive::new(layer).unpack(bundle.join("rootfs"))?;
    match std::process::Command::new("runc").arg("spec").current_dir(&bundle).status() {
        Ok(status) if status.success() => {}
        _ => {
            eprintln!("runc is not installed (scripts/bench installs it): no peer");
            return Ok(None);
        }
    }
    let config_path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path)?)?;
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!(["true"]);
    std::fs::write(&config_path, serde_json::to_vec(&config)?)?;
    let mut samples = Samples::default();
    let all = Instant::now();
    for i in 0..runs {
        let started = Instant::now();
        let status = std::process::Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("flotilla-bench-{}-{i}", std::process::id()))
            .stdin(std::process::Stdio::null())
            .status()?;
        ensure!(status.success(), "runc run: {status}");
        samples.extend(vec![started.elapsed()]);
    }
    samples.elapsed = all.elapsed();
    Ok(Some(samples))
}

/// A ticker pod (a line every five seconds) on the bench node.
fn ticker(name: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {"nodeName": NODE, "containers": [{
            "name": "ticker", "image": "ticker:bench", "imagePullPolicy": "IfNotPresent",
            "env": [{"name": "TICK_MS", "value": "5000"}],
            "resources": {"limits": {"memory": "16Mi", "cpu": "50m"}},
        }]},
    })
}

/// The wasi:http handler on port 8080.
fn handler(name: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {"nodeName": NODE, "containers": [{
            "name": "handler", "image": "handler:bench", "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 8080}],
        }]},
    })
}

/// A server without a node and an agent for it, both release builds on fresh directories.
/// When each pod of the namespace was first seen with all its containers started.
struct Started {
    seen: HashMap<String, Instant>,
    events: mpsc::UnboundedReceiver<(String, Instant)>,
}

impl Started {
    /// Watches the namespace's pods from now on.
    async fn watch(api: &Api) -> Result<Started> {
        let mut connection = api.connect().await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while connection.get(&format!("/api/v1/nodes/{NODE}")).await.is_err() {
            ensure!(Instant::now() < deadline, "the agent's node never registered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let list: Value =
            serde_json::from_slice(&connection.get(&format!("/api/v1/namespaces/{NAMESPACE}/pods")).await?)?;
        let from = list["metadata"]["resourceVersion"].as_str().context("a resourceVersion")?.to_string();
        let path = format!("/api/v1/namespaces/{NAMESPACE}/pods?watch=1&resourceVersion={from}");
        let mut body = connection.send(Method::GET, &path, "application/json", Vec::new()).await?.into_body();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _connection = connection;
            let mut pending = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else { continue };
                let arrived = Instant::now();
                pending.extend_from_slice(&data);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let Ok(event) = serde_json::from_slice::<Value>(&line) else { continue };
                    if all_started(&event["object"]) {
                        let name = event["object"]["metadata"]["name"].as_str().unwrap_or_default().to_string();
                        let _ = tx.send((name, arrived));
                    }
                }
            }
        });
        Ok(Started { seen: HashMap::new(), events })
    }

    async fn wait_for(&mut self, name: &str) -> Result<Instant> {
        loop {
            if let Some(at) = self.seen.get(name) {
                return Ok(*at);
            }
            let (seen, at) = tokio::time::timeout(Duration::from_secs(60), self.events.recv())
                .await
                .with_context(|| format!("pod {name} did not start within 60 s"))?
                .context("the watch ended")?;
            self.seen.entry(seen).or_insert(at);
        }
    }

    async fn wait_for_all(&mut self, names: &[String]) -> Result<()> {
        for name in names {
            self.wait_for(name).await?;
        }
        Ok(())
    }
}

fn all_started(pod: &Value) -> bool {
    let statuses = pod.pointer("/status/containerStatuses").and_then(Value::as_array);
    let wanted = pod.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
    statuses.is_some_and(|s| s.len() == wanted && s.iter().all(|c| c["started"] == true))
}

async fn create_all(api: &Api, collection: &str, names: &[String], clients: usize) -> Result<()> {
    let names = Arc::new(names.to_vec());
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (api, collection, names) = (api.clone(), collection.to_string(), names.clone());
            tokio::spawn(async move {
                let mut connection = api.connect().await?;
                for name in names.iter().skip(c).step_by(clients) {
                    connection.create(&collection, &ticker(name)).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn pod_ip(connection: &mut Connection, name: &str) -> Result<String> {
    let pod: Value =
        serde_json::from_slice(&connection.get(&format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}")).await?)?;
    Ok(pod["status"]["podIP"].as_str().context("a pod IP")?.to_string())
}

/// Pods of the namespace whose containers have all started.
async fn count_started(connection: &mut Connection) -> Result<usize> {
    let list: Value = serde_json::from_slice(&connection.get(&format!("/api/v1/namespaces/{NAMESPACE}/pods")).await?)?;
    Ok(list["items"].as_array().into_iter().flatten().filter(|pod| all_started(pod)).count())
}

/// One `GET` on a new connection to the handler; how long until the whole answer arrived.
async fn http_get(ip: &str, path: &str) -> Result<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect((ip, 8080)).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: fn\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let took = started.elapsed();
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!("{path}: {}", String::from_utf8_lossy(&response));
    }
    Ok(took)
}

/// Resident memory of the guests' linear memories: everything mapped inside the wasm memory
/// pool's reservation. The pool reserves a slot of 4 GiB of address space per instance, one
/// after another; a slot in use is cut into its copy-on-write image, its anonymous growth and
/// the inaccessible rest, so the pool spans from the first to the last inaccessible piece of a
/// gibibyte or more (less the first slot's image: a rounding error of one pod).
fn pool_rss_mib(pid: u32) -> Result<f64> {
    struct Vma {
        start: u64,
        end: u64,
        inaccessible: bool,
        rss_kib: u64,
    }
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut vmas: Vec<Vma> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let (first, perms) = (fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            vmas.push(Vma { start, end, inaccessible: perms == "---p", rss_kib: 0 });
        } else if let (Some(rss), Some(vma)) = (line.strip_prefix("Rss:"), vmas.last_mut()) {
            vma.rss_kib = rss.trim().trim_end_matches("kB").trim().parse()?;
        }
    }
    let slots = vmas.iter().filter(|v| v.inaccessible && v.end - v.start >= 1 << 30);
    let (Some(low), Some(high)) = (slots.clone().map(|v| v.start).min(), slots.map(|v| v.end).max()) else {
        bail!("no wasm memory pool in the agent's address space");
    };
    let kib: u64 = vmas.iter().filter(|v| v.start >= low && v.end <= high).map(|v| v.rss_kib).sum();
    Ok(kib as f64 / 1024.0)
}
