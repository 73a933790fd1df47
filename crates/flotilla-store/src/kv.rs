//! Keys, values and the events that change them: the vocabulary of the keyspace.

use serde::{Deserialize, Serialize};

/// The store's logical clock. Every write transaction that changes at least one key advances
/// it by exactly one; it never goes backwards, across restarts and leader changes alike.
///
/// As in etcd, an empty store is at revision 1 and its first write makes revision 2, so that
/// 0 is free to mean "any revision" to callers such as the Kubernetes API.
pub type Revision = u64;

/// The revision of a store that has never been written.
pub const INITIAL_REVISION: Revision = 1;

/// One key at one revision, with etcd's per-key counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Empty for a deletion event, and when the read asked for keys only.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision of the write that created this generation of the key (0 for a deletion event).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since the key was (re)created: 1 after the create (0 for a deletion event).
    pub version: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change to one key. For a deletion, `kv` holds the key and the deleting revision only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The key as it was before this change, when the watcher asked for it and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// A set of keys: one key, a half-open interval, or everything from a key on.
///
/// etcd encodes the same thing as a `(key, range_end)` pair with magic values; an enum says it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyRange {
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    pub end: RangeEnd,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RangeEnd {
    /// Only `start` itself.
    Single,
    /// Keys in `[start, end)`.
    Before(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Every key at or after `start`.
    Unbounded,
}

impl KeyRange {
    /// Exactly one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        KeyRange { start: key.into(), end: RangeEnd::Single }
    }

    /// Every key that starts with `prefix` (every key at all for an empty prefix).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let end = match prefix_end(&start) {
            Some(end) => RangeEnd::Before(end),
            None => RangeEnd::Unbounded,
        };
        KeyRange { start, end }
    }

    /// Keys in `[start, end)`.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        KeyRange { start: start.into(), end: RangeEnd::Before(end.into()) }
    }

    /// Every key at or after `start`.
    pub fn from(start: impl Into<Vec<u8>>) -> Self {
        KeyRange { start: start.into(), end: RangeEnd::Unbounded }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => key == self.start.as_slice(),
            RangeEnd::Before(end) => key >= self.start.as_slice() && key < end.as_slice(),
            RangeEnd::Unbounded => key >= self.start.as_slice(),
        }
    }

    /// The first key after the range, if there is one: the exclusive upper bound of a scan.
    pub fn upper_bound(&self) -> Option<Vec<u8>> {
        match &self.end {
            RangeEnd::Single => {
                let mut next = self.start.clone();
                next.push(0);
                Some(next)
            }
            RangeEnd::Before(end) => Some(end.clone()),
            RangeEnd::Unbounded => None,
        }
    }

    /// True when no key can be in the range (an interval whose end is not after its start).
    pub fn is_empty(&self) -> bool {
        matches!(&self.end, RangeEnd::Before(end) if end.as_slice() <= self.start.as_slice())
    }
}

/// The smallest key greater than every key with this prefix, or `None` when there is none
/// (the prefix is empty or all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_cover_exactly_their_prefix() {
        let r = KeyRange::prefix("/registry/pods/");
        assert!(r.contains(b"/registry/pods/default/a"));
        assert!(r.contains(b"/registry/pods/"));
        assert!(!r.contains(b"/registry/pods"));
        assert!(!r.contains(b"/registry/podsx"));
        assert!(!r.contains(b"/registry/services/x"));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(KeyRange::prefix("").end, RangeEnd::Unbounded);
    }

    #[test]
    fn single_key_range_has_a_tight_upper_bound() {
        let r = KeyRange::key("a");
        assert!(r.contains(b"a"));
        assert!(!r.contains(b"a\0"));
        assert_eq!(r.upper_bound(), Some(b"a\0".to_vec()));
    }

    #[test]
    fn inverted_intervals_are_empty() {
        assert!(KeyRange::between("b", "a").is_empty());
        assert!(KeyRange::between("a", "a").is_empty());
        assert!(!KeyRange::between("a", "b").is_empty());
    }
}
