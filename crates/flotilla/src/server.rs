//! `flotilla server`: opens (or creates) the data directory, starts the store member and the
//! API server over it, writes the admin kubeconfig, and serves until SIGINT or SIGTERM.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use flotilla_apiserver::{ApiServer, ApiServerConfig, Cidr, Encryption};
use flotilla_auth::identity::{BOOTSTRAPPERS, CONTROLLER_MANAGER, MASTERS, METRICS_READER, MONITORING, SCHEDULER};
use flotilla_auth::tls::ClientAuth;
use flotilla_auth::{Authenticator, UserInfo, pki};
use flotilla_store::{Store, StoreConfig};
use http::HeaderValue;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::node::NodeArgs;

#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Where the server keeps its state: the store in `<dir>/store`, credentials in `<dir>/pki`,
    /// the admin kubeconfig in `<dir>/kubeconfig.yaml`.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    data_dir: PathBuf,

    /// Address the Kubernetes API (HTTPS) listens on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: String,

    /// Extra names or IP addresses for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,

    /// The range Service cluster IPs come from.
    #[arg(long, default_value = "127.43.0.0/16")]
    service_cidr: Cidr,

    /// How often the store's history is compacted, in seconds; watches older than one interval
    /// get 410 Gone and relist, as on Kubernetes. 0 never compacts.
    #[arg(long, default_value_t = flotilla_apiserver::DEFAULT_COMPACTION_INTERVAL.as_secs())]
    compaction_interval: u64,

    /// How long an Event is kept after it last changed, e.g. `1h` (upstream's `--event-ttl`).
    /// 0 keeps Events for good.
    #[arg(long, value_parser = crate::control::parse_duration, default_value = "1h")]
    event_ttl: Duration,

    /// How often the resource metrics (`kubectl top`, the HPA) read every node's usage, e.g.
    /// `15s`: the shortest window they report a CPU rate over.
    #[arg(long, value_parser = crate::control::parse_period, default_value = "15s")]
    metrics_resolution: std::time::Duration,

    /// Address the store's peer API listens on (Raft traffic, forwarded requests).
    #[arg(long, default_value = "127.0.0.1:2380")]
    peer_listen: String,

    /// URL the other members reach this one at [default: https://<peer-listen>].
    #[arg(long)]
    advertise_url: Option<String>,

    /// This member's id in the store group.
    #[arg(long, default_value_t = 1)]
    member_id: u64,

    /// The members of a new multi-member group, e.g. `1=https://10.0.0.1:2380,2=https://10.0.0.2:2380,…`
    /// (this member included). Every initial member gets the same list and token.
    #[arg(long, value_parser = parse_members, conflicts_with = "join")]
    initial_cluster: Option<BTreeMap<u64, String>>,

    /// The store group's secret (at least 32 characters), given to every member of a group of
    /// more than one: it names the group and is what members prove to each other (their mutual
    /// TLS certificates come from a CA derived from it). A single server makes its own and keeps
    /// it in `<data-dir>/pki/store.secret`, which a member joining it later is given.
    #[arg(long, env = "FLOTILLA_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,

    /// Join a running group through one of its members; then add this member with
    /// `flotilla store add-learner` and `flotilla store promote`.
    #[arg(long)]
    join: Option<String>,

    /// Run no node in this process (the control plane only; nodes join with `flotilla agent`).
    #[arg(long)]
    no_node: bool,

    /// Loops not to run in this process, comma-separated: `scheduler`, `controllers` (to run
    /// them elsewhere with `flotilla scheduler` / `flotilla controllers`).
    #[arg(long, value_delimiter = ',', value_enum)]
    disable: Vec<Component>,

    /// Seconds a node may go without renewing its Lease before it is unreachable and its pods
    /// start to be evicted; more than the 10 s at which nodes renew it.
    #[arg(long, default_value_t = flotilla_controllers::DEFAULT_NODE_GRACE_PERIOD.as_secs(),
          value_parser = clap::value_parser!(u64).range(11..))]
    node_grace_period: u64,

    /// How often every HorizontalPodAutoscaler is evaluated, e.g. `15s`.
    #[arg(long, value_parser = crate::control::parse_period, default_value = "15s")]
    horizontal_pod_autoscaler_sync_period: Duration,

    /// Seconds pods tolerate an unreachable or not-ready node before they are evicted and
    /// replaced elsewhere (the tolerations every pod gets unless it sets its own; upstream 300).
    #[arg(long, default_value_t = flotilla_apiserver::DEFAULT_TOLERATION_SECONDS)]
    default_toleration_seconds: i64,

    /// Encrypt resources at rest as this `EncryptionConfiguration` file says (upstream's
    /// format: `aesgcm`, `secretbox` and `identity` providers). Keep the file off the disk the
    /// store is on, or a stolen disk gives up its key with its data.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,

    #[command(flatten)]
    election: crate::control::ElectionArgs,

    #[command(flatten)]
    node: NodeArgs,
}

/// Where a single server keeps its store group's secret.
pub(crate) const STORE_SECRET: &str = "store.secret";

/// A control loop `flotilla server` runs unless told not to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Component {
    Scheduler,
    Controllers,
}

fn parse_members(list: &str) -> Result<BTreeMap<u64, String>, String> {
    list.split(',')
        .map(|member| {
            let (id, url) = member.split_once('=').ok_or_else(|| format!("{member:?} is not id=url"))?;
            let id = id.trim().parse::<u64>().map_err(|e| format!("member id {id:?}: {e}"))?;
            Ok((id, url.trim().to_string()))
        })
        .collect()
}

pub(crate) async fn run(args: ServerArgs) -> Result<()> {
    crate::make_private(&args.data_dir)?;
    let api_listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the API", args.listen))?;
    let api_addr = api_listener.local_addr()?;
    let peer_listener = TcpListener::bind(&args.peer_listen)
        .await
        .with_context(|| format!("cannot listen on {} for the store's peers", args.peer_listen))?;
    let peer_addr = peer_listener.local_addr()?;
    let advertise_url = match args.advertise_url {
        Some(url) => url,
        None => format!("https://{peer_addr}"),
    };
    let store_dir = args.data_dir.join("store");
    let pki_dir = args.data_dir.join("pki");
    let secret = match (&args.initial_cluster, &args.join, args.cluster_token) {
        (None, None, None) => pki::load_or_create_secret(&pki_dir.join(STORE_SECRET))?,
        (_, _, Some(token)) => token,
        (_, _, None) => bail!(
            "a store group of more than one member needs --cluster-token: the same secret of at least 32 characters for every member (a single server keeps its own in <data-dir>/pki/{STORE_SECRET})"
        ),
    };
    ensure!(secret.len() >= 32, "--cluster-token must be at least 32 characters (it is the store group's secret)");
    let peer = crate::peer::credentials(&pki_dir, &secret, args.member_id, &[&advertise_url, &args.peer_listen])?;
    let mut config = match (args.initial_cluster, args.join) {
        (Some(members), None) => StoreConfig::initial(store_dir, args.member_id, advertise_url, members, secret),
        (None, Some(via)) => StoreConfig::join(store_dir, args.member_id, advertise_url, via),
        (None, None) => {
            if args.member_id != 1 {
                bail!("a single-member group has member id 1; use --initial-cluster or --join for others");
            }
            StoreConfig::single(store_dir, advertise_url)
        }
        (Some(_), Some(_)) => unreachable!("clap refuses --initial-cluster with --join"),
    };
    config.peer_tls = peer.client.clone();
    let advertised = config.advertise_url.clone();
    let store = Store::open(config).await.context("cannot start the store")?;
    let (stop, stopped) = watch::channel(false);
    let peer_server = tokio::spawn(flotilla_auth::serve(
        peer_listener,
        peer.server,
        crate::peer::router(store.peer_router()),
        until_stopped(stopped.clone()),
    ));
    loop {
        match store.wait_for_leader(Duration::from_secs(10)).await {
            Ok(_) => break,
            Err(e) => tracing::warn!(error = %e, "waiting for a quorum of the store group"),
        }
    }
    tracing::info!(member = store.member_id(), cluster = %store.cluster_id(), peers = %advertised, "store ready");

    // Pods reach the API through the `kubernetes` Service, by its cluster IP and names.
    let mut names = args.tls_sans.clone();
    names.push(args.service_cidr.first().to_string());
    let credentials = pki::load_or_create(&pki_dir, &certificate_names(api_addr, &names))
        .context("cannot set up the cluster's certificates")?;
    let authenticator = Authenticator::new()
        .with_token(credentials.token.clone(), UserInfo::new("admin", &[MASTERS]))
        .with_token(credentials.node_token.clone(), UserInfo::new("system:bootstrap:flotilla", &[BOOTSTRAPPERS]))
        .with_token(credentials.metrics_token.clone(), UserInfo::new(METRICS_READER, &[MONITORING]));
    // `/metrics`: the store's measurements, the API server's, then the control loops'.
    let prometheus = flotilla_apiserver::Prometheus::default();
    store.register_metrics(&mut prometheus.lock().expect("prometheus registry lock"));
    let encryption = match &args.encryption_provider_config {
        Some(path) => Encryption::from_file(path).map_err(anyhow::Error::msg)?,
        None => Encryption::default(),
    };
    let api_config = ApiServerConfig {
        service_cidr: args.service_cidr,
        authenticator,
        authority: Some(credentials.authority.clone()),
        node_client: Some(credentials.kubelet_client.clone()),
        default_toleration_seconds: args.default_toleration_seconds,
        encryption,
        metrics_resolution: args.metrics_resolution,
        prometheus: prometheus.clone(),
        // The listen address, or the node's for a wildcard: where pods on any node reach it.
        advertise: Some(if api_addr.ip().is_unspecified() {
            SocketAddr::new(args.node.node_ip.into(), api_addr.port())
        } else {
            api_addr
        }),
    };
    let api = ApiServer::new(store.clone(), api_config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the API server: {}", e.0))?;
    // Client certificates are taken, not required: kubectl may come with the admin's token,
    // and `/version` and the join flow are open.
    let tls = flotilla_auth::tls::server_config(
        &credentials.server_cert_pem,
        &credentials.server_key_der,
        ClientAuth::Optional(&credentials.ca_pem),
    )
    .context("cannot configure TLS")?;
    let api_server =
        tokio::spawn(flotilla_auth::serve(api_listener, tls, api.router(), until_stopped(stopped.clone())));

    let expiry = (!args.event_ttl.is_zero()).then(|| {
        tokio::spawn(flotilla_apiserver::expire_events(store.clone(), args.event_ttl, until_stopped(stopped.clone())))
    });
    let compactor = (args.compaction_interval > 0).then(|| {
        let interval = Duration::from_secs(args.compaction_interval);
        tokio::spawn(flotilla_apiserver::compact_history(store.clone(), interval, until_stopped(stopped.clone())))
    });

    let kubeconfig_path = args.data_dir.join("kubeconfig.yaml");
    let server_url = format!("https://{}", client_address(api_addr));
    pki::write_secret(&kubeconfig_path, pki::kubeconfig(&credentials, &server_url).as_bytes())
        .context("cannot write the kubeconfig")?;
    // What `flotilla agent --token` takes to join another machine to this cluster.
    let join_token_path = args.data_dir.join("node-token");
    pki::write_secret(&join_token_path, format!("{}\n", pki::join_token(&credentials)).as_bytes())
        .context("cannot write the node join token")?;
    api.set_ready();
    // The scheduler and the controllers are ordinary API clients, in-process. Together they
    // share the watches of pods and nodes, so every pod is decoded and held once.
    // The scheduler and the controllers, ordinary API clients in-process, each while this
    // member leads its Lease.
    let (scheduler_metrics, queues) = {
        let mut registry = prometheus.lock().expect("prometheus registry lock");
        (
            flotilla_scheduler::SchedulerMetrics::register(&mut registry),
            flotilla_client::QueueMetrics::register(&mut registry),
        )
    };
    let loops = crate::control::ControlLoops {
        scheduler_metrics,
        scheduler: match args.disable.contains(&Component::Scheduler) {
            true => None,
            false => Some(in_process_client(api.router(), UserInfo::new(SCHEDULER, &[]), "kube-scheduler")?),
        },
        controllers: match args.disable.contains(&Component::Controllers) {
            true => None,
            false => Some((
                in_process_client(api.router(), UserInfo::new(CONTROLLER_MANAGER, &[]), "kube-controller-manager")?,
                flotilla_controllers::ControllersConfig {
                    node_grace_period: Duration::from_secs(args.node_grace_period),
                    hpa_sync_period: args.horizontal_pod_autoscaler_sync_period,
                    queues,
                },
            )),
        },
    };
    // The same identity at every start of this member (unique in its group, where a data
    // directory runs once): restarted, it takes its own Lease back at once instead of waiting
    // for it to expire.
    let identity = format!("{}_member{}", flotilla_node::NodeConfig::hostname(), store.member_id());
    let control = tokio::spawn(loops.run(args.election.config()?, identity));
    let node = if args.no_node {
        None
    } else {
        // The embedded node reaches the API in-process, as itself: the same router, requests
        // and responses as over the network, without TLS or a socket.
        let name = args.node.name();
        api.reserve_node_name(&name).await.map_err(|e| anyhow::anyhow!("cannot register node {name}: {}", e.0))?;
        let client = in_process_client(api.router(), UserInfo::node(&name), "kubelet")?;
        // The store's peer port is never the guests' to call.
        let protected = vec![peer_addr];
        let identity = credentials
            .authority
            .issue_key(&flotilla_auth::pki::Profile::node(&name))
            .context("cannot issue the node's client certificate")?;
        let started = crate::node::start(
            client,
            args.node,
            &args.data_dir,
            &credentials.ca_pem,
            identity,
            protected,
            until_stopped(stopped.clone()),
        )
        .await?;
        Some(started)
    };
    // The one line a script waits for: from here on kubectl works.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "kubeconfig: {}", kubeconfig_path.display())?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(api = %server_url, "serving the Kubernetes API");

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    control.abort();
    let _ = api_server.await;
    for task in [compactor, expiry].into_iter().flatten() {
        let _ = task.await;
    }
    if let Some((agent, server)) = node {
        drop(agent);
        let _ = server.await;
    }
    let _ = peer_server.await;
    store.shutdown().await;
    Ok(())
}

/// A Kubernetes client that calls `router` directly as `user`: the identity goes in the
/// request's extensions, which only this process can set (see `flotilla_auth::authn`). `agent`
/// names it as upstream's components name themselves (`kube-scheduler`, …), which is the field
/// manager its writes are recorded under.
fn in_process_client(router: axum::Router, user: UserInfo, agent: &'static str) -> Result<kube::Client> {
    let user_agent = HeaderValue::from_static(agent);
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut request: http::Request<kube::client::Body>| {
            request.extensions_mut().insert(user.clone());
            request.headers_mut().insert(http::header::USER_AGENT, user_agent.clone());
            request
        })
        .service(router);
    Ok(kube::Client::new(service, "default"))
}

/// The names clients may reach the API by: loopback, the listen address, the in-cluster names
/// of the `kubernetes` Service, and whatever the operator adds.
fn certificate_names(addr: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "127.0.0.1",
        "::1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    names.extend(extra.iter().cloned());
    names
}

/// The address a local client uses: the listen address, or loopback for a wildcard.
fn client_address(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() { SocketAddr::new([127, 0, 0, 1].into(), addr.port()) } else { addr }
}

async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

pub(crate) async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub(crate) fn print_kubeconfig(data_dir: &Path) -> Result<()> {
    let path = data_dir.join("kubeconfig.yaml");
    let config = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (has `flotilla server` run there?)", path.display()))?;
    std::io::stdout().lock().write_all(config.as_bytes())?;
    Ok(())
}
