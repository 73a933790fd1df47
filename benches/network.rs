//! Traffic through Services, as users send it: a release `flotilla server --no-node` and a
//! `flotilla agent` (whose proxy and DNS server are measured) on loopback addresses of their
//! own, once for each data path: nftables and the userspace relay. As root the benchmark
//! re-runs itself in a network namespace of its own (`unshare --net`), so that the kernel data
//! path programs that namespace's table, not the machine's; otherwise it measures userspace
//! alone.
//!
//! 1. HTTP to a Deployment of `wasm-examples/http` through its cluster IP, beside the same load
//!    straight to a pod's IP (`wrk`; the module closes each connection, so every request is a
//!    connection set up through the relay): requests/s and p99, and their ratio.
//!    The same from a wasm client: `wrk` asks a `wasm-examples/handler` pod to call the
//!    Service (`?call=<cluster IP>`, which the runtime connects straight to a pod), beside it
//!    calling the pod's IP.
//! 2. One request on a new connection, one at a time: p50 through the Service and direct.
//! 3. A pod of a Service, from Ready (as a client sees it) to taking connections at the cluster
//!    IP: p50 and p99 over `--propagations` pods.
//! 4. Programming: `--services` Services of 10 endpoints each (selector-less, their
//!    EndpointSlices written alongside) created at once, timed until every cluster IP accepts;
//!    the agent's memory for them; then, with `--existing` Services in place, one more, timed
//!    from its create to its cluster IP accepting (`--adds` times).
//! 5. The cluster DNS from the host: `--dns-clients` clients asking an A record over UDP for
//!    `--seconds`: queries/s and p99.
//!
//! `cargo bench -p flotilla-benches --bench network -- [--services N] [--existing N] [--seconds N]`

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use flotilla_benches::kube_api::{Api, Connection};
use flotilla_benches::process::{Cluster, ClusterConfig};
use flotilla_benches::{Report, Samples, wrk};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

#[derive(Debug, Parser)]
struct Args {
    /// Services created at once for the programming measurement.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Services in place when one more is added.
    #[arg(long, default_value_t = 10_000)]
    existing: usize,
    /// Services added one at a time, each timed.
    #[arg(long, default_value_t = 20)]
    adds: usize,
    /// Seconds of each load (wrk, DNS).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Requests one at a time on new connections.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent DNS clients.
    #[arg(long, default_value_t = 32)]
    dns_clients: usize,
    /// Pods brought into rotation one at a time, each timed.
    #[arg(long, default_value_t = 50)]
    propagations: usize,
    /// Every scenario at a tiny size: that the benchmark still runs (CI).
    #[arg(long)]
    smoke: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

const NAMESPACE: &str = "bench";
const NODE: &str = "bench-node";
/// The cluster's ranges, away from the single-host defaults so that a server running on this
/// machine is left alone.
const SERVICE_CIDR: &str = "127.60.0.0/16";
const DNS: &str = "127.60.0.10:53";
const NODE_IP: &str = "127.61.0.1";
const POD_CIDR: &str = "127.62.0.0/16";

/// Set in the benchmark re-run inside a network namespace of its own.
const OWN_NETWORK_NAMESPACE: &str = "FLOTILLA_BENCH_NETNS";

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        (args.services, args.existing, args.adds, args.seconds, args.requests, args.dns_clients, args.propagations) =
            (10, 20, 3, 1, 20, 4, 2);
    }
    // As root the benchmark runs again in a network namespace of its own, where the kernel data
    // path may program its table without touching the machine's.
    let own_namespace = std::env::var_os(OWN_NETWORK_NAMESPACE).is_some();
    if !own_namespace && rustix::process::geteuid().is_root() {
        let status = std::process::Command::new("unshare")
            .args(["--net", "--"])
            .arg(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env(OWN_NETWORK_NAMESPACE, "1")
            .status()
            .context("unshare --net")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let modes: &[&str] = if own_namespace {
        let up = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status()?;
        ensure!(up.success(), "cannot bring lo up");
        // Conntrack's, this namespace's alone: see the HTTP measurement.
        let _ = std::fs::write("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait", "1");
        &["nftables", "userspace"]
    } else {
        eprintln!("(not root: the userspace data path alone)");
        &["userspace"]
    };
    let mut report = Report::new("network", "pod IP direct").smoke(args.smoke);
    for mode in modes {
        measure(&args, mode, &mut report).await?;
        if *mode == "nftables" {
            // The agent was killed, not stopped: its table stays until deleted, and would take
            // the next cluster's cluster IPs.
            flotilla_net::Nftables::delete_table().map_err(anyhow::Error::msg)?;
        }
    }
    report.publish()?;
    Ok(())
}

/// Every measurement through the data path `mode`, its rows named after it.
async fn measure(args: &Args, mode: &str, report: &mut Report) -> Result<()> {
    let cluster = Cluster::start(&ClusterConfig {
        node: NODE,
        node_ip: Some(NODE_IP),
        pod_cidr: POD_CIDR,
        service_cidr: Some(SERVICE_CIDR),
        max_pods: None,
        images: &[(flotilla_examples::P1_HTTP, "http:bench"), (flotilla_examples::P2_HANDLER, "handler:bench")],
        proxy_mode: Some(mode),
        server_args: &[],
    })?;
    let mut connection = cluster.api.connect().await?;
    connection.create("/api/v1/namespaces", &json!({"metadata": {"name": NAMESPACE}})).await?;
    let row = |name: String| format!("{mode}: {name}");

    eprintln!("== {mode}: HTTP through a Service");
    let (cluster_ip, pod_ip) = web(&mut connection).await?;
    let (service_url, direct_url) = (format!("http://{cluster_ip}/"), format!("http://{pod_ip}:8080/"));
    // Each load opens a connection per request, and under nftables each leaves a conntrack
    // entry in TIME_WAIT: the next load waits for them to go (their timeout is cut to a second
    // in the benchmark's own network namespace), or it would meet them at every port.
    let direct = wrk(&direct_url, args.seconds, 32);
    tokio::time::sleep(Duration::from_secs(3)).await;
    match (wrk(&service_url, args.seconds, 32), direct) {
        (Ok((service_rps, service_p99)), Ok((direct_rps, direct_p99))) => {
            report.add(row("HTTP, wrk 32 connections: requests/s".into()), "requests/s", service_rps, Some(direct_rps));
            report.add(row("HTTP, wrk 32 connections: p99".into()), "ms", service_p99, Some(direct_p99));
        }
        (service, direct) => eprintln!("wrk: {service:?} {direct:?} (scripts/bench installs it)"),
    }
    let client = handler(&mut connection).await?;
    let direct = wrk(&format!("http://{client}:8080/?call={pod_ip}:8080"), args.seconds, 32);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // By cluster IP, then by the Service's short name: the guest resolves it through its
    // search path from the node's memory, with no query on the wire.
    for (called, how) in [(cluster_ip.to_string(), ""), ("web".to_string(), " by name")] {
        match (wrk(&format!("http://{client}:8080/?call={called}"), args.seconds, 32), &direct) {
            (Ok((service_rps, service_p99)), Ok((direct_rps, direct_p99))) => {
                let name = format!("HTTP from a wasm client{how}, wrk 32 connections");
                report.add(row(format!("{name}: requests/s")), "requests/s", service_rps, Some(*direct_rps));
                report.add(row(format!("{name}: p99")), "ms", service_p99, Some(*direct_p99));
            }
            (service, direct) => eprintln!("wrk: {service:?} {direct:?} (scripts/bench installs it)"),
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let through = one_at_a_time(SocketAddr::new(cluster_ip.into(), 80), args.requests).await?;
    let direct = one_at_a_time(SocketAddr::new(pod_ip.into(), 8080), args.requests).await?;
    report.add(row("a request on a new connection, p50".into()), "µs", through * 1000.0, Some(direct * 1000.0));

    eprintln!("== {mode}: a pod Ready to in rotation, {} times", args.propagations);
    let mut propagation = Samples::default();
    for i in 0..args.propagations {
        propagation.extend(vec![ready_to_rotation(&mut connection, i).await?]);
    }
    report.add(row("pod Ready to in rotation, p50".into()), "ms", propagation.quantile_ms(0.5), None);
    report.add(row("pod Ready to in rotation, p99".into()), "ms", propagation.quantile_ms(0.99), None);

    eprintln!("== {mode}: programming {} Services × 10 endpoints", args.services);
    let _endpoints = Endpoints::listen().await?;
    let (before, _) = cluster.agent.memory_mib()?;
    let started = Instant::now();
    let ips = services(&cluster.api, 0..args.services).await?;
    accepting(&ips, Duration::from_secs(120)).await?;
    let took = started.elapsed();
    let (after, _) = cluster.agent.memory_mib()?;
    let programmed = format!("{} Services × 10 endpoints", args.services);
    report.add(row(format!("{programmed}: programmed")), "ms", took.as_secs_f64() * 1e3, None);
    report.add(row(format!("{programmed}: agent memory")), "MiB", after - before, None);

    eprintln!("== {mode}: one more Service, {} in place", args.existing);
    let ips = services(&cluster.api, args.services..args.existing).await?;
    accepting(&ips, Duration::from_secs(600)).await?;
    let mut added = Samples::default();
    let all = Instant::now();
    for i in 0..args.adds {
        let started = Instant::now();
        let ips = services(&cluster.api, args.existing + i..args.existing + i + 1).await?;
        accepting(&ips, Duration::from_secs(30)).await?;
        added.extend(vec![started.elapsed()]);
    }
    added.elapsed = all.elapsed();
    let one_more = format!("one Service more at {}: create to accepting", args.existing);
    report.add(row(format!("{one_more}, p50")), "ms", added.quantile_ms(0.5), None);
    report.add(row(format!("{one_more}, max")), "ms", added.quantile_ms(1.0), None);

    eprintln!("== {mode}: the cluster DNS from the host");
    let name = format!("web.{NAMESPACE}.svc.cluster.local");
    let mut queries = dns_load(DNS.parse()?, &name, args.dns_clients, Duration::from_secs(args.seconds)).await?;
    let dns = format!("DNS A over UDP, {} clients", args.dns_clients);
    report.add(row(format!("{dns}: queries/s")), "queries/s", queries.per_second(), None);
    report.add(row(format!("{dns}: p99")), "ms", queries.quantile_ms(0.99), None);
    let (rss, _) = cluster.agent.memory_mib()?;
    report.add(row("agent RSS at the end".into()), "MiB", rss, None);
    Ok(())
}

/// One pod of Service `rotation` (whose only pod it is) from the moment a client sees it Ready
/// to the moment the Service's cluster IP takes a connection to it: the EndpointSlice
/// controller, the proxy and the data path together. The pod is deleted after, and the Service
/// seen to refuse again.
async fn ready_to_rotation(connection: &mut Connection, i: usize) -> Result<Duration> {
    let pods = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    if i == 0 {
        let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "rotation"},
            "spec": {"selector": {"app": "rotation"}, "ports": [{"port": 80, "targetPort": 8080}]}});
        connection.create(&format!("/api/v1/namespaces/{NAMESPACE}/services"), &service).await?;
    }
    let service: Value =
        serde_json::from_slice(&connection.get(&format!("/api/v1/namespaces/{NAMESPACE}/services/rotation")).await?)?;
    let cluster_ip: Ipv4Addr = service["spec"]["clusterIP"].as_str().context("a cluster IP")?.parse()?;
    let name = format!("rotation-{i}");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "rotation"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "http", "image": "http:bench", "ports": [{"containerPort": 8080}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}});
    connection.create(&pods, &pod).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        let pod: Value = serde_json::from_slice(&connection.get(&format!("{pods}/{name}")).await?)?;
        let conditions = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
        if conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True") {
            break Instant::now();
        }
        ensure!(Instant::now() < deadline, "{name} never became Ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    accepting(&[cluster_ip], Duration::from_secs(30)).await?;
    let took = ready.elapsed();
    connection
        .send(http::Method::DELETE, &format!("{pods}/{name}?gracePeriodSeconds=0"), "application/json", Vec::new())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect((cluster_ip, 80)).await.is_ok() {
        ensure!(Instant::now() < deadline, "{cluster_ip} still accepts with its pod deleted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(took)
}

/// A Deployment of two HTTP pods behind Service `web`, ready and answering at its cluster IP:
/// that IP and one pod's.
async fn web(connection: &mut Connection) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let labels = json!({"app": "web"});
    let container = json!({"name": "http", "image": "http:bench", "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1}});
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}}});
    connection.create(&format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments"), &deployment).await?;
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]}});
    connection.create(&format!("/api/v1/namespaces/{NAMESPACE}/services"), &service).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let deployment: Value = serde_json::from_slice(
            &connection.get(&format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/web")).await?,
        )?;
        if deployment["status"]["readyReplicas"] == 2 {
            break;
        }
        ensure!(Instant::now() < deadline, "web never became ready: {}", deployment["status"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let service: Value =
        serde_json::from_slice(&connection.get(&format!("/api/v1/namespaces/{NAMESPACE}/services/web")).await?)?;
    let cluster_ip: Ipv4Addr = service["spec"]["clusterIP"].as_str().context("a cluster IP")?.parse()?;
    let pods: Value = serde_json::from_slice(&connection.get(&format!("/api/v1/namespaces/{NAMESPACE}/pods")).await?)?;
    let pod_ip: Ipv4Addr = pods["items"][0]["status"]["podIP"].as_str().context("a pod IP")?.parse()?;
    accepting(&[cluster_ip], Duration::from_secs(30)).await?;
    Ok((cluster_ip, pod_ip))
}

/// A `wasi:http` pod running `handler`, ready: its IP.
async fn handler(connection: &mut Connection) -> Result<Ipv4Addr> {
    let pods = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {"nodeName": NODE, "containers": [{"name": "handler", "image": "handler:bench", "ports": [{"containerPort": 8080}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}});
    connection.create(&pods, &pod).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pod: Value = serde_json::from_slice(&connection.get(&format!("{pods}/client")).await?)?;
        let conditions = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
        if conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True") {
            return Ok(pod["status"]["podIP"].as_str().context("a pod IP")?.parse()?);
        }
        ensure!(Instant::now() < deadline, "the client pod never became Ready: {}", pod["status"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sequential requests, each on a new connection: the p50 in ms.
async fn one_at_a_time(at: SocketAddr, requests: usize) -> Result<f64> {
    let mut samples = Samples::default();
    let all = Instant::now();
    for _ in 0..requests {
        let started = Instant::now();
        let mut stream = TcpStream::connect(at).await?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        ensure!(response.starts_with(b"HTTP/1.1 200"), "{at}: {}", String::from_utf8_lossy(&response));
        samples.extend(vec![started.elapsed()]);
    }
    samples.elapsed = all.elapsed();
    Ok(samples.quantile_ms(0.5))
}

/// Selector-less Services `s-<i>` for `range`, each with an EndpointSlice of 10 endpoints,
/// created by 8 clients: their cluster IPs.
async fn services(api: &Api, range: std::ops::Range<usize>) -> Result<Vec<Ipv4Addr>> {
    let indexes: Vec<usize> = range.collect();
    let mut tasks = Vec::new();
    for chunk in indexes.chunks(indexes.len().div_ceil(8).max(1)) {
        let (chunk, api) = (chunk.to_vec(), api.clone());
        tasks.push(tokio::spawn(async move {
            let mut connection = api.connect().await?;
            let mut ips = Vec::new();
            for i in chunk {
                let name = format!("s-{i}");
                let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}});
                let path = format!("/api/v1/namespaces/{NAMESPACE}/services");
                let created = connection.send(http::Method::POST, &path, "application/json", serde_json::to_vec(&service)?).await?;
                let body = http_body_util::BodyExt::collect(created.into_body()).await?.to_bytes();
                let created: Value = serde_json::from_slice(&body)?;
                ips.push(created["spec"]["clusterIP"].as_str().with_context(|| format!("{created}"))?.parse::<Ipv4Addr>()?);
                let endpoints: Vec<Value> = (0..10)
                    .map(|e| json!({"addresses": [endpoint(i, e).to_string()], "conditions": {"ready": true}}))
                    .collect();
                let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": name, "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": endpoints});
                connection.create(&format!("/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"), &slice).await?;
            }
            anyhow::Ok(ips)
        }));
    }
    let mut ips = Vec::new();
    for task in tasks {
        ips.extend(task.await??);
    }
    Ok(ips)
}

/// Endpoint `e` of Service `s-<i>`, one of the 1,000 addresses [`Endpoints`] listens on.
fn endpoint(i: usize, e: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 62, 100 + (i % 100) as u8, 1 + e as u8)
}

/// Listeners on every address [`endpoint`] gives, port 8080, that take connections and close
/// them: the Services' endpoints, so that a data path that forwards connections (nftables)
/// meets something, as a relay's listener does.
struct Endpoints(Vec<tokio::task::JoinHandle<()>>);

impl Endpoints {
    async fn listen() -> Result<Endpoints> {
        let mut tasks = Vec::new();
        for i in 0..100 {
            for e in 0..10 {
                let listener = tokio::net::TcpListener::bind((endpoint(i, e), 8080)).await?;
                tasks.push(tokio::spawn(async move { while listener.accept().await.is_ok() {} }));
            }
        }
        Ok(Endpoints(tasks))
    }
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// Waits until every one of `ips` accepts a connection on port 80.
async fn accepting(ips: &[Ipv4Addr], within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    for ip in ips {
        while TcpStream::connect((*ip, 80)).await.is_err() {
            if Instant::now() > deadline {
                bail!("{ip}:80 does not accept");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(())
}

/// `clients` UDP clients asking `name`'s A record of `server` one query after another for
/// `duration`.
async fn dns_load(server: SocketAddr, name: &str, clients: usize, duration: Duration) -> Result<Samples> {
    let query = dns_query(name)?;
    let mut tasks = Vec::new();
    let all = Instant::now();
    for _ in 0..clients {
        let query = query.clone();
        tasks.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await?;
            socket.connect(server).await?;
            let mut latencies = Vec::new();
            let mut buf = [0u8; 512];
            let end = Instant::now() + duration;
            while Instant::now() < end {
                let started = Instant::now();
                socket.send(&query).await?;
                let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
                    .await
                    .context("no answer")??;
                ensure!(n > 12 && buf[3] & 0x0f == 0, "an error answer");
                latencies.push(started.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut samples = Samples::default();
    for task in tasks {
        samples.extend(task.await??);
    }
    samples.elapsed = all.elapsed();
    Ok(samples)
}

/// A recursive A query for `name`.
fn dns_query(name: &str) -> Result<Vec<u8>> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(format!("{name}."))?, RecordType::A));
    Ok(query.to_vec()?)
}
