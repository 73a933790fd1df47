//! `flotilla server`: opens (or creates) the data directory, starts the store member and serves
//! its peer API until SIGINT or SIGTERM.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use flotilla_store::{Store, StoreConfig};
use tokio::net::TcpListener;

#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Where the server keeps its state (the store is in `<dir>/store`).
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    data_dir: PathBuf,

    /// Address the store's peer API listens on (Raft traffic, forwarded requests).
    #[arg(long, default_value = "127.0.0.1:2380")]
    peer_listen: String,

    /// URL the other members reach this one at [default: http://<peer-listen>].
    #[arg(long)]
    advertise_url: Option<String>,

    /// This member's id in the store group.
    #[arg(long, default_value_t = 1)]
    member_id: u64,

    /// The members of a new multi-member group, e.g. `1=http://10.0.0.1:2380,2=http://10.0.0.2:2380,…`
    /// (this member included). Every initial member gets the same list and token.
    #[arg(long, value_parser = parse_members, conflicts_with = "join")]
    initial_cluster: Option<BTreeMap<u64, String>>,

    /// Names a new multi-member group together with its member list.
    #[arg(long, default_value = "flotilla")]
    cluster_token: String,

    /// Join a running group through one of its members; then add this member with
    /// `flotilla store add-learner` and `flotilla store promote`.
    #[arg(long)]
    join: Option<String>,
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
    let listener = TcpListener::bind(&args.peer_listen)
        .await
        .with_context(|| format!("cannot listen on {} for the store's peers", args.peer_listen))?;
    let advertise_url = match args.advertise_url {
        Some(url) => url,
        None => format!("http://{}", listener.local_addr()?),
    };
    let store_dir = args.data_dir.join("store");
    let config = match (args.initial_cluster, args.join) {
        (Some(members), None) => {
            StoreConfig::initial(store_dir, args.member_id, advertise_url, members, args.cluster_token)
        }
        (None, Some(via)) => StoreConfig::join(store_dir, args.member_id, advertise_url, via),
        (None, None) => {
            if args.member_id != 1 {
                bail!("a single-member group has member id 1; use --initial-cluster or --join for others");
            }
            StoreConfig::single(store_dir, advertise_url)
        }
        (Some(_), Some(_)) => unreachable!("clap refuses --initial-cluster with --join"),
    };
    let advertised = config.advertise_url.clone();
    let store = Store::open(config).await.context("cannot start the store")?;
    let server = tokio::spawn(
        axum::serve(listener, store.peer_router()).with_graceful_shutdown(shutdown_signal()).into_future(),
    );

    loop {
        match store.wait_for_leader(Duration::from_secs(10)).await {
            Ok(_) => break,
            Err(e) => tracing::warn!(error = %e, "waiting for a quorum of the store group"),
        }
    }
    // The one line a script waits for: from here on the store takes writes.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "store: member {} of cluster {} at {advertised}", store.member_id(), store.cluster_id())?;
    stdout.flush()?;
    drop(stdout);

    server.await?.context("peer API server failed")?;
    tracing::info!("shutting down");
    store.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
