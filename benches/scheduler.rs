//! The scheduler and the controllers at scale, on hollow nodes (`flotilla agent --hollow`, as
//! kubemark's): 30,000 pending pods scheduled and bound onto 1,000 nodes (pods/s, by the
//! scheduler alone, started once they all wait), the time from a pod's creation to its binding
//! while pods are created as fast as 32 clients can, and a 1,000-replica Deployment from apply
//! to all replicas Running, then a full rolling update of it.
//!
//! No peer runs beside it: kube-scheduler cannot be installed here; BENCHMARKS.md compares with
//! its published figures (~100 pods/s in the 5,000-node test, ~300 pods/s in third-party runs).
//!
//! `cargo bench -p flotilla-benches --bench scheduler -- [--nodes 1000] [--pods 30000]`

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use flotilla_benches::kube_api::Api;
use flotilla_benches::process::{Running, cpu_seconds, flotilla_bin, free_port};
use flotilla_benches::{Report, Samples};
use http::Method;
use http_body_util::BodyExt;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// Hollow nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pending pods the scheduler places in the throughput run.
    #[arg(long, default_value_t = 30_000)]
    pods: usize,
    /// Pods created while the scheduler runs, for creation-to-binding latency.
    #[arg(long, default_value_t = 5000)]
    latency_pods: usize,
    /// Concurrent clients creating pods.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Replicas of the Deployment.
    #[arg(long, default_value_t = 1000)]
    replicas: usize,
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
        (args.nodes, args.pods, args.latency_pods, args.clients, args.replicas) = (5, 50, 20, 4, 10);
    }
    let mut report = Report::solo("scheduler").smoke(args.smoke);
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    // The control plane without its scheduler, which starts once the pods wait.
    let mut server = Running::spawn(
        Command::new(flotilla_bin()?)
            .args(["server", "--no-node", "--disable", "scheduler", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--peer-listen", &format!("127.0.0.1:{}", free_port()?)]),
    )?;
    let line = server.wait_for_line(Duration::from_secs(30), |l| l.starts_with("kubeconfig: "))?;
    let kubeconfig = line.trim_start_matches("kubeconfig: ").to_string();
    let api = Api::from_kubeconfig(kubeconfig.as_ref())?;
    // Hollow nodes act for many nodes at once, which no node identity may: they run as the admin.
    let hollow = Running::spawn(
        Command::new(flotilla_bin()?)
            .args(["agent", "--kubeconfig", &kubeconfig])
            .args(["--hollow", &args.nodes.to_string(), "--data-dir"])
            .arg(dir.path().join("hollow")),
    )?;
    let mut connection = api.connect().await?;
    let started = Instant::now();
    while count(&mut connection, "/api/v1/nodes").await? < args.nodes {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the hollow nodes did not all register within 5 min");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{} hollow nodes registered in {:.1} s", args.nodes, started.elapsed().as_secs_f64());

    eprintln!("== {} pending pods, then the scheduler", args.pods);
    let created = create_pods(&api, "pending", args.pods, args.clients).await?;
    eprintln!("created {} pods at {:.0}/s", args.pods, args.pods as f64 / created.elapsed.as_secs_f64());
    let bindings = Bindings::watch(&api, "pending").await?;
    let own = std::process::id();
    let cpu_before = [server.cpu_seconds()?, hollow.cpu_seconds()?, cpu_seconds(own)?];
    let scheduler = Running::spawn(Command::new(flotilla_bin()?).args(["scheduler", "--kubeconfig", &kubeconfig]))?;
    let (first, last) = bindings.wait_for(args.pods, Duration::from_secs(600)).await?;
    let rate = args.pods as f64 / (last - first).as_secs_f64();
    report.add(format!("schedule {} pending pods on {} nodes", args.pods, args.nodes), "pods/s", rate, None);
    // CPU per placed pod, steadier than the rate, which moves with whatever else the machine
    // runs. The hollow nodes' share is their status writes (Running) trailing the bindings.
    let per_pod_ms = |seconds: f64| seconds * 1000.0 / args.pods as f64;
    let cpu = [
        ("API server and controllers", server.cpu_seconds()? - cpu_before[0]),
        ("scheduler", scheduler.cpu_seconds()?),
        ("hollow nodes", hollow.cpu_seconds()? - cpu_before[1]),
    ];
    for (process, seconds) in cpu {
        report.add(format!("CPU per pod scheduled: {process}"), "ms", per_pod_ms(seconds), None);
    }
    bindings.log_spread(first);
    // The benchmark's own watch does the same work in every run: its CPU per pod shows how fast
    // the machine was (shared machines vary by a third between runs), to read the others against.
    eprintln!("yardstick: the benchmark's watch used {:.2} ms per pod", per_pod_ms(cpu_seconds(own)? - cpu_before[2]));

    eprintln!("== {} pods created while the scheduler runs", args.latency_pods);
    let bindings = Bindings::watch(&api, "latency").await?;
    let created = create_pods(&api, "latency", args.latency_pods, args.clients).await?;
    bindings.wait_for(args.latency_pods, Duration::from_secs(300)).await?;
    let mut latency = bindings.latencies(&created.at);
    report.add("creation to binding, pods created by 32 clients: p50", "ms", latency.quantile_ms(0.50), None);
    report.add("creation to binding, pods created by 32 clients: p99", "ms", latency.quantile_ms(0.99), None);
    report.add("scheduler RSS after placing them all", "MiB", scheduler.memory_mib()?.0, None);

    // The Deployment is measured on a settled cluster: the hollow kubelets report pods Running
    // behind the scheduler's bindings, and pods still queued there would delay its own.
    let mut connection = api.connect().await?;
    let started = Instant::now();
    while count(&mut connection, "/api/v1/pods?fieldSelector=status.phase!=Running&limit=1").await? > 0 {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the hollow nodes did not report every pod Running within 10 min");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report.add("hollow nodes: every pod Running, after the last binding", "s", started.elapsed().as_secs_f64(), None);
    let pods = args.pods + args.latency_pods;
    let hollow_rss = hollow.memory_mib()?.0;
    report.add(format!("hollow nodes RSS, {pods} pods Running on {} nodes", args.nodes), "MiB", hollow_rss, None);

    eprintln!("== a Deployment of {} replicas", args.replicas);
    connection.create("/api/v1/namespaces", &json!({"metadata": {"name": "deploy"}})).await?;
    let collection = "/apis/apps/v1/namespaces/deploy/deployments";
    let started = Instant::now();
    connection.create(collection, &deployment(args.replicas, "web:v1")).await?;
    wait_rolled_out(&mut connection, args.replicas, Duration::from_secs(600)).await?;
    report.add(
        format!("Deployment of {} replicas: apply to all Running", args.replicas),
        "s",
        started.elapsed().as_secs_f64(),
        None,
    );
    let started = Instant::now();
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "web:v2"}]}}}});
    connection
        .call(
            Method::PATCH,
            &format!("{collection}/web"),
            "application/strategic-merge-patch+json",
            serde_json::to_vec(&patch)?,
        )
        .await?;
    // Let the controller see the new generation before checking for completion.
    tokio::time::sleep(Duration::from_millis(200)).await;
    wait_rolled_out(&mut connection, args.replicas, Duration::from_secs(900)).await?;
    report.add(format!("rolling update of all {} replicas", args.replicas), "s", started.elapsed().as_secs_f64(), None);
    report.add("server RSS at the end (controllers included)", "MiB", server.memory_mib()?.0, None);
    report.publish()?;
    Ok(())
}

/// How many objects a collection holds.
async fn count(connection: &mut flotilla_benches::kube_api::Connection, path: &str) -> Result<usize> {
    let list: Value = serde_json::from_slice(&connection.get(path).await?)?;
    Ok(list["items"].as_array().map_or(0, Vec::len))
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "app", "image": "hello.wasm:1.0", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    })
}

fn deployment(replicas: usize, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": image}]}},
        },
    })
}

/// When each pod's create returned.
struct Created {
    at: HashMap<String, Instant>,
    elapsed: Duration,
}

/// Creates `count` pods in a new namespace with `clients` connections.
async fn create_pods(api: &Api, namespace: &str, count: usize, clients: usize) -> Result<Created> {
    let mut connection = api.connect().await?;
    connection.create("/api/v1/namespaces", &json!({"metadata": {"name": namespace}})).await?;
    let collection = format!("/api/v1/namespaces/{namespace}/pods");
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (api, collection) = (api.clone(), collection.clone());
            tokio::spawn(async move {
                let mut connection = api.connect().await?;
                let mut at = Vec::new();
                for i in (c..count).step_by(clients) {
                    let name = format!("pod-{i}");
                    connection.create(&collection, &pod(&name)).await?;
                    at.push((name, Instant::now()));
                }
                anyhow::Ok(at)
            })
        })
        .collect();
    let mut at = HashMap::new();
    for task in tasks {
        at.extend(task.await??);
    }
    Ok(Created { at, elapsed: started.elapsed() })
}

/// When each pod of a namespace was first seen bound, from a watch.
struct Bindings {
    bound: Arc<Mutex<HashMap<String, Instant>>>,
    _task: tokio::task::JoinHandle<Result<()>>,
}

impl Bindings {
    async fn watch(api: &Api, namespace: &str) -> Result<Bindings> {
        let mut connection = api.connect().await?;
        let path = format!("/api/v1/namespaces/{namespace}/pods?watch=1");
        let mut body = connection.send(Method::GET, &path, "application/json", Vec::new()).await?.into_body();
        let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let seen = bound.clone();
        let task = tokio::spawn(async move {
            let _connection = connection;
            let mut pending = Vec::new();
            while let Some(frame) = body.frame().await.transpose()? {
                let Ok(data) = frame.into_data() else { continue };
                let arrived = Instant::now();
                pending.extend_from_slice(&data);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let event: Value = serde_json::from_slice(&line)?;
                    let object = &event["object"];
                    if object["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
                        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
                        seen.lock().expect("bindings lock").entry(name).or_insert(arrived);
                    }
                }
            }
            Ok(())
        });
        Ok(Bindings { bound, _task: task })
    }

    /// Waits until `count` pods are bound; the first and last binding times.
    async fn wait_for(&self, count: usize, timeout: Duration) -> Result<(Instant, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let bound = self.bound.lock().expect("bindings lock");
                if bound.len() >= count {
                    let first = bound.values().min().copied().context("no bindings")?;
                    let last = bound.values().max().copied().context("no bindings")?;
                    return Ok((first, last));
                }
                if Instant::now() > deadline {
                    bail!("only {} of {count} pods bound within {timeout:?}", bound.len());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// When a tenth, half, nine tenths, 99% and all of the pods were bound, to stderr: a
    /// slow tail (bindings retried after a backoff) shows here and not in the average.
    fn log_spread(&self, first: Instant) {
        let bound = self.bound.lock().expect("bindings lock");
        let mut at: Vec<f64> = bound.values().map(|t| t.duration_since(first).as_secs_f64()).collect();
        at.sort_by(f64::total_cmp);
        let share = |q: f64| at.get(((at.len() as f64 * q) as usize).min(at.len().saturating_sub(1))).copied();
        let marks: Vec<String> = [0.1, 0.5, 0.9, 0.99, 1.0]
            .iter()
            .filter_map(|q| Some(format!("{:.0}% at {:.2} s", q * 100.0, share(*q)?)))
            .collect();
        eprintln!("bound: {}", marks.join(", "));
    }

    /// Creation-to-binding time of each pod (zero when the binding was seen before the create
    /// returned).
    fn latencies(&self, created: &HashMap<String, Instant>) -> Samples {
        let bound = self.bound.lock().expect("bindings lock");
        let mut samples = Samples::default();
        samples.extend(
            created.iter().filter_map(|(name, at)| Some(bound.get(name)?.saturating_duration_since(*at))).collect(),
        );
        samples
    }
}

/// Waits until the Deployment's current template is fully rolled out and available.
async fn wait_rolled_out(
    connection: &mut flotilla_benches::kube_api::Connection,
    replicas: usize,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let d: Value =
            serde_json::from_slice(&connection.get("/apis/apps/v1/namespaces/deploy/deployments/web").await?)?;
        let status = &d["status"];
        let n = |f: &str| status[f].as_u64().unwrap_or(0) as usize;
        let current = status["observedGeneration"] == d["metadata"]["generation"];
        if current
            && n("updatedReplicas") == replicas
            && n("availableReplicas") == replicas
            && n("replicas") == replicas
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the Deployment did not roll out within {timeout:?}: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
