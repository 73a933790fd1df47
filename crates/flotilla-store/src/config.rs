//! How a member is configured: where it keeps its data, who it is, and how it finds its group.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::watch::DEFAULT_WATCH_BUFFER;

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The member's own directory: the database in `db/`, snapshot files in `snapshots/`.
    pub data_dir: PathBuf,
    pub member_id: u64,
    /// The base URL the other members reach this one at, e.g. `https://127.0.0.1:2380`.
    pub advertise_url: String,
    /// How this member calls the others: mutual TLS, the CA of the group's members to trust and
    /// this member's certificate to present. The default trusts no one, so a member that was
    /// not given its credentials cannot call another (a one-member group never does).
    pub peer_tls: Arc<rustls::ClientConfig>,
    pub bootstrap: Bootstrap,
    pub timing: RaftTiming,
    /// How long a request waits for a leader (an election, a forwarded call) before failing.
    pub request_timeout: Duration,
    /// Unread responses a watcher may queue before it is cancelled.
    pub watch_buffer: usize,
    /// How often quiet watchers that asked for it are told the current revision.
    pub progress_interval: Duration,
    /// Build a snapshot (and purge the log behind it) after this many applied entries.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so a briefly lagging member catches up from the
    /// log instead of a whole snapshot.
    pub entries_kept_after_snapshot: u64,
}

/// How a member finds its group the first time it starts. After that the data directory knows.
#[derive(Clone, Debug)]
pub enum Bootstrap {
    /// Form a new group of exactly these members (id → advertised URL, this member included).
    /// Every initial member must be given the same map and token: together they name the cluster.
    Initial { members: BTreeMap<u64, String>, token: String },
    /// Join a running group through any of its members. The new member takes that group's
    /// identity and waits to be added (as a learner, then promoted) by a membership change.
    Join { via: String },
}

/// Raft timing. The defaults suit a LAN or loopback; an edge link with long round trips wants
/// a longer heartbeat, which openraft also uses as the AppendEntries timeout, and a longer
/// election timeout.
#[derive(Clone, Debug)]
pub struct RaftTiming {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
}

impl Default for RaftTiming {
    /// etcd's defaults: 100 ms heartbeats, a one-second election timeout.
    fn default() -> Self {
        RaftTiming {
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
        }
    }
}

impl StoreConfig {
    /// A one-member group: the default for a single machine, and the same code path as three.
    pub fn single(data_dir: impl Into<PathBuf>, advertise_url: impl Into<String>) -> Self {
        let advertise_url = advertise_url.into();
        StoreConfig::initial(data_dir, 1, advertise_url.clone(), BTreeMap::from([(1, advertise_url)]), "flotilla")
    }

    /// Member `member_id` of a new group of `members`.
    pub fn initial(
        data_dir: impl Into<PathBuf>,
        member_id: u64,
        advertise_url: impl Into<String>,
        members: BTreeMap<u64, String>,
        token: impl Into<String>,
    ) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            member_id,
            advertise_url: advertise_url.into(),
            peer_tls: trusting_no_one(),
            bootstrap: Bootstrap::Initial { members, token: token.into() },
            timing: RaftTiming::default(),
            request_timeout: Duration::from_secs(10),
            watch_buffer: DEFAULT_WATCH_BUFFER,
            progress_interval: Duration::from_secs(5),
            snapshot_after_entries: 10_000,
            entries_kept_after_snapshot: 1_000,
        }
    }

    /// A member that joins a running group through `via`.
    pub fn join(
        data_dir: impl Into<PathBuf>,
        member_id: u64,
        advertise_url: impl Into<String>,
        via: impl Into<String>,
    ) -> Self {
        StoreConfig {
            bootstrap: Bootstrap::Join { via: via.into() },
            ..StoreConfig::initial(data_dir, member_id, advertise_url, BTreeMap::new(), "")
        }
    }
}

/// A TLS client configuration with no roots and no certificate: every handshake fails.
fn trusting_no_one() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Arc::new(config)
}

/// The cluster id of a new multi-member group: derived from what every initial member is given,
/// so they agree without talking (etcd derives its cluster id the same way). A one-member group
/// has nobody to agree with and takes a random id, so that two single servers never look alike.
pub(crate) fn initial_cluster_id(members: &BTreeMap<u64, String>, token: &str) -> Option<Uuid> {
    if members.len() <= 1 {
        return None;
    }
    let mut name = format!("flotilla-cluster:{token}");
    for (id, url) in members {
        name.push_str(&format!(";{id}={url}"));
    }
    Some(Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes()))
}
