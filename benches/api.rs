//! The Kubernetes API under load, through HTTPS as clients use it: pod creates/s and latency with
//! 1 and 32 concurrent clients, Secret creates/s with encryption at rest on and off, list
//! latency over 10,000 pods, watch fan-out (1,000 pod updates delivered to 100 watchers), and
//! the server's resident memory idle, with 10,000 pods stored, and after all of it.
//!
//! No peer runs beside it: K3s and kube-apiserver cannot be installed on this machine, so
//! BENCHMARKS.md compares against their published figures instead.
//!
//! `cargo bench -p flotilla-benches --bench api -- [--seconds N] [--clients 1,32] [--pods 10000]`
//! `--smoke` runs every scenario at a tiny size, to show that the benchmark still runs.

use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use flotilla_benches::kube_api::Api;
use flotilla_benches::process::{EVICTION_HARD, Running, flotilla_bin, free_port};
use flotilla_benches::{Report, Samples};
use http::Method;
use http_body_util::BodyExt;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// Seconds of measured creates per client count (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients creating pods, each with its own connection and one request in flight.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    clients: Vec<usize>,
    /// Pods stored for the list and memory measurements.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Full lists of those pods to time.
    #[arg(long, default_value_t = 20)]
    lists: usize,
    /// Watchers of the fan-out measurement.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Pod updates each watcher must receive.
    #[arg(long, default_value_t = 1000)]
    updates: usize,
    /// Every scenario at a tiny size: that the benchmark still runs (CI).
    #[arg(long)]
    smoke: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        (args.seconds, args.clients, args.pods, args.lists, args.watchers, args.updates) =
            (1, vec![1, 4], 100, 2, 4, 20);
    }
    let mut report = Report::solo("api").smoke(args.smoke);

    for &clients in &args.clients {
        eprintln!("== pod creates, {clients} client(s)");
        let server = Server::start(Shape::ApiAlone, &[])?;
        let pods = "/api/v1/namespaces/default/pods";
        let mut samples = creates(&server.api, clients, Duration::from_secs(args.seconds), pods, pod).await?;
        let scenario = format!("create pods, {clients} client{}", if clients == 1 { "" } else { "s" });
        report.add(format!("{scenario}: creates/s"), "creates/s", samples.per_second(), None);
        report.add(format!("{scenario}: p50 latency"), "ms", samples.quantile_ms(0.50), None);
        report.add(format!("{scenario}: p99 latency"), "ms", samples.quantile_ms(0.99), None);
    }

    // Encryption at rest: the same Secret creates, AES-GCM against the clear.
    let clients = args.clients.iter().copied().max().unwrap_or(1);
    let mut per_second = Vec::new();
    for encrypted in [true, false] {
        eprintln!("== secret creates, {clients} clients, encrypted: {encrypted}");
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("encryption.yaml");
        std::fs::write(&config, ENCRYPTION)?;
        let flags = ["--encryption-provider-config", config.to_str().unwrap_or_default()];
        let server = Server::start(Shape::ApiAlone, if encrypted { &flags } else { &[] })?;
        let secrets = "/api/v1/namespaces/default/secrets";
        let samples = creates(&server.api, clients, Duration::from_secs(args.seconds), secrets, secret).await?;
        let how = if encrypted { "encrypted at rest (aesgcm)" } else { "in the clear" };
        report.add(
            format!("create secrets, {clients} clients, {how}: creates/s"),
            "creates/s",
            samples.per_second(),
            None,
        );
        per_second.push(samples.per_second());
    }
    report.add("secret creates/s, encrypted / in the clear", "ratio", per_second[0] / per_second[1], None);

    eprintln!("== memory, lists and watches");
    let everything = Server::start(Shape::Default, &[])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.add("RSS idle after start, with its node (the default)", "MiB", everything.process.memory_mib()?.0, None);
    drop(everything);
    // The control plane keeps every pod in its informers: what that costs the server.
    let control_plane = Server::start(Shape::ControlPlane, &[])?;
    fill(&control_plane.api, "list", args.pods, 32).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    report.add(
        format!("RSS with {} pods stored, scheduler and controllers embedded", args.pods),
        "MiB",
        control_plane.process.memory_mib()?.0,
        None,
    );
    drop(control_plane);
    let server = Server::start(Shape::ApiAlone, &[])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.add("RSS idle after start", "MiB", server.process.memory_mib()?.0, None);

    let started = Instant::now();
    fill(&server.api, "list", args.pods, 32).await?;
    let fill_rate = args.pods as f64 / started.elapsed().as_secs_f64();
    eprintln!("stored {} pods at {fill_rate:.0}/s", args.pods);
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.add(format!("RSS idle with {} pods stored", args.pods), "MiB", server.process.memory_mib()?.0, None);

    let mut lists = list_latencies(&server.api, args.lists, None).await?;
    report.add(format!("list {} pods, one request: p50", args.pods), "ms", lists.quantile_ms(0.50), None);
    report.add(format!("list {} pods, one request: p99", args.pods), "ms", lists.quantile_ms(0.99), None);
    let mut paged = list_latencies(&server.api, args.lists, Some(500)).await?;
    report.add(format!("list {} pods in pages of 500: p50", args.pods), "ms", paged.quantile_ms(0.50), None);
    report.add("RSS after the lists", "MiB", server.process.memory_mib()?.0, None);

    let mut delivery = fan_out(&server.api, args.watchers, args.updates).await?;
    let label = format!("watch: {} updates to {} watchers", args.updates, args.watchers);
    report.add(format!("{label}: delivery p50"), "ms", delivery.quantile_ms(0.50), None);
    report.add(format!("{label}: delivery p99"), "ms", delivery.quantile_ms(0.99), None);
    report.add(format!("{label}: events/s"), "events/s", delivery.per_second(), None);

    let (rss, peak) = server.process.memory_mib()?;
    report.add("RSS after the watches", "MiB", rss, None);
    report.add("RSS peak over the run", "MiB", peak, None);
    report.publish()?;
    Ok(())
}

/// What a server runs besides the API.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `flotilla server` as it starts by default: scheduler, controllers and a node.
    Default,
    /// Scheduler and controllers, no node.
    ControlPlane,
    /// The API server alone, what this benchmark measures.
    ApiAlone,
}

/// A release `flotilla server` on a fresh data directory.
struct Server {
    process: Running,
    api: Api,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(shape: Shape, extra: &[&str]) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut command = Command::new(flotilla_bin()?);
        command
            .args(["server", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--peer-listen", &format!("127.0.0.1:{}", free_port()?)]);
        match shape {
            Shape::Default => {
                command.args(["--node-listen", "127.0.0.1:0", "--proxy-mode", "userspace"]).args(EVICTION_HARD)
            }
            Shape::ControlPlane => command.arg("--no-node"),
            Shape::ApiAlone => command.args(["--no-node", "--disable", "scheduler,controllers"]),
        };
        command.args(extra);
        let mut process = Running::spawn(&mut command)?;
        let line = process.wait_for_line(Duration::from_secs(30), |l| l.starts_with("kubeconfig: "))?;
        let api = Api::from_kubeconfig(line.trim_start_matches("kubeconfig: ").as_ref())?;
        Ok(Server { process, api, _dir: dir })
    }
}

/// A pod as a user would write it: one container with limits, a label.
fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{
            "name": "app",
            "image": "ghcr.io/example/hello.wasm:1.0",
            "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}},
        }]},
    })
}

/// Secrets with a 32-byte AES-GCM key, then the clear for what was written before.
const ENCRYPTION: &str = "apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - aesgcm:
      keys:
      - name: bench
        secret: YmVuY2htYXJrIGtleSwgdGhpcnR5LXR3byBieXRlcyE=
  - identity: {}
";

/// A Secret as `kubectl create secret generic --from-literal` writes one: two small keys.
fn secret(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "data": {"username": "YWRtaW4=", "password": "Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ=="},
    })
}

/// `clients` connections creating objects (`object(name)`) in `collection` as fast as they are
/// answered, for one second of warm-up and then `measured`.
async fn creates(
    api: &Api,
    clients: usize,
    measured: Duration,
    collection: &'static str,
    object: fn(&str) -> Value,
) -> Result<Samples> {
    let warm_until = Instant::now() + Duration::from_secs(1);
    let end = warm_until + measured;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let api = api.clone();
            tokio::spawn(async move {
                let mut connection = api.connect().await?;
                let mut latencies = Vec::new();
                for i in 0.. {
                    let start = Instant::now();
                    if start >= end {
                        break;
                    }
                    connection.create(collection, &object(&format!("c{c}-{i}"))).await?;
                    if start >= warm_until {
                        latencies.push(start.elapsed());
                    }
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut samples = Samples::default();
    samples.elapsed = measured;
    for task in tasks {
        samples.extend(task.await??);
    }
    Ok(samples)
}

/// Creates `count` pods in `namespace` with `clients` connections.
async fn fill(api: &Api, namespace: &str, count: usize, clients: usize) -> Result<()> {
    let mut connection = api.connect().await?;
    connection.create("/api/v1/namespaces", &json!({"metadata": {"name": namespace}})).await?;
    let collection = format!("/api/v1/namespaces/{namespace}/pods");
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (api, collection) = (api.clone(), collection.clone());
            tokio::spawn(async move {
                let mut connection = api.connect().await?;
                for i in (c..count).step_by(clients) {
                    connection.create(&collection, &pod(&format!("pod-{i}"))).await?;
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

/// Only what paging needs of a list: the client's decoding should not be what is measured.
#[derive(serde::Deserialize)]
struct List {
    metadata: ListMeta,
    items: Vec<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct ListMeta {
    #[serde(rename = "continue")]
    next: Option<String>,
}

/// How long a full list of the `list` namespace's pods takes, whole or page by page.
async fn list_latencies(api: &Api, times: usize, page: Option<usize>) -> Result<Samples> {
    let mut connection = api.connect().await?;
    let mut samples = Samples::default();
    let mut latencies = Vec::new();
    let all = Instant::now();
    for _ in 0..times {
        let start = Instant::now();
        let mut token = String::new();
        let mut items = 0;
        loop {
            let mut path = "/api/v1/namespaces/list/pods".to_string();
            if let Some(limit) = page {
                path += &format!("?limit={limit}&continue={token}");
            }
            let list: List = serde_json::from_slice(&connection.get(&path).await?)?;
            items += list.items.len();
            match list.metadata.next {
                Some(next) if !next.is_empty() => token = next,
                _ => break,
            }
        }
        latencies.push(start.elapsed());
        if items == 0 {
            bail!("the list came back empty");
        }
    }
    samples.extend(latencies);
    samples.elapsed = all.elapsed();
    Ok(samples)
}

/// `watchers` watches on the `watch` namespace's pods, then `updates` annotation patches, one
/// after another, spread over ten pods. Each update carries its sequence number; a watcher
/// measures each event from the moment its update was sent until the event arrived.
async fn fan_out(api: &Api, watchers: usize, updates: usize) -> Result<Samples> {
    const PODS: usize = 10;
    fill(api, "watch", PODS, 1).await?;
    let mut writer = api.connect().await?;
    let list: Value = serde_json::from_slice(&writer.get("/api/v1/namespaces/watch/pods").await?)?;
    let from = list["metadata"]["resourceVersion"].as_str().context("the list's resourceVersion")?.to_string();
    let sent: Arc<Vec<OnceLock<Instant>>> = Arc::new((0..updates).map(|_| OnceLock::new()).collect());
    let (established, mut ready) = tokio::sync::mpsc::channel(watchers);

    let tasks: Vec<_> = (0..watchers)
        .map(|_| {
            let (api, from, sent, established) = (api.clone(), from.clone(), sent.clone(), established.clone());
            tokio::spawn(async move {
                let mut connection = api.connect().await?;
                let path = format!("/api/v1/namespaces/watch/pods?watch=1&resourceVersion={from}");
                let mut body = connection.send(Method::GET, &path, "application/json", Vec::new()).await?.into_body();
                established.send(()).await?;
                let mut latencies = Vec::with_capacity(updates);
                let mut pending = Vec::new();
                while latencies.len() < updates {
                    let Some(frame) = body.frame().await.transpose()? else { bail!("the watch ended early") };
                    let Ok(data) = frame.into_data() else { continue };
                    let arrived = Instant::now();
                    pending.extend_from_slice(&data);
                    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        if let Some(seq) = sequence(&line)
                            && let Some(at) = sent.get(seq).and_then(OnceLock::get)
                        {
                            latencies.push(arrived - *at);
                        }
                    }
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    for _ in 0..watchers {
        ready.recv().await.context("a watcher failed to start")?;
    }

    let started = Instant::now();
    for (seq, at) in sent.iter().enumerate() {
        let _ = at.set(Instant::now());
        let patch = json!({"metadata": {"annotations": {"bench-seq": seq.to_string()}}});
        let path = format!("/api/v1/namespaces/watch/pods/pod-{}", seq % PODS);
        writer.call(Method::PATCH, &path, "application/merge-patch+json", serde_json::to_vec(&patch)?).await?;
    }
    let mut samples = Samples::default();
    for task in tasks {
        samples.extend(tokio::time::timeout(Duration::from_secs(120), task).await.context("a watcher stalled")???);
    }
    samples.elapsed = started.elapsed();
    Ok(samples)
}

/// The `bench-seq` annotation of a watch event's object, found without parsing the event.
fn sequence(line: &[u8]) -> Option<usize> {
    const KEY: &[u8] = br#""bench-seq":""#;
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits]).ok()?.parse().ok()
}
