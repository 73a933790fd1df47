//! Writes: transactions and compaction, applied in log order into one rocksdb write batch.

use std::collections::BTreeMap;
use std::ops::Bound;

use rocksdb::WriteBatch;

use super::read::{Collector, decode_record, scan};
use super::{Changes, HistoryRecord, KeyspaceState, KvRecord, META_KEYSPACE, history_key};
use crate::db::{CF_HISTORY, CF_KV, CF_META, StoreDb, encode};
use crate::error::{Error, Result};
use crate::kv::{KeyRange, Revision};
use crate::request::{Op, OpResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse};

/// Applies a run of commands on top of the stored state. Later commands see earlier ones through
/// `overlay`; nothing reaches rocksdb until the caller writes [`Apply::finish`]'s batch.
pub(crate) struct Apply<'a> {
    db: &'a StoreDb,
    state: KeyspaceState,
    /// Keys written by this run and not yet in rocksdb: `None` is a deletion.
    overlay: BTreeMap<Vec<u8>, Option<KvRecord>>,
    batch: WriteBatch,
    changes: Vec<Changes>,
}

impl<'a> Apply<'a> {
    pub(crate) fn new(db: &'a StoreDb, state: KeyspaceState) -> Self {
        Apply { db, state, overlay: BTreeMap::new(), batch: WriteBatch::default(), changes: Vec::new() }
    }

    /// Runs one transaction. It takes the next revision if, and only if, it changes something.
    pub(crate) fn txn(&mut self, txn: &TxnRequest) -> Result<TxnResponse> {
        let mut succeeded = true;
        for compare in &txn.compare {
            let current = self.get(&compare.key)?.map(|record| record.into_kv(&compare.key));
            if !compare.holds(current.as_ref()) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &txn.success } else { &txn.failure };
        let revision = self.state.revision + 1;
        let mut changes: Vec<HistoryRecord> = Vec::new();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                Op::Range(req) => {
                    let at = if changes.is_empty() { self.state.revision } else { revision };
                    OpResponse::Range(self.range(req, at)?)
                }
                Op::Put { key, value, prev_kv } => {
                    let prev = self.get(key)?;
                    let written = KvRecord {
                        create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        value: value.clone(),
                    };
                    self.overlay.insert(key.clone(), Some(written.clone()));
                    let response =
                        OpResponse::Put { prev_kv: prev.as_ref().filter(|_| *prev_kv).map(|p| p.to_kv(key)) };
                    changes.push(HistoryRecord { key: key.clone(), written: Some(written), prev });
                    response
                }
                Op::Delete { range, prev_kv } => {
                    let mut doomed = Vec::new();
                    self.for_each(range, |key, record| {
                        doomed.push((key.to_vec(), record.clone()));
                        Ok(true)
                    })?;
                    let deleted = doomed.len() as u64;
                    let mut prev_kvs = Vec::new();
                    for (key, prev) in doomed {
                        self.overlay.insert(key.clone(), None);
                        if *prev_kv {
                            prev_kvs.push(prev.to_kv(&key));
                        }
                        changes.push(HistoryRecord { key, written: None, prev: Some(prev) });
                    }
                    OpResponse::Delete { deleted, prev_kvs }
                }
            };
            responses.push(response);
        }
        if !changes.is_empty() {
            let history = self.db.cf(CF_HISTORY);
            for (sub, change) in changes.iter().enumerate() {
                self.batch.put_cf(history, history_key(revision, sub as u32), encode(change));
            }
            self.state.revision = revision;
            let events = changes.into_iter().map(|change| change.into_event(revision)).collect();
            self.changes.push(Changes { revision, events });
        }
        Ok(TxnResponse { revision: self.state.revision, succeeded, responses })
    }

    /// Forgets history up to and including `revision`. Reads at `revision` or later still work;
    /// watches must start after it.
    pub(crate) fn compact(&mut self, revision: Revision) -> Result<Revision> {
        if revision <= self.state.compact_revision {
            return Err(Error::Compacted { requested: revision, compact_revision: self.state.compact_revision });
        }
        if revision > self.state.revision {
            return Err(Error::FutureRevision { requested: revision, current: self.state.revision });
        }
        self.batch.delete_range_cf(self.db.cf(CF_HISTORY), history_key(0, 0), history_key(revision + 1, 0));
        self.state.compact_revision = revision;
        Ok(revision)
    }

    /// The batch to write (the caller adds its own bookkeeping), the new state, and the changes to
    /// publish to watchers once the batch is written.
    pub(crate) fn finish(mut self) -> (WriteBatch, KeyspaceState, Vec<Changes>) {
        let kv = self.db.cf(CF_KV);
        for (key, record) in &self.overlay {
            match record {
                Some(record) => self.batch.put_cf(kv, key, encode(record)),
                None => self.batch.delete_cf(kv, key),
            }
        }
        self.batch.put_cf(self.db.cf(CF_META), META_KEYSPACE, encode(&self.state));
        (self.batch, self.state, self.changes)
    }

    fn get(&self, key: &[u8]) -> Result<Option<KvRecord>> {
        if let Some(record) = self.overlay.get(key) {
            return Ok(record.clone());
        }
        let mut found = None;
        scan(self.db, None, CF_KV, &KeyRange::key(key), |_, value| {
            found = Some(decode_record(self.db, value)?);
            Ok(false)
        })?;
        Ok(found)
    }

    fn range(&self, req: &RangeRequest, revision: Revision) -> Result<RangeResponse> {
        let mut out = Collector::new(req);
        self.for_each(&req.range, |key, record| {
            out.push(key, || Ok(record.clone()))?;
            Ok(true)
        })?;
        Ok(out.finish(revision))
    }

    /// Visits the current records of `range` in key order: rocksdb's, overridden by the overlay.
    fn for_each(&self, range: &KeyRange, mut visit: impl FnMut(&[u8], &KvRecord) -> Result<bool>) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let upper = range.upper_bound();
        let bounds =
            (Bound::Included(range.start.as_slice()), upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded));
        let mut pending = self.overlay.range::<[u8], _>(bounds).peekable();
        let mut stopped = false;
        scan(self.db, None, CF_KV, range, |key, value| {
            // Overlay keys that sort first come first; one equal to the stored key replaces it.
            while let Some((pending_key, record)) = pending.next_if(|(k, _)| k.as_slice() <= key) {
                let replaces = pending_key.as_slice() == key;
                if let Some(record) = record
                    && !visit(pending_key, record)?
                {
                    stopped = true;
                    return Ok(false);
                }
                if replaces {
                    return Ok(true);
                }
            }
            if !visit(key, &decode_record(self.db, value)?)? {
                stopped = true;
                return Ok(false);
            }
            Ok(true)
        })?;
        if !stopped {
            for (key, record) in pending {
                if let Some(record) = record
                    && !visit(key, record)?
                {
                    break;
                }
            }
        }
        Ok(())
    }
}
