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
use flotilla_node::{Agent, NodeConfig};
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
    node_ip: Ipv4Addr,

    /// Where the node's HTTPS API (container logs) listens; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:10250")]
    node_listen: String,

    /// The range pods get their addresses from. In 127.0.0.0/8 pods need no network setup on
    /// a single host; give each node on one machine its own range.
    #[arg(long, default_value = "127.44.0.0/16")]
    pod_cidr: Cidr,

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
/// server's). Its guests may not connect to `protected` (this process's other private
/// listeners) nor to the node API.
pub(crate) async fn start(
    client: kube::Client,
    args: NodeArgs,
    data_dir: &Path,
    cluster_ca: &str,
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
    let config = NodeConfig {
        name,
        data_dir: node_dir(data_dir),
        node_ip: args.node_ip,
        pod_cidr: args.pod_cidr,
        max_pods: args.max_pods,
        allow_host_path: args.allow_host_path,
        insecure_registries: args.insecure_registries,
        server_port: listener.local_addr()?.port(),
        serving_cert_sha256: certificate.sha256.clone(),
        protected_endpoints: protected,
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
