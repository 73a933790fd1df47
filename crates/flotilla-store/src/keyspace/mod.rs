//! The MVCC keyspace: etcd's data model over the `kv`, `history` and `meta` column families.
//!
//! `kv` holds each live key's current record, so reads at the head revision are one scan.
//! `history` holds every change by revision, with the record it replaced: watches replay it
//! forwards, and reads at a past revision undo it backwards from the head. Compaction deletes
//! history up to a revision; nothing else ever shrinks it.
//!
//! Nothing here knows Raft: the state machine feeds [`Apply`] one command at a time and writes
//! the batch it produces together with its own bookkeeping.

mod apply;
mod read;

use serde::{Deserialize, Serialize};

pub(crate) use apply::Apply;
pub(crate) use read::{history_since, range};

use crate::db::StoreDb;
use crate::error::Result;
use crate::kv::{Event, EventKind, INITIAL_REVISION, KeyValue, Revision};

/// The `meta` key of [`KeyspaceState`].
const META_KEYSPACE: &[u8] = b"keyspace";

/// The keyspace's clocks, written in every batch that changes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyspaceState {
    /// The revision of the last write.
    pub(crate) revision: Revision,
    /// History at or below this revision is gone (0: nothing compacted yet).
    pub(crate) compact_revision: Revision,
}

impl Default for KeyspaceState {
    fn default() -> Self {
        KeyspaceState { revision: INITIAL_REVISION, compact_revision: 0 }
    }
}

impl KeyspaceState {
    pub(crate) fn load(db: &StoreDb) -> Result<KeyspaceState> {
        Ok(db.get_meta(META_KEYSPACE)?.unwrap_or_default())
    }
}

/// A key's current generation, as stored in `kv` (the key itself is the rocksdb key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KvRecord {
    pub(crate) create_revision: Revision,
    pub(crate) mod_revision: Revision,
    pub(crate) version: u64,
    #[serde(with = "serde_bytes")]
    pub(crate) value: Vec<u8>,
}

impl KvRecord {
    pub(crate) fn to_kv(&self, key: &[u8]) -> KeyValue {
        self.clone().into_kv(key)
    }

    pub(crate) fn into_kv(self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

/// One change, as stored in `history` under its revision and position in the transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HistoryRecord {
    #[serde(with = "serde_bytes")]
    pub(crate) key: Vec<u8>,
    /// The record written, or `None` for a deletion.
    pub(crate) written: Option<KvRecord>,
    /// The record replaced, or `None` if the key did not exist.
    pub(crate) prev: Option<KvRecord>,
}

impl HistoryRecord {
    pub(crate) fn into_event(self, revision: Revision) -> Event {
        let (kind, kv) = match self.written {
            Some(record) => (EventKind::Put, record.into_kv(&self.key)),
            None => (
                EventKind::Delete,
                KeyValue {
                    key: self.key.clone(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: revision,
                    version: 0,
                },
            ),
        };
        Event { kind, kv, prev_kv: self.prev.map(|prev| prev.into_kv(&self.key)) }
    }
}

/// Every change one transaction made, in operation order: the unit a watcher receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) revision: Revision,
    pub(crate) events: Vec<Event>,
}

/// The `history` key of the `sub`-th change at `revision`.
pub(crate) fn history_key(revision: Revision, sub: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&revision.to_be_bytes());
    key[8..].copy_from_slice(&sub.to_be_bytes());
    key
}

pub(crate) fn parse_history_key(key: &[u8]) -> Option<(Revision, u32)> {
    let key: &[u8; 12] = key.try_into().ok()?;
    let revision = Revision::from_be_bytes(key[..8].try_into().ok()?);
    let sub = u32::from_be_bytes(key[8..].try_into().ok()?);
    Some((revision, sub))
}

#[cfg(test)]
mod tests;
