//! Reads: ranges at the head or at a past revision, and history for watches. Each read is
//! served from one rocksdb snapshot, so it sees a single revision.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{DB, ReadOptions, SnapshotWithThreadMode};

use super::{Changes, HistoryRecord, KeyspaceState, KvRecord, META_KEYSPACE, history_key, parse_history_key};
use crate::db::{CF_HISTORY, CF_KV, CF_META, StoreDb, decode};
use crate::error::{Error, Result};
use crate::kv::{KeyRange, KeyValue, RangeEnd, Revision};
use crate::request::{RangeRequest, RangeResponse};

type Snapshot<'a> = SnapshotWithThreadMode<'a, DB>;

/// Reads a range at the revision the request names (the head when it names none).
///
/// The answer's `revision` is the store's revision at the time of the read, as etcd reports it,
/// whatever revision the keys were read at.
pub(crate) fn range(db: &StoreDb, req: &RangeRequest) -> Result<RangeResponse> {
    let snapshot = db.db().snapshot();
    let state = read_state(db, &snapshot)?;
    let at = req.revision.filter(|&r| r != 0).unwrap_or(state.revision);
    if at > state.revision {
        return Err(Error::FutureRevision { requested: at, current: state.revision });
    }
    if at < state.compact_revision {
        return Err(Error::Compacted { requested: at, compact_revision: state.compact_revision });
    }
    let mut out = Collector::new(req);
    if at == state.revision {
        scan(db, Some(&snapshot), CF_KV, &req.range, |key, value| {
            out.push(key, || decode_record(db, value))?;
            Ok(true)
        })?;
    } else {
        range_at(db, &snapshot, &req.range, at, &mut out)?;
    }
    Ok(out.finish(state.revision))
}

/// The range as it was at `at`: the head state with every later change undone. Only the
/// changes since `at` are held in memory; the head is streamed past them in key order and
/// decoded only where the collector keeps a record, so a page of a long list decodes the page,
/// and only steps over the rest of the keys to count them.
fn range_at(db: &StoreDb, snapshot: &Snapshot<'_>, range: &KeyRange, at: Revision, out: &mut Collector) -> Result<()> {
    // Each key's value at `at`: the `prev` of its oldest change after `at` (None: absent then).
    let mut undone: BTreeMap<Vec<u8>, Option<KvRecord>> = BTreeMap::new();
    let mut opts = ReadOptions::default();
    opts.set_snapshot(snapshot);
    opts.set_iterate_lower_bound(history_key(at + 1, 0));
    let mut iter = db.db().raw_iterator_cf_opt(db.cf(CF_HISTORY), opts);
    iter.seek_to_last();
    while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
        let revision = parse_history_key(key).map(|(r, _)| r);
        let change: HistoryRecord =
            decode(value).map_err(|e| db.corrupt(format!("history record at revision {revision:?}: {e}")))?;
        if range.contains(&change.key) {
            undone.insert(change.key, change.prev);
        }
        iter.prev();
    }
    iter.status()?;

    let mut undone = undone.into_iter().peekable();
    scan(db, Some(snapshot), CF_KV, range, |key, value| {
        // Keys deleted since `at` that come before this one.
        while let Some((gone, record)) = undone.next_if(|(k, _)| k.as_slice() < key) {
            if let Some(record) = record {
                out.push(&gone, || Ok(record))?;
            }
        }
        match undone.next_if(|(k, _)| k.as_slice() == key) {
            Some((_, Some(record))) => out.push(key, || Ok(record))?,
            Some((_, None)) => {} // created since `at`
            None => out.push(key, || decode_record(db, value))?,
        }
        Ok(true)
    })?;
    for (gone, record) in undone {
        if let Some(record) = record {
            out.push(&gone, || Ok(record))?;
        }
    }
    Ok(())
}

/// Reads the changes to `range` from revision `from` up to `until` (both inclusive), whole
/// revisions at a time, stopping at a revision boundary once about `max_changes` records were
/// read. Returns them with the next revision to read from (`until + 1` when done).
///
/// `compact_floor` is the state machine's compaction floor, raised before any history is deleted:
/// checking it after the iterator was created tells whether the read may miss something.
pub(crate) fn history_since(
    db: &StoreDb,
    from: Revision,
    until: Revision,
    range: &KeyRange,
    max_changes: usize,
    compact_floor: &AtomicU64,
) -> Result<(Vec<Changes>, Revision)> {
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(history_key(until + 1, 0));
    // An iterator reads one consistent view, taken here; a compaction that starts later cannot
    // pull revisions out from under it, and one that started earlier has raised the floor.
    let mut iter = db.db().raw_iterator_cf_opt(db.cf(CF_HISTORY), opts);
    let floor = compact_floor.load(Ordering::SeqCst);
    if from <= floor {
        return Err(Error::Compacted { requested: from, compact_revision: floor });
    }
    iter.seek(history_key(from, 0));
    let mut out: Vec<Changes> = Vec::new();
    let mut read = 0;
    let mut current = from;
    while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
        let (revision, _) =
            parse_history_key(key).ok_or_else(|| db.corrupt(format!("history key of {} bytes", key.len())))?;
        if revision != current && read >= max_changes {
            return Ok((out, revision));
        }
        current = revision;
        read += 1;
        let change: HistoryRecord =
            decode(value).map_err(|e| db.corrupt(format!("history record at revision {revision}: {e}")))?;
        if range.contains(&change.key) {
            let event = change.into_event(revision);
            match out.last_mut() {
                Some(last) if last.revision == revision => last.events.push(event),
                _ => out.push(Changes { revision, events: vec![event] }),
            }
        }
        iter.next();
    }
    iter.status()?;
    Ok((out, until + 1))
}

/// Calls `visit` for each key and value of `range` in `family`, in key order, until it returns false.
pub(crate) fn scan(
    db: &StoreDb,
    snapshot: Option<&Snapshot<'_>>,
    family: &str,
    range: &KeyRange,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool>,
) -> Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    let mut opts = ReadOptions::default();
    if let Some(snapshot) = snapshot {
        opts.set_snapshot(snapshot);
    }
    if range.end == RangeEnd::Single {
        let value = db.db().get_pinned_cf_opt(db.cf(family), &range.start, &opts)?;
        if let Some(value) = value {
            visit(&range.start, &value)?;
        }
        return Ok(());
    }
    if let Some(upper) = range.upper_bound() {
        opts.set_iterate_upper_bound(upper);
    }
    let mut iter = db.db().raw_iterator_cf_opt(db.cf(family), opts);
    iter.seek(&range.start);
    while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
        if !visit(key, value)? {
            return Ok(());
        }
        iter.next();
    }
    Ok(iter.status()?)
}

fn read_state(db: &StoreDb, snapshot: &Snapshot<'_>) -> Result<KeyspaceState> {
    match snapshot.get_pinned_cf(db.cf(CF_META), META_KEYSPACE)? {
        None => Ok(KeyspaceState::default()),
        Some(bytes) => decode(&bytes).map_err(|e| db.corrupt(format!("keyspace state: {e}"))),
    }
}

pub(crate) fn decode_record(db: &StoreDb, value: &[u8]) -> Result<KvRecord> {
    decode(value).map_err(|e| db.corrupt(format!("kv record: {e}")))
}

/// Applies `limit`, `count_only` and `keys_only` to a stream of keys in order.
pub(crate) struct Collector {
    limit: Option<u64>,
    count_only: bool,
    keys_only: bool,
    kvs: Vec<KeyValue>,
    count: u64,
}

impl Collector {
    pub(crate) fn new(req: &RangeRequest) -> Self {
        Collector {
            limit: req.limit.filter(|&l| l != 0),
            count_only: req.count_only,
            keys_only: req.keys_only,
            kvs: Vec::new(),
            count: 0,
        }
    }

    /// Counts the key, and decodes it only if it will be returned.
    pub(crate) fn push(&mut self, key: &[u8], record: impl FnOnce() -> Result<KvRecord>) -> Result<()> {
        self.count += 1;
        if self.count_only || self.limit.is_some_and(|limit| self.kvs.len() as u64 >= limit) {
            return Ok(());
        }
        let mut kv = record()?.into_kv(key);
        if self.keys_only {
            kv.value = Vec::new();
        }
        self.kvs.push(kv);
        Ok(())
    }

    pub(crate) fn finish(self, revision: Revision) -> RangeResponse {
        let more = !self.count_only && self.count > self.kvs.len() as u64;
        RangeResponse { revision, kvs: self.kvs, more, count: self.count }
    }
}
