//! The Raft state machine: the keyspace, plus the applied log position and membership that
//! openraft needs back after a restart, written in the same rocksdb batch as the data they describe.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::snapshot::{self, SnapshotDir};
use super::{Batch, Command, Entry, LogId, Reply, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::db::{CF_META, StoreDb, encode};
use crate::error::{Error, Result};
use crate::keyspace::{Apply, KeyspaceState};
use crate::watch::WatchHub;

/// The `meta` key of [`SmMeta`].
pub(crate) const META_STATE_MACHINE: &[u8] = b"sm";
/// Present while a snapshot install is under way; names the snapshot file.
pub(crate) const META_INSTALLING: &[u8] = b"sm/installing";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SmMeta {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
}

/// What the state machine shares with readers: the database, the watch hub and the
/// compaction floor (which readers of history check).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) db: Arc<StoreDb>,
    pub(crate) hub: WatchHub,
    /// Raised before any history is deleted, so a history reader can tell it may have missed some.
    pub(crate) compact_floor: AtomicU64,
    pub(crate) snapshots: SnapshotDir,
    pub(crate) cluster_id: Uuid,
    pub(crate) instruments: crate::prometheus::Instruments,
}

#[derive(Debug)]
pub(crate) struct StateMachine {
    shared: Arc<Shared>,
    meta: SmMeta,
    state: KeyspaceState,
    /// Files opened by `begin_receiving_snapshot` and not yet installed.
    receiving: Vec<PathBuf>,
}

impl StateMachine {
    /// Loads the state machine, first finishing a snapshot install that a crash interrupted.
    pub(crate) fn open(shared: Arc<Shared>) -> Result<Self> {
        if let Some(name) = shared.db.get_meta::<String>(META_INSTALLING)? {
            let path = shared.snapshots.path().join(&name);
            if !path.exists() {
                return Err(shared
                    .db
                    .corrupt(format!("an interrupted snapshot install names {name}, which is missing")));
            }
            tracing::warn!(snapshot = %name, "finishing a snapshot install that was interrupted");
            snapshot::install(&shared.db, &path)?;
        }
        let mut machine =
            StateMachine { shared, meta: SmMeta::default(), state: KeyspaceState::default(), receiving: Vec::new() };
        machine.reload()?;
        Ok(machine)
    }

    fn reload(&mut self) -> Result<()> {
        self.meta = self.shared.db.get_meta(META_STATE_MACHINE)?.unwrap_or_default();
        self.state = KeyspaceState::load(&self.shared.db)?;
        self.shared.compact_floor.store(self.state.compact_revision, Ordering::SeqCst);
        Ok(())
    }

    pub(crate) fn revision(&self) -> u64 {
        self.state.revision
    }

    fn apply_entries(&mut self, entries: impl IntoIterator<Item = Entry>) -> Result<Vec<Vec<Reply>>> {
        let shared = self.shared.clone();
        let mut apply = Apply::new(&shared.db, self.state);
        let mut replies = Vec::new();
        for entry in entries {
            self.meta.last_applied = Some(entry.log_id);
            replies.push(match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(Batch(commands)) => commands
                    .iter()
                    .map(|command| {
                        Ok(match command {
                            Command::Txn(txn) => Reply::Txn(apply.txn(txn)?),
                            Command::Compact(revision) => Reply::Compact(apply.compact(*revision)),
                        })
                    })
                    .collect::<Result<_>>()?,
                EntryPayload::Membership(membership) => {
                    self.meta.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Vec::new()
                }
            });
        }
        let (mut batch, state, changes) = apply.finish();
        batch.put_cf(shared.db.cf(CF_META), META_STATE_MACHINE, encode(&self.meta));
        if state.compact_revision > self.state.compact_revision {
            // Before the deletion is written: see `keyspace::history_since`.
            shared.compact_floor.store(state.compact_revision, Ordering::SeqCst);
        }
        // Not synced: the log entries are, and a crash re-applies them from there.
        let writing = std::time::Instant::now();
        shared.db.db().write(batch)?;
        shared.instruments.backend_commit.observe(writing.elapsed().as_secs_f64());
        self.state = state;
        shared.hub.publish(state.revision, changes);
        Ok(replies)
    }
}

fn storage_error(err: impl Into<Error>) -> StorageError {
    StorageIOError::write_state_machine(&err.into()).into()
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.meta.last_applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Reply>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries).map_err(storage_error)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { shared: self.shared.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let (path, file) = self.shared.snapshots.incoming().map_err(storage_error)?;
        self.receiving.push(path);
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut data: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let received = async {
            data.flush().await?;
            data.sync_all().await?;
            data.metadata().await.map(|m| m.ino())
        }
        .await
        .map_err(|e| storage_error(Error::storage("finish receiving a snapshot", e)))?;
        // openraft hands the file back, not its name: find which of ours it is.
        let path = self
            .receiving
            .iter()
            .find(|path| std::fs::metadata(path).is_ok_and(|m| m.ino() == received))
            .cloned()
            .ok_or_else(|| storage_error(Error::Storage("installing a snapshot this member did not receive".into())))?;
        for abandoned in self.receiving.drain(..).filter(|p| *p != path) {
            let _ = std::fs::remove_file(abandoned);
        }
        let shared = self.shared.clone();
        let expected = meta.clone();
        tokio::task::spawn_blocking(move || {
            let (header, published) = shared.snapshots.accept(&path, shared.cluster_id)?;
            if header.meta != expected {
                return Err(Error::Storage(format!(
                    "snapshot file holds {}, the leader announced {expected}",
                    header.meta
                )));
            }
            snapshot::install(&shared.db, &published)
        })
        .await
        .map_err(|e| storage_error(Error::Storage(format!("snapshot install task: {e}"))))?
        .map_err(storage_error)?;
        self.reload().map_err(storage_error)?;
        tracing::info!(snapshot = %meta, revision = self.state.revision, "installed a snapshot");
        self.shared.hub.reset(self.state.revision, "this member's state was replaced by a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some((header, path)) = self.shared.snapshots.current().map_err(storage_error)? else {
            return Ok(None);
        };
        let file =
            tokio::fs::File::open(&path).await.map_err(|e| storage_error(Error::storage("open a snapshot", e)))?;
        Ok(Some(Snapshot { meta: header.meta, snapshot: Box::new(file) }))
    }
}

/// Builds a snapshot off the state machine's task, from a rocksdb snapshot, while applies go on.
#[derive(Debug)]
pub(crate) struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let (meta, path) = tokio::task::spawn_blocking(move || shared.snapshots.build(&shared.db, shared.cluster_id))
            .await
            .map_err(|e| storage_error(Error::Storage(format!("snapshot build task: {e}"))))?
            .map_err(storage_error)?;
        tracing::info!(snapshot = %meta, "built a snapshot");
        let file =
            tokio::fs::File::open(&path).await.map_err(|e| storage_error(Error::storage("open a snapshot", e)))?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}
