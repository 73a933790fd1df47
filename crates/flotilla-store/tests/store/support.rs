//! A harness that runs members in-process, each with its own data directory and HTTPS listener:
//! mutual TLS with certificates from one test CA, as the binary serves the peer API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use std::sync::{Arc, LazyLock};

use anyhow::{Context, Result, bail};
use flotilla_auth::pki::{Authority, Profile};
use flotilla_auth::tls::{ClientAuth, client_config, server_config};
use flotilla_store::{RaftTiming, Store, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The CA of every test member.
pub(crate) static PEERS: LazyLock<Authority> = LazyLock::new(|| Authority::generate("test-store-peers").unwrap().0);

/// The host a member URL names.
fn host(url: &str) -> &str {
    let rest = url.trim_start_matches("https://").trim_start_matches("http://");
    rest.rsplit_once(':').map_or(rest, |(host, _)| host)
}

/// TLS as member `id` at `url`: what it calls the others with.
pub(crate) fn member_tls(id: u64, url: &str) -> Arc<rustls::ClientConfig> {
    let issued = PEERS.issue_key(&Profile::store_member(id, &[host(url).to_string()])).unwrap();
    Arc::new(client_config(PEERS.cert_pem(), Some((&issued.cert_pem, &issued.key_der))).unwrap())
}

/// Timing for loopback: elections within a second, progress ticks several times a second. The
/// heartbeat stays at 100 ms because openraft also uses it as the AppendEntries timeout, and a
/// debug build on two busy cores needs the margin.
pub(crate) fn fast(mut config: StoreConfig) -> StoreConfig {
    config.timing = RaftTiming {
        heartbeat: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(500),
        election_timeout_max: Duration::from_millis(1000),
    };
    config.progress_interval = Duration::from_millis(100);
    config.request_timeout = Duration::from_secs(15);
    config.peer_tls = member_tls(config.member_id, &config.advertise_url);
    config
}

/// One member: its store and the HTTP server in front of it.
pub(crate) struct Member {
    pub(crate) store: Store,
    pub(crate) config: StoreConfig,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl Member {
    pub(crate) async fn start(config: StoreConfig) -> Result<Member> {
        let addr: SocketAddr = config.advertise_url.trim_start_matches("https://").parse()?;
        let listener = bind(addr).await?;
        let store = Store::open(config.clone()).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let router = store.peer_router();
        let serving = PEERS.issue_key(&Profile::store_member(config.member_id, &[addr.ip().to_string()]))?;
        let tls = server_config(&serving.cert_pem, &serving.key_der, ClientAuth::Required(PEERS.cert_pem()))?;
        let server = tokio::spawn(flotilla_auth::serve(listener, tls, router, async {
            let _ = stopped.await;
        }));
        Ok(Member { store, config, stop: Some(stop), server: Some(server) })
    }

    /// Stops serving and shuts the member down, releasing its data directory.
    pub(crate) async fn stop(mut self) -> StoreConfig {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.store.shutdown().await;
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        self.config.clone()
    }
}

/// Binds `addr`, retrying while a just-closed listener still holds it.
async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Ok(TcpListener::bind(addr).await?)
}

/// A free port on `ip`.
pub(crate) async fn free_url(ip: &str) -> Result<String> {
    let listener = TcpListener::bind((ip, 0)).await?;
    Ok(format!("https://{}", listener.local_addr()?))
}

/// Opens a one-member store in `dir`.
pub(crate) async fn single(dir: &Path) -> Result<Member> {
    let url = free_url("127.0.0.1").await?;
    Member::start(fast(StoreConfig::single(dir.join("member"), url))).await
}

/// A group of in-process members, member `n` listening on 127.0.0.`10+n`.
pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) members: BTreeMap<u64, Member>,
    pub(crate) urls: BTreeMap<u64, String>,
}

impl Cluster {
    pub(crate) async fn start(size: u64, tune: impl Fn(StoreConfig) -> StoreConfig) -> Result<Cluster> {
        init_tracing();
        let dir = tempfile::tempdir()?;
        let mut urls = BTreeMap::new();
        for id in 1..=size {
            urls.insert(id, free_url(&format!("127.0.0.{}", 10 + id)).await?);
        }
        let configs: Vec<StoreConfig> = urls
            .iter()
            .map(|(id, url)| {
                tune(fast(StoreConfig::initial(
                    dir.path().join(format!("member-{id}")),
                    *id,
                    url,
                    urls.clone(),
                    "test",
                )))
            })
            .collect();
        let started = futures::future::join_all(configs.into_iter().map(Member::start)).await;
        let mut members = BTreeMap::new();
        for member in started {
            let member = member?;
            members.insert(member.store.member_id(), member);
        }
        let cluster = Cluster { dir, members, urls };
        cluster.leader().await?;
        Ok(cluster)
    }

    pub(crate) fn store(&self, id: u64) -> &Store {
        &self.members[&id].store
    }

    /// The leader every running member agrees on, waiting for an election if need be.
    pub(crate) async fn leader(&self) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let leaders: Vec<Option<u64>> = self.members.values().map(|m| m.store.status().leader).collect();
            if let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*leader))
                && self.members.contains_key(leader)
            {
                return Ok(*leader);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no agreed leader among {:?}: {leaders:?}", self.members.keys().collect::<Vec<_>>());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn follower(&self, leader: u64) -> u64 {
        *self.members.keys().find(|id| **id != leader).expect("a cluster of more than one")
    }

    pub(crate) async fn stop(&mut self, id: u64) -> StoreConfig {
        self.members.remove(&id).expect("a running member").stop().await
    }

    pub(crate) async fn restart(&mut self, config: StoreConfig) -> Result<()> {
        let member = Member::start(config).await.context("restart a member")?;
        self.members.insert(member.store.member_id(), member);
        Ok(())
    }

    /// Waits until every running member has applied `revision`.
    pub(crate) async fn converge(&self, revision: u64) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.members.values().any(|m| m.store.revision() < revision) {
            if tokio::time::Instant::now() > deadline {
                let revisions: Vec<_> =
                    self.members.values().map(|m| (m.store.member_id(), m.store.revision())).collect();
                bail!("members did not reach revision {revision}: {revisions:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub(crate) async fn shutdown(mut self) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}
