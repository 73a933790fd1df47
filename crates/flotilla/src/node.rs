//! Running a node agent, embedded in `flotilla server` or alone as `flotilla agent`: its
//! command-line options, its HTTPS API, and the agent itself.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use flotilla_apiserver::Cidr;
use flotilla_auth::pki;
use flotilla_auth::tls::ClientAuth;
use flotilla_node::{Agent, Capacity, NodeConfig, Threshold};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How a node runs; the same options for the embedded node and for `flotilla agent`.
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The node's name [default: this machine's host name].
    #[arg(long)]
    node_name: Option<String>,

    /// The address the API server and other nodes reach this node at.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) node_ip: Ipv4Addr,

    /// Where the node's HTTPS API (container logs) listens; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:10250")]
    node_listen: String,

    /// The range pods get their addresses from. In 127.0.0.0/8 pods need no network setup on
    /// a single host; give each node on one machine its own range.
    #[arg(long, default_value = "127.44.0.0/16")]
    pod_cidr: Cidr,

    /// How traffic to Services is carried: `nftables` (kernel DNAT, as kube-proxy's nftables
    /// mode; needs CAP_NET_ADMIN and `nft`), `userspace` (a relay on each frontend; no
    /// privileges), or `auto`: nftables where it can be programmed and the pod range is not
    /// loopback (pods on loopback are the relay's). One agent per network namespace may use
    /// nftables, since its table is the namespace's.
    #[arg(long, value_parser = parse_proxy_mode, default_value = "auto")]
    proxy_mode: flotilla_net::ProxyMode,

    /// Pods the node runs at most (its wasm instance slots; each reserves address space, not
    /// memory).
    #[arg(long, default_value_t = 10_000)]
    max_pods: u32,

    /// Let pods mount host directories (`hostPath` volumes).
    #[arg(long)]
    allow_host_path: bool,

    /// A registry (`host:port`) to pull from over plain HTTP (repeatable); for a registry on
    /// loopback.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,

    /// What to keep for the system, as `cpu=500m,memory=1Gi`: pods are offered the rest.
    #[arg(long, value_parser = parse_reserved, default_value = "")]
    system_reserved: Capacity,

    /// What to keep for Flotilla itself, as `cpu=100m,memory=256Mi`; adds to --system-reserved.
    #[arg(long, value_parser = parse_reserved, default_value = "")]
    kube_reserved: Capacity,

    /// The kubelet's hard eviction thresholds, as `memory.available<100Mi,nodefs.available<5%`
    /// (an amount, or a share of the whole): below the first the node evicts pods; below the
    /// second, space free on the data directory's file system, it reports DiskPressure and
    /// takes no more pods. A signal left out is not acted on, as upstream.
    #[arg(long, value_parser = parse_eviction_hard, default_value = "memory.available<100Mi,nodefs.available<5%")]
    eviction_hard: EvictionHard,

    /// How long the node reports MemoryPressure after the threshold was last met.
    #[arg(long, value_parser = crate::control::parse_duration, default_value = "5m")]
    eviction_pressure_transition_period: std::time::Duration,

    /// How long a connection to a Service scaling up from zero is held for an endpoint before
    /// it is answered 503.
    #[arg(long, value_parser = crate::control::parse_period, default_value = "30s")]
    activation_timeout: std::time::Duration,

    /// Run no container images (runtime class `oci`), only wasm modules. A node not run as
    /// root runs none in any case.
    #[arg(long)]
    no_oci: bool,

    /// The memory limit of a container that declares none (a guest's linear memories and its
    /// instances together), as a quantity.
    #[arg(long, value_parser = parse_bytes, default_value = "256Mi")]
    default_memory_limit: u64,

    /// The processes (threads included) a pod's Linux containers may have together, as the
    /// kubelet's `--pod-max-pids`, at most the kernel's 4194304; -1 (upstream's default) or 0
    /// for no bound. A fork bomb in a pod stops at its own bound, not at the node's.
    #[arg(long, default_value_t = 4096, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-1..=4_194_304))]
    pod_max_pids: i64,
}

/// The program that creates Linux containers: this one, when the node may run them (as root,
/// unless `--no-oci`).
fn oci_helper(no_oci: bool) -> Option<PathBuf> {
    if no_oci {
        return None;
    }
    if !rustix::process::geteuid().is_root() {
        tracing::info!("not running as root: this node runs no container images, only wasm modules");
        return None;
    }
    // This program as it runs, even if its file is replaced or removed meanwhile (an upgrade).
    Some(PathBuf::from("/proc/self/exe"))
}

/// `--eviction-hard`: the signals this node acts on, each with its threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct EvictionHard {
    memory_available: Option<Threshold>,
    nodefs_available: Option<Threshold>,
}

fn parse_proxy_mode(text: &str) -> Result<flotilla_net::ProxyMode, String> {
    match text {
        "auto" => Ok(flotilla_net::ProxyMode::Auto),
        "nftables" => Ok(flotilla_net::ProxyMode::Nftables),
        "userspace" => Ok(flotilla_net::ProxyMode::Userspace),
        _ => Err(format!("{text:?}: the proxy modes are auto, nftables and userspace")),
    }
}

/// A non-negative quantity of bytes (`256Mi`, `1G`).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let nanos = flotilla_api::quantity::parse(text).map_err(|err| format!("{text:?}: {err}"))?;
    u64::try_from(nanos / 1_000_000_000).map_err(|_| format!("{text:?} is negative"))
}

/// `cpu=500m,memory=1Gi` (either may be left out), as the kubelet's `--system-reserved`.
fn parse_reserved(text: &str) -> Result<Capacity, String> {
    let mut reserved = Capacity::NONE;
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not resource=quantity"))?;
        let nanos = flotilla_api::quantity::parse(value).map_err(|err| format!("{pair:?}: {err}"))?;
        if nanos < 0 {
            return Err(format!("{pair:?}: the quantity is negative"));
        }
        match name {
            "cpu" => reserved.cpu = nanos as f64 / 1e9,
            "memory" => reserved.memory = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX),
            _ => return Err(format!("{name:?}: the resources that can be reserved are cpu and memory")),
        }
    }
    Ok(reserved)
}

/// `memory.available<100Mi,nodefs.available<5%`, as the kubelet's `--eviction-hard`: each
/// signal with its threshold, an amount (more than none) or a percentage of the whole, where
/// `0%` and `100%` leave the signal out, as upstream reads them.
fn parse_eviction_hard(text: &str) -> Result<EvictionHard, String> {
    let mut thresholds = EvictionHard::default();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (signal, value) = pair
            .split_once('<')
            .ok_or_else(|| format!("{pair:?} is not signal<quantity, as memory.available<100Mi"))?;
        let (signal, value) = (signal.trim(), value.trim());
        let threshold = match value.strip_suffix('%') {
            Some("0" | "100") => None,
            Some(percent) => Some(
                percent
                    .parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=100.0).contains(p))
                    .map(Threshold::Percent)
                    .ok_or_else(|| format!("{pair:?}: {value:?} is not a percentage"))?,
            ),
            None => match parse_bytes(value).map_err(|err| format!("{pair:?}: {err}"))? {
                0 => return Err(format!("{pair:?}: the threshold must be positive")),
                bytes => Some(Threshold::Bytes(bytes)),
            },
        };
        match signal {
            "memory.available" => thresholds.memory_available = threshold,
            "nodefs.available" => thresholds.nodefs_available = threshold,
            _ => {
                return Err(format!(
                    "{signal:?}: the signals this node acts on are memory.available and nodefs.available"
                ));
            }
        }
    }
    Ok(thresholds)
}

impl NodeArgs {
    /// The node's name: as given, or this machine's host name.
    pub(crate) fn name(&self) -> String {
        self.node_name.clone().unwrap_or_else(NodeConfig::hostname)
    }
}

/// Where a node keeps its state under a data directory (for the server and for an agent).
pub(crate) fn node_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("node")
}

/// Starts a node agent talking to the cluster through `client`, and serves its HTTPS API
/// until `shutdown` resolves, to callers with a client certificate from `cluster_ca` (the API
/// server's); it presents `identity` (its own such certificate) to other nodes' APIs. Its
/// guests may not connect to `protected` (this process's other private listeners) nor to the
/// node API.
pub(crate) async fn start(
    client: kube::Client,
    args: NodeArgs,
    data_dir: &Path,
    cluster_ca: &str,
    identity: pki::Issued,
    mut protected: Vec<std::net::SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Agent, JoinHandle<()>)> {
    let listener = TcpListener::bind(&args.node_listen)
        .await
        .with_context(|| format!("cannot listen on {} for the node's API", args.node_listen))?;
    let name = args.name();
    protected.push(listener.local_addr()?);
    let certificate = pki::self_signed(&[args.node_ip.to_string(), name.clone(), "localhost".into()])
        .context("cannot make the node's serving certificate")?;
    let capacity = Capacity::of_this_machine();
    let reserved = Capacity {
        cpu: args.system_reserved.cpu + args.kube_reserved.cpu,
        memory: args.system_reserved.memory.saturating_add(args.kube_reserved.memory),
    };
    anyhow::ensure!(
        !args.pod_cidr.contains(args.node_ip),
        "--node-ip {} lies inside --pod-cidr {}: the node's own address would be taken for its pods'",
        args.node_ip,
        args.pod_cidr
    );
    let eviction_memory_available = args.eviction_hard.memory_available.map_or(0, |t| t.bytes(capacity.memory));
    anyhow::ensure!(
        reserved.memory.saturating_add(eviction_memory_available) < capacity.memory,
        "--system-reserved, --kube-reserved and --eviction-hard keep {} of memory, and this machine has {}: \
         no pod could run",
        flotilla_api::quantity::bytes(reserved.memory.saturating_add(eviction_memory_available)),
        flotilla_api::quantity::bytes(capacity.memory)
    );
    let config = NodeConfig {
        name,
        data_dir: node_dir(data_dir),
        node_ip: args.node_ip,
        pod_cidr: args.pod_cidr,
        proxy_mode: args.proxy_mode,
        max_pods: args.max_pods,
        allow_host_path: args.allow_host_path,
        insecure_registries: args.insecure_registries,
        server_port: listener.local_addr()?.port(),
        serving_cert_sha256: certificate.sha256.clone(),
        identity: Some(identity),
        protected_endpoints: protected,
        reserved,
        default_memory_limit: args.default_memory_limit,
        pod_max_pids: u32::try_from(args.pod_max_pids).ok().filter(|max| *max > 0),
        eviction_memory_available,
        eviction_nodefs_available: args.eviction_hard.nodefs_available,
        eviction_pressure_transition_period: args.eviction_pressure_transition_period,
        activation_timeout: args.activation_timeout,
        oci_helper: oci_helper(args.no_oci),
    };
    let agent = Agent::start(client, config).await.context("cannot start the node agent")?;
    let tls = flotilla_auth::tls::server_config(
        &certificate.cert_pem,
        &certificate.key_der,
        ClientAuth::Optional(cluster_ca),
    )
    .context("cannot configure the node's TLS")?;
    let server = tokio::spawn(flotilla_auth::serve(listener, tls, agent.router(), shutdown));
    Ok((agent, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_hard_reads_the_kubelets_list_of_signals() {
        let parsed = parse_eviction_hard("memory.available<100Mi,nodefs.available<5%").unwrap();
        assert_eq!(parsed.memory_available, Some(Threshold::Bytes(100 << 20)));
        assert_eq!(parsed.nodefs_available, Some(Threshold::Percent(5.0)));
        // A signal left out is not acted on.
        let memory_only = parse_eviction_hard("memory.available<10%").unwrap();
        assert_eq!(
            memory_only,
            EvictionHard { memory_available: Some(Threshold::Percent(10.0)), nodefs_available: None }
        );
        assert_eq!(
            parse_eviction_hard("nodefs.available<1Gi").unwrap().nodefs_available,
            Some(Threshold::Bytes(1 << 30))
        );
        // Upstream's ways of leaving one out, and spaces.
        let none = parse_eviction_hard(" memory.available < 0% , nodefs.available<100%").unwrap();
        assert_eq!(none, EvictionHard::default());
        let bad = ["imagefs.available<15%", "memory.available=100Mi", "nodefs.available<120%", "memory.available<-1Mi"];
        for bad in bad.into_iter().chain(["nodefs.available<0"]) {
            assert!(parse_eviction_hard(bad).is_err(), "{bad}");
        }
    }
}
