//! The store's one error type. It crosses the wire between members (a forwarded write answers
//! with the leader's error), so it carries strings rather than foreign error types.

use serde::{Deserialize, Serialize};

use crate::kv::Revision;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// The revision asked for is below the compaction floor. Not retryable at that revision:
    /// read again at the current revision (the API server answers 410 Gone).
    #[error("required revision {requested} has been compacted (compacted up to revision {compact_revision})")]
    Compacted { requested: Revision, compact_revision: Revision },

    /// The revision asked for has not been written yet. Retryable once the store catches up.
    #[error("required revision {requested} is a future revision (current revision is {current})")]
    FutureRevision { requested: Revision, current: Revision },

    /// The request is over [`MAX_REQUEST_BYTES`](crate::MAX_REQUEST_BYTES). Not retryable.
    #[error("request is too large: {size} bytes, the limit is {limit} bytes")]
    RequestTooLarge { size: usize, limit: usize },

    /// The transaction is over [`MAX_TXN_OPS`](crate::MAX_TXN_OPS). Not retryable.
    #[error("too many {what} in transaction: {count}, the limit is {limit}")]
    TooManyOperations { what: String, count: usize, limit: usize },

    /// The request is malformed. Not retryable.
    #[error("invalid request: {0}")]
    InvalidArgument(String),

    /// The watch ended early (it fell behind, or this member's state was replaced by a snapshot).
    /// Every event up to `resume_from - 1` was delivered: watch again from `resume_from`.
    #[error("watch cancelled: {reason}; resume from revision {resume_from}")]
    WatchCancelled { reason: String, resume_from: Revision },

    /// The group has no leader right now (an election, or a lost quorum). Retryable.
    #[error("no leader: {0}")]
    NoLeader(String),

    /// A call to another member failed or took too long. Retryable.
    #[error("member at {addr}: {message}")]
    Unreachable { addr: String, message: String },

    /// Waiting for the group took longer than allowed. Retryable.
    #[error("timed out: {0}")]
    Timeout(String),

    /// The data directory cannot be used as it is: corrupt, from another cluster or member, or
    /// from an incompatible version. Not retryable: it needs an operator, never a silent reset.
    #[error("data directory {path}: {problem}")]
    DataDir { path: String, problem: String },

    /// A membership change was refused (not retryable as it is).
    #[error("membership change refused: {0}")]
    Membership(String),

    /// Disk or database failure. The member stops serving; not retryable here.
    #[error("storage failure: {0}")]
    Storage(String),

    /// The member is shutting down, or its Raft core stopped.
    #[error("the store is shutting down")]
    Stopped,

    /// The previous membership change has not committed yet (right after an election, the new
    /// leader's own configuration entry). Retryable in a moment. Last, so that the variants
    /// before it keep their numbers on the wire.
    #[error("membership change in progress: {0}")]
    MembershipBusy(String),
}

impl Error {
    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::FutureRevision { .. }
                | Error::NoLeader(_)
                | Error::Unreachable { .. }
                | Error::Timeout(_)
                | Error::MembershipBusy(_)
        )
    }

    pub(crate) fn storage(what: &str, err: impl std::fmt::Display) -> Self {
        Error::Storage(format!("{what}: {err}"))
    }
}

impl From<rocksdb::Error> for Error {
    fn from(err: rocksdb::Error) -> Self {
        Error::Storage(err.to_string())
    }
}
