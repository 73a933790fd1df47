//! Store writes, side by side with etcd: the same workload (key space, value size, concurrency)
//! against a flotilla store group and an etcd cluster of the same size, on loopback, in one run.
//!
//! Each client has its own connection and one write in flight: flotilla's members are written
//! through their peer API, etcd's through gRPC (`etcdserverpb.KV/Put` over HTTP/2). Both speak
//! mutual TLS everywhere, between members and to clients, as a production etcd under an API
//! server does and as flotilla's peer API always does. Clients are spread round-robin over the
//! members, leader first, so followers forward as in real use and a lone client always talks to
//! the leader.
//!
//! `cargo bench -p flotilla-benches --bench store -- [--seconds N] [--clients 1,64] [--members 1,3]`
//! `--smoke` runs every scenario for a moment, to show that the benchmark still runs.

use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use flotilla_auth::pki::{Authority, Issued, Profile, StoreMember};
use flotilla_benches::process::{Running, flotilla_bin, free_port};
use flotilla_benches::{Report, Samples};
use flotilla_store::StoreClient;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The store group's secret in this benchmark.
const SECRET: &str = "the-store-benchmark-group-secret-0123456789";

#[derive(Debug, Parser)]
struct Args {
    /// Seconds of measured writes per scenario and system (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients to run, each with its own connection and one write in flight.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    /// Group sizes to run.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    members: Vec<usize>,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys written over.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Measure flotilla alone (when etcd is not installed).
    #[arg(long)]
    no_peer: bool,
    /// A moment of every scenario, flotilla alone: that the benchmark still runs (CI).
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
        (args.seconds, args.keys, args.clients, args.no_peer) = (1, 100, vec![1, 4], true);
    }
    let mut report = Report::new("store", "etcd 3.4").smoke(args.smoke);
    for &members in &args.members {
        for &clients in &args.clients {
            let scenario = format!("{members} member{}, {clients} client{}", plural(members), plural(clients));
            eprintln!("== {scenario}");
            let mut ours = run(System::Flotilla, members, clients, &args).await.context("flotilla")?;
            let mut peer = if args.no_peer {
                None
            } else {
                Some(run(System::Etcd, members, clients, &args).await.context("etcd")?)
            };
            report.add(
                format!("{scenario}: writes/s"),
                "writes/s",
                ours.per_second(),
                peer.as_ref().map(Samples::per_second),
            );
            for (name, q) in [("p50", 0.50), ("p99", 0.99)] {
                report.add(
                    format!("{scenario}: {name} latency"),
                    "ms",
                    ours.quantile_ms(q),
                    peer.as_mut().map(|p| p.quantile_ms(q)),
                );
            }
        }
    }
    report.publish()?;
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[derive(Clone, Copy, Debug)]
enum System {
    Flotilla,
    Etcd,
}

/// Starts a fresh group, writes to it from `clients` clients and returns the measured writes.
async fn run(system: System, members: usize, clients: usize, args: &Args) -> Result<Samples> {
    let dir = tempfile::tempdir()?;
    let (_processes, mut endpoints, tls) = match system {
        System::Flotilla => start_flotilla(members, dir.path())?,
        System::Etcd => start_etcd(members, dir.path()).await?,
    };
    // The leader first: a lone client talks to it in both systems, so the row does not depend on
    // where the election happened to land; many clients still spread over every member.
    let leader = match system {
        System::Flotilla => flotilla_leader(&endpoints, &tls).await?,
        System::Etcd => etcd_leader(&endpoints, &tls).await?,
    };
    endpoints.swap(0, leader);
    let mut writers = Vec::new();
    for c in 0..clients {
        let endpoint = &endpoints[c % endpoints.len()];
        writers.push(match system {
            System::Flotilla => {
                Writer::Flotilla(Box::new(StoreClient::connect(endpoint.clone(), &tls, Duration::from_secs(30)).await?))
            }
            System::Etcd => Writer::Etcd(EtcdClient::connect(endpoint, &tls).await?),
        });
    }
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let warmup = if args.smoke { Duration::from_millis(200) } else { Duration::from_secs(1) };
    let warmup_end = Instant::now() + warmup;
    let end = warmup_end + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(c, writer)| {
            let (value, keys) = (value.clone(), args.keys);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for i in (c * 7919).. {
                    let start = Instant::now();
                    if start >= end {
                        break;
                    }
                    let key = format!("/bench/key/{:08}", i % keys);
                    writer.put(key.into_bytes(), value.clone()).await?;
                    if start >= warmup_end {
                        latencies.push(start.elapsed());
                    }
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut samples = Samples::default();
    for task in tasks {
        samples.extend(task.await??);
    }
    samples.elapsed = Duration::from_secs(args.seconds.max(1));
    eprintln!("   {system:?}: {:.0} writes/s", samples.per_second());
    if samples.per_second() == 0.0 {
        bail!("{system:?}: no write went through");
    }
    Ok(samples)
}

enum Writer {
    Flotilla(Box<StoreClient>),
    Etcd(EtcdClient),
}

impl Writer {
    async fn put(&self, key: Vec<u8>, value: Bytes) -> Result<()> {
        match self {
            Writer::Flotilla(client) => client.put(key, value.to_vec()).await.map(|_| ()).map_err(Into::into),
            Writer::Etcd(client) => client.put(&key, &value).await,
        }
    }
}

/// Starts `members` flotilla servers forming one store group (no node, no scheduler or
/// controllers: the store alone); returns them, their peer URLs and the first member's TLS,
/// which clients call as.
fn start_flotilla(members: usize, dir: &std::path::Path) -> Result<(Vec<Running>, Vec<String>, rustls::ClientConfig)> {
    let ports: Vec<u16> = (0..members).map(|_| free_port()).collect::<Result<_>>()?;
    let urls: Vec<String> = ports.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
    let initial: Vec<String> = urls.iter().enumerate().map(|(i, url)| format!("{}={url}", i + 1)).collect();
    let mut processes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let mut command = Command::new(flotilla_bin()?);
        command.arg("server").arg("--data-dir").arg(dir.join(format!("flotilla-{}", i + 1)));
        command.args(["--peer-listen", &format!("127.0.0.1:{port}"), "--member-id", &(i + 1).to_string()]);
        command.args(["--listen", &format!("127.0.0.1:{}", free_port()?)]);
        command.args(["--no-node", "--disable", "scheduler,controllers"]);
        if members > 1 {
            command.args(["--initial-cluster", &initial.join(","), "--cluster-token", SECRET]);
        }
        command.env("FLOTILLA_LOG", "warn");
        processes.push(Running::spawn(&mut command)?);
    }
    for process in &mut processes {
        process.wait_for_line(Duration::from_secs(60), |line| line.starts_with("kubeconfig: "))?;
    }
    let tls = StoreMember::load(&dir.join("flotilla-1/pki"))?.client_config()?;
    Ok((processes, urls, tls))
}

/// Writes `issued` as PEM files `<stem>.crt` and `<stem>.key` in `dir`; their paths.
fn write_pem(dir: &std::path::Path, stem: &str, issued: &Issued) -> Result<(String, String)> {
    let (cert, key) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    std::fs::write(&cert, &issued.cert_pem)?;
    std::fs::write(&key, &issued.key_pem)?;
    Ok((cert.display().to_string(), key.display().to_string()))
}

/// Starts `members` etcd servers forming one cluster, with mutual TLS between members and to
/// clients; returns them, their client URLs and a client's TLS.
async fn start_etcd(
    members: usize,
    dir: &std::path::Path,
) -> Result<(Vec<Running>, Vec<String>, rustls::ClientConfig)> {
    let (ca, _) = Authority::generate("etcd-bench-ca")?;
    let ca_file = dir.join("etcd-ca.crt");
    std::fs::write(&ca_file, ca.cert_pem())?;
    let ca_file = ca_file.display().to_string();
    let member_cert = ca.issue_key(&Profile {
        common_name: "etcd".into(),
        organizations: Vec::new(),
        names: vec!["127.0.0.1".into(), "localhost".into()],
        client: true,
        server: true,
    })?;
    let (cert_file, key_file) = write_pem(dir, "etcd-member", &member_cert)?;
    let clients: Vec<u16> = (0..members).map(|_| free_port()).collect::<Result<_>>()?;
    let peers: Vec<u16> = (0..members).map(|_| free_port()).collect::<Result<_>>()?;
    let initial: Vec<String> = peers.iter().enumerate().map(|(i, p)| format!("m{i}=https://127.0.0.1:{p}")).collect();
    let mut processes = Vec::new();
    for i in 0..members {
        let client_url = format!("https://127.0.0.1:{}", clients[i]);
        let peer_url = format!("https://127.0.0.1:{}", peers[i]);
        let mut command = Command::new("etcd");
        command.args(["--name", &format!("m{i}")]).arg("--data-dir").arg(dir.join(format!("etcd-{i}")));
        command.args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url]);
        command.args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url]);
        command.args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"]);
        command.args(["--initial-cluster-token", "bench", "--logger", "zap", "--log-level", "error"]);
        command.args(["--cert-file", &cert_file, "--key-file", &key_file, "--trusted-ca-file", &ca_file]);
        command.args(["--client-cert-auth"]);
        command.args(["--peer-cert-file", &cert_file, "--peer-key-file", &key_file]);
        command.args(["--peer-trusted-ca-file", &ca_file, "--peer-client-cert-auth"]);
        processes.push(Running::spawn(&mut command).context("is etcd installed? (apt-get install etcd-server)")?);
    }
    let client = ca.issue_key(&Profile::client("bench", &[]))?;
    let tls = flotilla_auth::tls::client_config(ca.cert_pem(), Some((&client.cert_pem, &client.key_der)))?;
    let urls: Vec<String> = clients.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
    // Ready when a write goes through on every member.
    for url in &urls {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let attempt = async { EtcdClient::connect(url, &tls).await?.put(b"/bench/ready", b"1").await };
            match attempt.await {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => bail!("etcd at {url} never became ready: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok((processes, urls, tls))
}

/// The index in `endpoints` of the flotilla member that leads.
async fn flotilla_leader(endpoints: &[String], tls: &rustls::ClientConfig) -> Result<usize> {
    let status = StoreClient::connect(endpoints[0].clone(), tls, Duration::from_secs(10)).await?.status().await?;
    let leader = status.leader.context("no leader")?;
    Ok(leader as usize - 1)
}

/// The index in `endpoints` of the etcd member that leads, from the JSON gateway's status call.
async fn etcd_leader(endpoints: &[String], tls: &rustls::ClientConfig) -> Result<usize> {
    for (i, endpoint) in endpoints.iter().enumerate() {
        let client = EtcdClient::connect(endpoint, tls).await?;
        let request = http::Request::post(format!("{endpoint}/v3/maintenance/status"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from("{}")))?;
        let body = client.send(request).await?.into_body().collect().await?.to_bytes();
        let status: serde_json::Value = serde_json::from_slice(&body)?;
        if status["leader"].is_string() && status["leader"] == status["header"]["member_id"] {
            return Ok(i);
        }
    }
    bail!("no etcd member says it leads")
}

/// A minimal etcd v3 client: `KV/Put` as a gRPC call over an HTTP/2 TLS connection of its own.
struct EtcdClient {
    http: tokio::sync::Mutex<hyper::client::conn::http2::SendRequest<Full<Bytes>>>,
    uri: http::Uri,
}

impl EtcdClient {
    async fn connect(endpoint: &str, tls: &rustls::ClientConfig) -> Result<Self> {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let uri: http::Uri = endpoint.parse()?;
        let authority = uri.authority().context("an etcd URL has an authority")?.clone();
        let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(authority.host().to_string())?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await?;
        let (http, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(EtcdClient { http: tokio::sync::Mutex::new(http), uri: format!("{endpoint}/etcdserverpb.KV/Put").parse()? })
    }

    async fn send(&self, request: http::Request<Full<Bytes>>) -> Result<http::Response<hyper::body::Incoming>> {
        let mut http = self.http.lock().await.clone();
        http.ready().await?;
        Ok(http.send_request(request).await?)
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        // PutRequest { key = 1; value = 2 } in protobuf, in a gRPC length-prefixed frame.
        let mut message = Vec::with_capacity(key.len() + value.len() + 12);
        for (field, bytes) in [(1u8, key), (2u8, value)] {
            message.push(field << 3 | 2);
            let mut len = bytes.len();
            while len >= 0x80 {
                message.push((len as u8) | 0x80);
                len >>= 7;
            }
            message.push(len as u8);
            message.extend_from_slice(bytes);
        }
        let mut frame = Vec::with_capacity(message.len() + 5);
        frame.push(0);
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let request = http::Request::post(self.uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(frame)))?;
        let response = self.send(request).await?;
        if response.status() != http::StatusCode::OK {
            bail!("etcd answered {}", response.status());
        }
        let headers = response.headers().clone();
        let collected = response.into_body().collect().await?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status =
            trailers.get("grpc-status").or(headers.get("grpc-status")).map(|v| v.to_str().unwrap_or("?").to_string());
        if status.as_deref() != Some("0") {
            let message = trailers.get("grpc-message").or(headers.get("grpc-message"));
            bail!("etcd put failed: grpc-status {status:?} {message:?}");
        }
        Ok(())
    }
}
