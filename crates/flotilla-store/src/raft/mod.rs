//! The Raft group around the keyspace: openraft's type configuration, the commands its log
//! carries, and the storage and network openraft drives.

pub(crate) mod log_store;
pub(crate) mod network;
pub(crate) mod proposer;
pub(crate) mod snapshot;
pub(crate) mod state_machine;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::kv::Revision;
use crate::request::{TxnRequest, TxnResponse};

/// A member as the group records it: the base URL its peers reach it at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// What a log entry asks of the keyspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Command {
    Txn(TxnRequest),
    Compact(Revision),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Txn(txn) => write!(
                f,
                "txn({} compares, {} success, {} failure)",
                txn.compare.len(),
                txn.success.len(),
                txn.failure.len()
            ),
            Command::Compact(revision) => write!(f, "compact({revision})"),
        }
    }
}

impl Command {
    /// Roughly the bytes the command adds to a log entry.
    pub(crate) fn size(&self) -> usize {
        match self {
            Command::Txn(txn) => txn.size(),
            Command::Compact(_) => 8,
        }
    }
}

/// A log entry's payload: commands proposed together, applied in order, each at its own revision.
/// Batching is what lets one fsync carry many writes (see [`proposer`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Batch(pub(crate) Vec<Command>);

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => one.fmt(f),
            many => write!(f, "batch of {} commands", many.len()),
        }
    }
}

/// What applying an entry answered. A compaction can be refused by the state it meets (a
/// revision already compacted); that refusal is an answer, decided identically on every member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// For entries that carry no command (blank and membership entries).
    Empty,
    Txn(TxnResponse),
    Compact(Result<Revision, Error>),
}

openraft::declare_raft_types!(
    /// The store's Raft types: member ids are `u64`, snapshots are files.
    pub(crate) TypeConfig:
        D = Batch,
        R = Vec<Reply>,
        NodeId = u64,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

pub(crate) type Raft = openraft::Raft<TypeConfig>;
pub(crate) type LogId = openraft::LogId<u64>;
pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type StoredMembership = openraft::StoredMembership<u64, Member>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<u64, Member>;
pub(crate) type StorageError = openraft::StorageError<u64>;
