//! The Raft log and vote in rocksdb, with group commit: an append is written at once (so it is
//! readable) and acknowledged by a sync thread after the WAL fsync that covers it. Appends that
//! arrive while one fsync runs share the next one, which is what lets 64 clients cost far fewer
//! than 64 fsyncs.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::mpsc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, StorageIOError, Vote};
use rocksdb::{ReadOptions, WriteBatch};

use super::{Entry, LogId, StorageError, TypeConfig};
use crate::db::{CF_LOG, CF_META, StoreDb, decode, encode, sync_write};

const META_VOTE: &[u8] = b"raft/vote";
const META_COMMITTED: &[u8] = b"raft/committed";
const META_PURGED: &[u8] = b"raft/purged";

/// The log store openraft owns; clones share the database and the sync thread.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<StoreDb>,
    sync: Arc<SyncThread>,
}

/// The thread that fsyncs the WAL for appends, joined when the last log store goes: the
/// database it holds is then closed before whoever dropped the store goes on (a process that
/// exits right after shutting its store down must not find RocksDB still closing elsewhere).
struct SyncThread {
    syncs: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.syncs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("path", &self.db.path()).finish()
    }
}

impl LogStore {
    /// `fsyncs` times every fsync of the WAL.
    pub(crate) fn new(
        db: Arc<StoreDb>,
        fsyncs: prometheus_client::metrics::histogram::Histogram,
    ) -> std::io::Result<Self> {
        let (syncs, pending) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let sync_db = db.clone();
        // The thread ends when the last LogStore clone is dropped and the channel closes.
        let thread = std::thread::Builder::new().name("flotilla-log-sync".into()).spawn(move || {
            while let Ok(first) = pending.recv() {
                let mut batch = vec![first];
                batch.extend(pending.try_iter());
                let syncing = std::time::Instant::now();
                let synced = sync_db.db().flush_wal(true);
                fsyncs.observe(syncing.elapsed().as_secs_f64());
                for flushed in batch {
                    flushed.log_io_completed(synced.as_ref().map(|_| ()).map_err(|e| io::Error::other(e.to_string())));
                }
            }
        })?;
        Ok(LogStore { db, sync: Arc::new(SyncThread { syncs: Some(syncs), thread: Some(thread) }) })
    }

    fn log_key(index: u64) -> [u8; 8] {
        index.to_be_bytes()
    }

    fn last_entry(&self) -> crate::Result<Option<LogId>> {
        let mut iter = self.db.db().raw_iterator_cf(self.db.cf(CF_LOG));
        iter.seek_to_last();
        let last = match iter.value() {
            Some(value) => Some(self.decode_entry(value)?.log_id),
            None => None,
        };
        iter.status()?;
        Ok(last)
    }

    fn decode_entry(&self, value: &[u8]) -> crate::Result<Entry> {
        decode::<Entry>(value).map_err(|e| self.db.corrupt(format!("log entry: {e}")))
    }

    fn entries(&self, range: impl RangeBounds<u64>) -> crate::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut opts = ReadOptions::default();
        match range.end_bound() {
            Bound::Included(&i) => opts.set_iterate_upper_bound(Self::log_key(i + 1)),
            Bound::Excluded(&i) => opts.set_iterate_upper_bound(Self::log_key(i)),
            Bound::Unbounded => {}
        }
        let mut iter = self.db.db().raw_iterator_cf_opt(self.db.cf(CF_LOG), opts);
        iter.seek(Self::log_key(start));
        let mut entries = Vec::new();
        while let Some(value) = iter.value() {
            entries.push(self.decode_entry(value)?);
            iter.next();
        }
        iter.status()?;
        Ok(entries)
    }
}

/// openraft's error for a failed read of `subject`.
fn read_error(subject: ErrorSubject<u64>) -> impl FnOnce(crate::Error) -> StorageError {
    move |e| StorageIOError::new(subject, ErrorVerb::Read, &e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries(range).map_err(read_error(ErrorSubject::Logs))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> =
            self.db.get_meta(META_PURGED).map_err(read_error(ErrorSubject::Logs))?;
        let last_log_id = self.last_entry().map_err(read_error(ErrorSubject::Logs))?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.db
            .db()
            .put_cf_opt(self.db.cf(CF_META), META_VOTE, encode(vote), &sync_write())
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.db.get_meta(META_VOTE).map_err(read_error(ErrorSubject::Vote))
    }

    /// Not synced: a committed index lost in a crash is only learned again from the leader.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.db
            .db()
            .put_cf(self.db.cf(CF_META), META_COMMITTED, encode(&committed))
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.db.get_meta::<Option<LogId>>(META_COMMITTED).map_err(read_error(ErrorSubject::Store))?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let log = self.db.cf(CF_LOG);
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(log, Self::log_key(entry.get_log_id().index), encode(&entry));
        }
        self.db.db().write(batch).map_err(|e| StorageIOError::write_logs(&e))?;
        let stopped = || StorageIOError::write_logs(&io::Error::other("the log sync thread stopped"));
        self.sync.syncs.as_ref().ok_or_else(stopped)?.send(callback).map_err(|_| stopped())?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.db
            .db()
            .delete_range_cf_opt(
                self.db.cf(CF_LOG),
                Self::log_key(log_id.index),
                Self::log_key(u64::MAX),
                &sync_write(),
            )
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    /// Synced, and that matters beyond the log: the fsync also makes durable every state machine
    /// write before it, so the applied state can never fall behind the purged log after a crash.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(CF_META), META_PURGED, encode(&log_id));
        batch.delete_range_cf(self.db.cf(CF_LOG), Self::log_key(0), Self::log_key(log_id.index + 1));
        self.db.db().write_opt(batch, &sync_write()).map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
