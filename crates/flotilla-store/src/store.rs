//! [`Store`]: one member of the group, and the handle the API server reads, writes and watches
//! through. Writes go through the Raft log (forwarded to the leader from a follower); reads are
//! served from the local state machine after a read-index barrier unless they ask otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use uuid::Uuid;

use crate::client::StoreClient;
use crate::config::{Bootstrap, StoreConfig, initial_cluster_id};
use crate::db::{Expect, StoreDb};
use crate::error::{Error, Result};
use crate::keyspace;
use crate::kv::{INITIAL_REVISION, KeyRange, KeyValue, Revision};
use crate::peer::{self, PATH_MEMBERSHIP, PATH_READ_INDEX, PATH_WRITE};
use crate::prometheus::Instruments;
use crate::raft::log_store::LogStore;
use crate::raft::network::{CallError, NetworkFactory, PeerClient};
use crate::raft::proposer::Proposer;
use crate::raft::snapshot::SnapshotDir;
use crate::raft::state_machine::{Shared, StateMachine};
use crate::raft::{Command, Member, Raft, Reply};
use crate::request::{Consistency, Op, OpResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use crate::watch::{Watch, WatchHub, WatchRequest, spawn_progress_notifier};

/// Pause between attempts while the group has no leader.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How long shutdown waits for background tasks to release the database.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A member of the store's Raft group. Cheap to clone; every clone is the same member.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    id: u64,
    pub(crate) raft: Raft,
    pub(crate) shared: Arc<Shared>,
    client: PeerClient,
    proposer: Proposer,
    config: StoreConfig,
    progress: tokio::task::JoinHandle<()>,
}

/// A change to the group's membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Start replicating to a new member that does not vote yet; returns once it has caught up.
    AddLearner { id: u64, addr: String },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Take a member out of the group altogether.
    Remove { id: u64 },
}

/// What a member knows of itself and its group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub member_id: u64,
    pub cluster_id: Uuid,
    pub leader: Option<u64>,
    pub term: u64,
    pub revision: Revision,
    pub compact_revision: Revision,
    pub applied_index: Option<u64>,
    /// The last log index covered by this member's snapshot.
    pub snapshot_index: Option<u64>,
    /// The log is purged up to here: a member behind it needs the snapshot.
    pub purged_index: Option<u64>,
    /// The group as this member last learned it.
    pub membership: Membership,
}

/// Who is in the group: voters and learners, by id, with the URLs they are reached at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub voters: BTreeMap<u64, String>,
    pub learners: BTreeMap<u64, String>,
}

impl Membership {
    fn from_raft(membership: &openraft::Membership<u64, Member>) -> Self {
        let mut members = Membership::default();
        for (id, member) in membership.nodes() {
            let role = if membership.voter_ids().any(|voter| voter == *id) {
                &mut members.voters
            } else {
                &mut members.learners
            };
            role.insert(*id, member.addr.clone());
        }
        members
    }
}

/// The answer to a single put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutResponse {
    pub revision: Revision,
    pub prev_kv: Option<KeyValue>,
}

impl Store {
    /// Opens the member's data directory (creating it on first start) and starts its Raft node.
    /// A directory that is corrupt, another member's or another cluster's is refused.
    pub async fn open(config: StoreConfig) -> Result<Store> {
        let db_path = config.data_dir.join("db");
        let fresh = !db_path.join("CURRENT").exists();
        let client_timeout = config.request_timeout;
        let (cluster_id, fresh_cluster_id) = match &config.bootstrap {
            Bootstrap::Initial { members, token } => {
                if members.get(&config.member_id) != Some(&config.advertise_url) {
                    return Err(Error::InvalidArgument(format!(
                        "the initial members must include this member ({}={})",
                        config.member_id, config.advertise_url
                    )));
                }
                let derived = initial_cluster_id(members, token);
                (derived, derived.unwrap_or_else(Uuid::new_v4))
            }
            Bootstrap::Join { via } if fresh => {
                let identity = fetch_identity(via, &config.peer_tls, client_timeout).await?;
                (Some(identity), identity)
            }
            Bootstrap::Join { .. } => (None, Uuid::nil()),
        };
        let expect = Expect { member_id: config.member_id, cluster_id, fresh_cluster_id };
        let (db, identity) = tokio::task::spawn_blocking(move || StoreDb::open(&db_path, &expect))
            .await
            .map_err(|e| Error::Storage(format!("open task: {e}")))??;
        let db = Arc::new(db);
        let snapshots = SnapshotDir::open(config.data_dir.join("snapshots"))?;
        let instruments = Instruments::default();
        let shared = Arc::new(Shared {
            db: db.clone(),
            instruments: instruments.clone(),
            hub: WatchHub::new(INITIAL_REVISION, config.watch_buffer),
            compact_floor: AtomicU64::new(0),
            snapshots,
            cluster_id: identity.cluster_id,
        });
        let machine = StateMachine::open(shared.clone())?;
        shared.hub.publish(machine.revision(), Vec::new());
        let log = LogStore::new(db, instruments.wal_fsync.clone())
            .map_err(|e| Error::storage("start the log sync thread", e))?;

        let raft_config = openraft::Config {
            cluster_name: identity.cluster_id.to_string(),
            heartbeat_interval: config.timing.heartbeat.as_millis() as u64,
            election_timeout_min: config.timing.election_timeout_min.as_millis() as u64,
            election_timeout_max: config.timing.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
            max_in_snapshot_log_to_keep: config.entries_kept_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::InvalidArgument(format!("raft configuration: {e}")))?;
        let client = PeerClient::new(identity.cluster_id, &config.peer_tls);
        let network = NetworkFactory { id: config.member_id, client: client.clone() };
        let raft = Raft::new(config.member_id, Arc::new(raft_config), network, log, machine)
            .await
            .map_err(|e| Error::Storage(format!("start raft: {e}")))?;

        let initialized = raft.is_initialized().await.map_err(|_| Error::Stopped)?;
        if let Bootstrap::Initial { members, .. } = &config.bootstrap
            && !initialized
        {
            let members: BTreeMap<u64, Member> =
                members.iter().map(|(id, addr)| (*id, Member { addr: addr.clone() })).collect();
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(Error::Membership(format!("initialise the group: {e}"))),
            }
        }
        // A member that is the group's only voter need not wait out an election timeout after a
        // restart: nobody else can be leader.
        let only_voter = raft.metrics().borrow().membership_config.membership().voter_ids().eq([config.member_id]);
        if only_voter {
            raft.trigger().elect().await.map_err(|_| Error::Stopped)?;
        }
        let progress = spawn_progress_notifier(Arc::downgrade(&shared), config.progress_interval);
        tracing::info!(
            member = config.member_id,
            cluster = %identity.cluster_id,
            revision = shared.hub.revision(),
            dir = %config.data_dir.display(),
            "store member started"
        );
        let proposer = Proposer::spawn(raft.clone());
        Ok(Store { inner: Arc::new(Inner { id: config.member_id, raft, shared, client, proposer, config, progress }) })
    }

    /// Waits until the group has a leader, i.e. writes can be served.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64> {
        let metrics = self
            .inner
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|_| Error::NoLeader(format!("no leader elected within {timeout:?}")))?;
        metrics.current_leader.ok_or_else(|| Error::NoLeader("no leader".into()))
    }

    pub fn member_id(&self) -> u64 {
        self.inner.id
    }

    pub fn cluster_id(&self) -> Uuid {
        self.inner.shared.cluster_id
    }

    /// The revision this member has applied (which may trail the leader's).
    pub fn revision(&self) -> Revision {
        self.inner.shared.hub.revision()
    }

    pub fn compact_revision(&self) -> Revision {
        self.inner.shared.compact_floor.load(Ordering::SeqCst)
    }

    /// Reads a key or range; linearizable unless the request asks for serializable.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        req.validate()?;
        if req.consistency == Consistency::Linearizable {
            self.read_barrier().await?;
        }
        let shared = self.inner.shared.clone();
        tokio::task::spawn_blocking(move || keyspace::range(&shared.db, &req))
            .await
            .map_err(|e| Error::Storage(format!("range task: {e}")))?
    }

    /// The current value of one key (linearizable).
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>> {
        Ok(self.range(RangeRequest::new(KeyRange::key(key))).await?.kvs.pop())
    }

    pub async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse> {
        txn.validate()?;
        match self.write(Command::Txn(txn)).await? {
            Reply::Txn(response) => Ok(response),
            other => Err(Error::Storage(format!("a transaction was answered with {other:?}"))),
        }
    }

    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<PutResponse> {
        let response = self.txn(TxnRequest::default().then([Op::put(key, value).with_prev_kv()])).await?;
        let prev_kv = match response.responses.into_iter().next() {
            Some(OpResponse::Put { prev_kv }) => prev_kv,
            _ => None,
        };
        Ok(PutResponse { revision: response.revision, prev_kv })
    }

    /// Deletes the keys of `range`; returns how many there were.
    pub async fn delete(&self, range: KeyRange) -> Result<u64> {
        let response = self.txn(TxnRequest::default().then([Op::Delete { range, prev_kv: false }])).await?;
        match response.responses.first() {
            Some(OpResponse::Delete { deleted, .. }) => Ok(*deleted),
            _ => Ok(0),
        }
    }

    /// Forgets history up to and including `revision`, on every member.
    pub async fn compact(&self, revision: Revision) -> Result<Revision> {
        match self.write(Command::Compact(revision)).await? {
            Reply::Compact(result) => result,
            other => Err(Error::Storage(format!("a compaction was answered with {other:?}"))),
        }
    }

    /// Watches a key or range, from a past revision or from now on.
    pub fn watch(&self, req: WatchRequest) -> Result<Watch> {
        Watch::start(self.inner.shared.clone(), req)
    }

    /// Changes the group's membership (on the leader, wherever it is called), and returns the
    /// membership as committed.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<Membership> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        loop {
            match before(deadline, "the membership change to commit", self.change_membership_here(&change)).await? {
                Ok(membership) => return Ok(membership),
                Err(Forward::To(addr)) => {
                    match self
                        .call_peer::<_, Result<Membership, Error>>(&addr, PATH_MEMBERSHIP, &change, deadline)
                        .await?
                    {
                        Some(Err(Error::NoLeader(_) | Error::MembershipBusy(_))) | None => {}
                        Some(result) => return result,
                    }
                }
                Err(Forward::NoLeader | Forward::Fail(Error::MembershipBusy(_))) => {}
                Err(Forward::Fail(e)) => return Err(e),
            }
            pause_until(deadline, "a leader for the membership change").await?;
        }
    }

    /// Applies a membership change if this member leads; otherwise says where the leader is.
    pub(crate) async fn change_membership_here(&self, change: &MembershipChange) -> Result<Membership, Forward> {
        let raft = &self.inner.raft;
        let result = match change {
            MembershipChange::AddLearner { id, addr } => {
                raft.add_learner(*id, Member { addr: addr.clone() }, true).await
            }
            MembershipChange::Promote { id } => {
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), false).await
            }
            MembershipChange::Remove { id } => {
                // One change, not two: `retain: false` drops a removed voter from the group
                // entirely, and a leader that removed itself cannot make a second change.
                let is_voter = raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == *id);
                let ids = BTreeSet::from([*id]);
                let change = if is_voter { ChangeMembers::RemoveVoters(ids) } else { ChangeMembers::RemoveNodes(ids) };
                raft.change_membership(change, false).await
            }
        };
        let response = result.map_err(Forward::from_write_error)?;
        // The committed configuration, not this member's metrics, which may not show it yet.
        Ok(match &response.membership {
            Some(membership) => Membership::from_raft(membership),
            None => self.status().membership,
        })
    }

    pub fn status(&self) -> MemberStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        MemberStatus {
            member_id: self.inner.id,
            cluster_id: self.cluster_id(),
            leader: metrics.current_leader,
            term: metrics.current_term,
            revision: self.revision(),
            compact_revision: self.compact_revision(),
            applied_index: metrics.last_applied.map(|l| l.index),
            snapshot_index: metrics.snapshot.map(|l| l.index),
            purged_index: metrics.purged.map(|l| l.index),
            membership: Membership::from_raft(metrics.membership_config.membership()),
        }
    }

    /// Adds the store's measurements to `registry` (see [`crate::prometheus`]).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.shared.instruments.register(registry, Arc::downgrade(&self.inner));
    }

    /// Builds a snapshot now (and purges the log behind it), instead of waiting for the policy.
    pub async fn trigger_snapshot(&self) -> Result<()> {
        self.inner.raft.trigger().snapshot().await.map_err(|_| Error::Stopped)
    }

    /// The HTTP service other members and remote clients call: serve it on the advertised URL.
    pub fn peer_router(&self) -> axum::Router {
        peer::router(self.clone())
    }

    /// Stops the Raft node and ends every watch. Once every clone of this handle (and every
    /// watch) is dropped, the data directory is released.
    pub async fn shutdown(&self) {
        self.inner.progress.abort();
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        self.inner.shared.hub.close();
        // openraft's worker tasks let go of the state machine and log a moment after its core
        // stops; wait for them, so that reopening the directory in this process works.
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while Arc::strong_count(&self.inner.shared) > 1 || Arc::strong_count(&self.inner.shared.db) > 1 {
            if Instant::now() > deadline {
                tracing::warn!("store tasks still hold the database after shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Proposes a command and waits until it is applied, forwarding it to the leader when this
    /// member is not. Retried only while it certainly did not reach a leader.
    async fn write(&self, command: Command) -> Result<Reply> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        loop {
            // A leader that lost its quorum never commits: give up at the deadline instead.
            match before(deadline, "the write to commit (it may still be applied)", self.write_here(command.clone()))
                .await?
            {
                Ok(reply) => return Ok(reply),
                Err(Forward::To(addr)) => {
                    match self.call_peer::<_, Result<Reply, Error>>(&addr, PATH_WRITE, &command, deadline).await? {
                        Some(Err(Error::NoLeader(_))) | None => {}
                        Some(result) => return result,
                    }
                }
                Err(Forward::NoLeader) => {}
                Err(Forward::Fail(e)) => return Err(e),
            }
            pause_until(deadline, "a leader to accept the write").await?;
        }
    }

    /// Proposes a command to the local Raft node, which must be the leader.
    pub(crate) async fn write_here(&self, command: Command) -> Result<Reply, Forward> {
        self.inner.proposer.propose(command).await
    }

    /// Waits until this member has applied everything committed before the call: the leader
    /// confirms it still leads (a heartbeat round) and names its commit index.
    async fn read_barrier(&self) -> Result<()> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        loop {
            let index = match before(deadline, "a leader to confirm a linearizable read", self.read_index_here())
                .await?
            {
                Ok(index) => index,
                Err(Forward::To(addr)) => {
                    match self.call_peer::<_, Result<Option<u64>, Error>>(&addr, PATH_READ_INDEX, &(), deadline).await?
                    {
                        Some(Ok(index)) => index,
                        Some(Err(Error::NoLeader(_))) | None => {
                            pause_until(deadline, "a leader to confirm a linearizable read").await?;
                            continue;
                        }
                        Some(Err(e)) => return Err(e),
                    }
                }
                Err(Forward::NoLeader) => {
                    pause_until(deadline, "a leader to confirm a linearizable read").await?;
                    continue;
                }
                Err(Forward::Fail(e)) => return Err(e),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            return self
                .inner
                .raft
                .wait(Some(remaining))
                .applied_index_at_least(index, "linearizable read")
                .await
                .map(|_| ())
                .map_err(|e| match e {
                    openraft::metrics::WaitError::Timeout(..) => {
                        Error::Timeout(format!("this member did not apply up to index {index:?} in time"))
                    }
                    openraft::metrics::WaitError::ShuttingDown => Error::Stopped,
                });
        }
    }

    /// The index a linearizable read must wait for, if this member leads.
    pub(crate) async fn read_index_here(&self) -> Result<Option<u64>, Forward> {
        match self.inner.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(read_log_id.map(|l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(fwd))) => Err(Forward::leader(fwd.leader_node)),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => Err(Forward::NoLeader),
            Err(RaftError::Fatal(_)) => Err(Forward::Fail(Error::Stopped)),
        }
    }

    /// Calls another member: `Ok(None)` when the request certainly was not delivered (no
    /// connection could be made), so that sending it again is safe; an error when it may have been.
    async fn call_peer<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        addr: &str,
        path: &str,
        req: &Req,
        deadline: Instant,
    ) -> Result<Option<Resp>> {
        let timeout = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        match self.inner.client.call(addr, path, req, timeout).await {
            Ok(resp) => Ok(Some(resp)),
            Err(CallError::Connect(e)) => {
                tracing::debug!(%addr, error = %e, "leader unreachable; retrying");
                Ok(None)
            }
            Err(CallError::Timeout(after)) => {
                Err(Error::Timeout(format!("the leader at {addr} did not answer within {after:?}")))
            }
            Err(e) => Err(Error::Unreachable { addr: addr.to_string(), message: e.to_string() }),
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").field("id", &self.id).field("cluster_id", &self.shared.cluster_id).finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.progress.abort();
    }
}

/// Why a request could not be served on this member.
#[derive(Clone, Debug)]
pub(crate) enum Forward {
    /// The leader is elsewhere, at this address.
    To(String),
    /// No leader is known right now.
    NoLeader,
    Fail(Error),
}

impl Forward {
    fn leader(node: Option<Member>) -> Self {
        node.map_or(Forward::NoLeader, |member| Forward::To(member.addr))
    }

    pub(crate) fn from_write_error(err: RaftError<u64, ClientWriteError<u64, Member>>) -> Self {
        match err {
            RaftError::APIError(ClientWriteError::ForwardToLeader(fwd)) => Forward::leader(fwd.leader_node),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e @ ChangeMembershipError::InProgress(_))) => {
                Forward::Fail(Error::MembershipBusy(e.to_string()))
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                Forward::Fail(Error::Membership(e.to_string()))
            }
            RaftError::Fatal(_) => Forward::Fail(Error::Stopped),
        }
    }
}

/// Runs `work`, or fails with a timeout naming what was awaited once `deadline` passes.
async fn before<T>(deadline: Instant, waiting_for: &str, work: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| Error::Timeout(format!("gave up waiting for {waiting_for}")))
}

async fn pause_until(deadline: Instant, waiting_for: &str) -> Result<()> {
    if Instant::now() >= deadline {
        return Err(Error::NoLeader(format!("gave up waiting for {waiting_for}")));
    }
    tokio::time::sleep(RETRY_PAUSE).await;
    Ok(())
}

/// Asks a running member which cluster it belongs to, for a member joining through it.
async fn fetch_identity(via: &str, tls: &rustls::ClientConfig, timeout: Duration) -> Result<Uuid> {
    Ok(StoreClient::connect(via, tls, timeout).await?.cluster_id())
}
