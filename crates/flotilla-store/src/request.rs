//! What callers ask of the store and what it answers, with the limits every request must fit.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kv::{KeyRange, KeyValue, Revision};

/// The largest request the store accepts, in bytes of keys and values: etcd's default
/// `--max-request-bytes`. Guards against one client filling the Raft log, every member's memory
/// and every watcher's buffer with a single write.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// The most compares, or operations in one branch, of a transaction: etcd's default
/// `--max-txn-ops`. Guards against transactions whose apply stalls every other write.
pub const MAX_TXN_OPS: usize = 128;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began, on any member (Raft read index).
    #[default]
    Linearizable,
    /// Served from this member's state as it is, without asking the leader: faster, possibly stale.
    Serializable,
}

/// Read a key or a range of keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// At most this many keys (all when `None`); `more` in the answer says whether some were left.
    pub limit: Option<u64>,
    /// The state as of this revision (the latest when `None`). Fails once the revision is compacted.
    pub revision: Option<Revision>,
    /// Count the keys without returning them.
    pub count_only: bool,
    /// Return keys and counters without values.
    pub keys_only: bool,
    pub consistency: Consistency,
}

impl RangeRequest {
    pub fn new(range: KeyRange) -> Self {
        RangeRequest {
            range,
            limit: None,
            revision: None,
            count_only: false,
            keys_only: false,
            consistency: Consistency::default(),
        }
    }

    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    pub fn at_revision(mut self, revision: Revision) -> Self {
        self.revision = Some(revision);
        self
    }

    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }

    pub fn serializable(mut self) -> Self {
        self.consistency = Consistency::Serializable;
        self
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The store revision the read was served at.
    pub revision: Revision,
    /// The keys in order, at most `limit` of them (none for `count_only`).
    pub kvs: Vec<KeyValue>,
    /// True when `limit` left keys out.
    pub more: bool,
    /// How many keys the whole range holds, whatever the limit.
    pub count: u64,
}

/// A compare-and-swap transaction: if every compare holds, run `success`, else `failure`,
/// atomically and at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl TxnRequest {
    pub fn when(compare: impl IntoIterator<Item = Compare>) -> Self {
        TxnRequest { compare: compare.into_iter().collect(), ..Default::default() }
    }

    pub fn then(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.success = ops.into_iter().collect();
        self
    }

    pub fn otherwise(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.failure = ops.into_iter().collect();
        self
    }
}

/// One condition on one key. A missing key compares as all-zero counters, and never equal on value
/// (etcd's rule).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(u64),
    CreateRevision(Revision),
    ModRevision(Revision),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Compare {
    pub fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Compare { key: key.into(), op, target }
    }

    /// The key does not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Compare::new(key, CompareOp::Equal, CompareTarget::CreateRevision(0))
    }

    /// The key exists.
    pub fn exists(key: impl Into<Vec<u8>>) -> Self {
        Compare::new(key, CompareOp::Greater, CompareTarget::CreateRevision(0))
    }

    /// The key was last written at `revision` (the optimistic-concurrency check).
    pub fn mod_revision(key: impl Into<Vec<u8>>, revision: Revision) -> Self {
        Compare::new(key, CompareOp::Equal, CompareTarget::ModRevision(revision))
    }

    /// Evaluates the compare against the key's current state.
    pub(crate) fn holds(&self, current: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ordering = match (&self.target, current) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(want), Some(kv)) => kv.value.as_slice().cmp(want.as_slice()),
            (CompareTarget::Version(want), kv) => kv.map_or(0, |kv| kv.version).cmp(want),
            (CompareTarget::CreateRevision(want), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(want),
            (CompareTarget::ModRevision(want), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(want),
        };
        match self.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Greater => ordering == Ordering::Greater,
            CompareOp::Less => ordering == Ordering::Less,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Read at the transaction's own state (seeing the branch's earlier writes). `revision` and
    /// `consistency` must be left unset: a transaction reads where it writes.
    Range(RangeRequest),
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        prev_kv: bool,
    },
    Delete {
        range: KeyRange,
        prev_kv: bool,
    },
}

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put { key: key.into(), value: value.into(), prev_kv: false }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Op::Delete { range: KeyRange::key(key), prev_kv: false }
    }

    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        Op::Range(RangeRequest::new(KeyRange::key(key)))
    }

    /// Asks for the previous value of a put or delete (no effect on a range).
    pub fn with_prev_kv(self) -> Self {
        match self {
            Op::Put { key, value, .. } => Op::Put { key, value, prev_kv: true },
            Op::Delete { range, .. } => Op::Delete { range, prev_kv: true },
            range @ Op::Range(_) => range,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// The store revision after the transaction: its own revision if it wrote anything.
    pub revision: Revision,
    /// Whether every compare held (and so `success` ran).
    pub succeeded: bool,
    /// One response per operation of the branch that ran, in order.
    pub responses: Vec<OpResponse>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResponse {
    Range(RangeResponse),
    Put { prev_kv: Option<KeyValue> },
    Delete { deleted: u64, prev_kvs: Vec<KeyValue> },
}

impl TxnRequest {
    /// Refuses requests that are malformed or over the limits, before they reach the log.
    pub fn validate(&self) -> Result<()> {
        for (what, count) in [
            ("compares", self.compare.len()),
            ("success operations", self.success.len()),
            ("failure operations", self.failure.len()),
        ] {
            if count > MAX_TXN_OPS {
                return Err(Error::TooManyOperations { what: what.into(), count, limit: MAX_TXN_OPS });
            }
        }
        let size = self.size();
        if size > MAX_REQUEST_BYTES {
            return Err(Error::RequestTooLarge { size, limit: MAX_REQUEST_BYTES });
        }
        for compare in &self.compare {
            if compare.key.is_empty() {
                return Err(Error::InvalidArgument("compare has an empty key".into()));
            }
        }
        validate_branch(&self.success)?;
        validate_branch(&self.failure)
    }
}

impl RangeRequest {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.range.start.is_empty() && self.range.end == crate::kv::RangeEnd::Single {
            return Err(Error::InvalidArgument("range has an empty key".into()));
        }
        Ok(())
    }
}

/// etcd's rules for one branch: no empty keys, reads at the branch's own state, and no key
/// written twice (the outcome would depend on operation order in a way callers rarely mean).
fn validate_branch(ops: &[Op]) -> Result<()> {
    let mut written = BTreeSet::new();
    let mut deleted = Vec::new();
    for op in ops {
        match op {
            Op::Range(range) => {
                range.validate()?;
                if range.revision.is_some() || range.consistency != Consistency::default() {
                    return Err(Error::InvalidArgument(
                        "a range inside a transaction reads at the transaction's revision; \
                         revision and consistency must be unset"
                            .into(),
                    ));
                }
            }
            Op::Put { key, .. } => {
                if key.is_empty() {
                    return Err(Error::InvalidArgument("put has an empty key".into()));
                }
                if !written.insert(key.as_slice()) {
                    return Err(Error::InvalidArgument(format!(
                        "duplicate key given in transaction: {}",
                        String::from_utf8_lossy(key)
                    )));
                }
            }
            Op::Delete { range, .. } => {
                if range.start.is_empty() && range.end == crate::kv::RangeEnd::Single {
                    return Err(Error::InvalidArgument("delete has an empty key".into()));
                }
                deleted.push(range);
            }
        }
    }
    for range in deleted {
        if let Some(key) = written.iter().find(|key| range.contains(key)) {
            return Err(Error::InvalidArgument(format!(
                "duplicate key given in transaction: {} is both put and deleted",
                String::from_utf8_lossy(key)
            )));
        }
    }
    Ok(())
}

impl TxnRequest {
    /// Bytes of keys and values: what the request limit counts.
    pub(crate) fn size(&self) -> usize {
        self.compare.iter().map(Compare::size).sum::<usize>()
            + self.success.iter().chain(&self.failure).map(Op::size).sum::<usize>()
    }
}

impl Compare {
    fn size(&self) -> usize {
        self.key.len() + if let CompareTarget::Value(v) = &self.target { v.len() } else { 8 }
    }
}

impl Op {
    fn size(&self) -> usize {
        match self {
            Op::Range(r) => r.range.start.len() + r.range.upper_bound().map_or(0, |e| e.len()),
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { range, .. } => range.start.len() + range.upper_bound().map_or(0, |e| e.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_values_are_refused() {
        let txn = TxnRequest::default().then([Op::put("k", vec![0u8; MAX_REQUEST_BYTES + 1])]);
        let err = txn.validate().unwrap_err();
        assert!(matches!(err, Error::RequestTooLarge { .. }), "{err}");
        assert!(err.to_string().contains("1572864"), "{err}");
    }

    #[test]
    fn too_many_operations_are_refused() {
        let ops = (0..=MAX_TXN_OPS).map(|i| Op::put(format!("k{i}"), "v"));
        let err = TxnRequest::default().then(ops).validate().unwrap_err();
        assert!(matches!(err, Error::TooManyOperations { count: 129, .. }), "{err}");
    }

    #[test]
    fn duplicate_keys_in_one_branch_are_refused() {
        let txn = TxnRequest::default().then([Op::put("a", "1"), Op::put("a", "2")]);
        assert!(matches!(txn.validate(), Err(Error::InvalidArgument(_))));
        let txn = TxnRequest::default()
            .then([Op::put("a/1", "1"), Op::Delete { range: KeyRange::prefix("a/"), prev_kv: false }]);
        assert!(matches!(txn.validate(), Err(Error::InvalidArgument(_))));
        // The same key in the two branches is fine: only one of them runs.
        let txn = TxnRequest::default().then([Op::put("a", "1")]).otherwise([Op::put("a", "2")]);
        txn.validate().unwrap();
    }

    #[test]
    fn missing_keys_compare_as_zero_and_never_equal_on_value() {
        assert!(Compare::absent("k").holds(None));
        assert!(!Compare::exists("k").holds(None));
        assert!(!Compare::new("k", CompareOp::Equal, CompareTarget::Value(vec![])).holds(None));
        assert!(!Compare::new("k", CompareOp::NotEqual, CompareTarget::Value(vec![])).holds(None));
        let kv = KeyValue { key: b"k".to_vec(), value: b"v".to_vec(), create_revision: 2, mod_revision: 5, version: 3 };
        assert!(Compare::mod_revision("k", 5).holds(Some(&kv)));
        assert!(Compare::new("k", CompareOp::Less, CompareTarget::Version(4)).holds(Some(&kv)));
        assert!(Compare::new("k", CompareOp::Greater, CompareTarget::Value(b"u".to_vec())).holds(Some(&kv)));
    }
}
