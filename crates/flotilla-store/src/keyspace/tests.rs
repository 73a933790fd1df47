//! The keyspace against a model that keeps every revision's whole state in memory: random
//! sequences of puts, deletes, transactions, compactions and reads at past revisions must get
//! the same answers from both, however the commands are grouped into apply batches.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::db::{Expect, StoreDb};
use crate::error::Error;
use crate::kv::{Event, EventKind, KeyRange, KeyValue};
use crate::request::{
    Compare, CompareOp, CompareTarget, Op, OpResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};

type State = BTreeMap<Vec<u8>, KeyValue>;

/// Every revision's full state, and every revision's events: obviously right, hopelessly slow.
struct Model {
    states: BTreeMap<Revision, State>,
    events: BTreeMap<Revision, Vec<Event>>,
    compact_revision: Revision,
}

impl Model {
    fn new() -> Self {
        Model {
            states: BTreeMap::from([(INITIAL_REVISION, State::new())]),
            events: BTreeMap::new(),
            compact_revision: 0,
        }
    }

    fn head(&self) -> Revision {
        *self.states.keys().next_back().unwrap()
    }

    fn txn(&mut self, txn: &TxnRequest) -> TxnResponse {
        let head = self.head();
        let mut state = self.states[&head].clone();
        let succeeded = txn.compare.iter().all(|c| model_compare(c, state.get(&c.key)));
        let revision = head + 1;
        let mut events = Vec::new();
        let mut responses = Vec::new();
        for op in if succeeded { &txn.success } else { &txn.failure } {
            responses.push(match op {
                Op::Range(req) => {
                    let at = if events.is_empty() { head } else { revision };
                    OpResponse::Range(model_range(&state, req, at))
                }
                Op::Put { key, value, prev_kv } => {
                    let prev = state.get(key).cloned();
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                    };
                    state.insert(key.clone(), kv.clone());
                    events.push(Event { kind: EventKind::Put, kv, prev_kv: prev.clone() });
                    OpResponse::Put { prev_kv: prev.filter(|_| *prev_kv) }
                }
                Op::Delete { range, prev_kv } => {
                    let doomed: Vec<KeyValue> = state.values().filter(|kv| range.contains(&kv.key)).cloned().collect();
                    for prev in &doomed {
                        state.remove(&prev.key);
                        let kv = KeyValue {
                            key: prev.key.clone(),
                            value: vec![],
                            create_revision: 0,
                            mod_revision: revision,
                            version: 0,
                        };
                        events.push(Event { kind: EventKind::Delete, kv, prev_kv: Some(prev.clone()) });
                    }
                    OpResponse::Delete {
                        deleted: doomed.len() as u64,
                        prev_kvs: if *prev_kv { doomed } else { vec![] },
                    }
                }
            });
        }
        let revision = if events.is_empty() {
            head
        } else {
            self.states.insert(revision, state);
            self.events.insert(revision, events);
            revision
        };
        TxnResponse { revision, succeeded, responses }
    }

    fn compact(&mut self, revision: Revision) -> Result<Revision, Error> {
        if revision <= self.compact_revision {
            return Err(Error::Compacted { requested: revision, compact_revision: self.compact_revision });
        }
        if revision > self.head() {
            return Err(Error::FutureRevision { requested: revision, current: self.head() });
        }
        self.compact_revision = revision;
        Ok(revision)
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        let head = self.head();
        let at = req.revision.filter(|&r| r != 0).unwrap_or(head);
        if at > head {
            return Err(Error::FutureRevision { requested: at, current: head });
        }
        if at < self.compact_revision {
            return Err(Error::Compacted { requested: at, compact_revision: self.compact_revision });
        }
        Ok(model_range(&self.states[&at], req, head))
    }
}

fn model_compare(c: &Compare, kv: Option<&KeyValue>) -> bool {
    let (actual, wanted): (Vec<u8>, Vec<u8>) = match (&c.target, kv) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(kv)) => (kv.value.clone(), v.clone()),
        (CompareTarget::Version(v), kv) => {
            (kv.map_or(0, |kv| kv.version).to_be_bytes().to_vec(), v.to_be_bytes().to_vec())
        }
        (CompareTarget::CreateRevision(v), kv) => {
            (kv.map_or(0, |kv| kv.create_revision).to_be_bytes().to_vec(), v.to_be_bytes().to_vec())
        }
        (CompareTarget::ModRevision(v), kv) => {
            (kv.map_or(0, |kv| kv.mod_revision).to_be_bytes().to_vec(), v.to_be_bytes().to_vec())
        }
    };
    match c.op {
        CompareOp::Equal => actual == wanted,
        CompareOp::NotEqual => actual != wanted,
        CompareOp::Greater => actual > wanted,
        CompareOp::Less => actual < wanted,
    }
}

fn model_range(state: &State, req: &RangeRequest, revision: Revision) -> RangeResponse {
    let all: Vec<&KeyValue> = state.values().filter(|kv| req.range.contains(&kv.key)).collect();
    let count = all.len() as u64;
    if req.count_only {
        return RangeResponse { revision, kvs: vec![], more: false, count };
    }
    let limit = req.limit.filter(|&l| l != 0).map_or(usize::MAX, |l| l as usize);
    let kvs: Vec<KeyValue> = all
        .into_iter()
        .take(limit)
        .map(|kv| KeyValue { value: if req.keys_only { vec![] } else { kv.value.clone() }, ..kv.clone() })
        .collect();
    RangeResponse { revision, more: (kvs.len() as u64) < count, kvs, count }
}

#[derive(Clone, Debug)]
enum Command {
    Txn(TxnRequest),
    Compact(Revision),
    Range(RangeRequest),
}

const PREFIXES: &[&[u8]] = &[b"", b"a", b"a/", b"b", b"c\xff"];
const KEYS: &[&[u8]] = &[b"a", b"a/1", b"a/2", b"ab", b"b", b"b/x", b"c\xff", b"c\xff\xff", b"d"];

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KEYS).prop_map(|k| k.to_vec())
}

fn key_range() -> impl Strategy<Value = KeyRange> {
    prop_oneof![
        key().prop_map(KeyRange::key),
        prop::sample::select(PREFIXES).prop_map(KeyRange::prefix),
        (key(), key()).prop_map(|(a, b)| KeyRange::between(a, b)),
        key().prop_map(KeyRange::from),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(&b"xyz"[..]), 0..3)
}

fn compare() -> impl Strategy<Value = Compare> {
    let op = prop::sample::select(&[CompareOp::Equal, CompareOp::NotEqual, CompareOp::Greater, CompareOp::Less][..]);
    let target = prop_oneof![
        (0u64..4).prop_map(CompareTarget::Version),
        (0u64..12).prop_map(CompareTarget::CreateRevision),
        (0u64..12).prop_map(CompareTarget::ModRevision),
        value().prop_map(CompareTarget::Value),
    ];
    (key(), op, target).prop_map(|(key, op, target)| Compare { key, op, target })
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    (key_range(), prop::option::of(0u64..4), any::<bool>(), any::<bool>()).prop_map(
        |(range, limit, count_only, keys_only)| RangeRequest {
            limit,
            count_only,
            keys_only,
            ..RangeRequest::new(range)
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), value(), any::<bool>()).prop_map(|(key, value, prev_kv)| Op::Put { key, value, prev_kv }),
        1 => (key_range(), any::<bool>()).prop_map(|(range, prev_kv)| Op::Delete { range, prev_kv }),
        1 => range_request().prop_map(Op::Range),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    let txn =
        (prop::collection::vec(compare(), 0..3), prop::collection::vec(op(), 0..4), prop::collection::vec(op(), 0..3))
            .prop_map(|(compare, success, failure)| TxnRequest { compare, success, failure })
            .prop_filter("a valid transaction", |txn| txn.validate().is_ok());
    let read = (range_request(), prop::option::of(0u64..20)).prop_map(|(mut req, revision)| {
        req.revision = revision;
        req
    });
    prop_oneof![6 => txn.prop_map(Command::Txn), 1 => (0u64..20).prop_map(Command::Compact), 2 => read.prop_map(Command::Range)]
}

/// A keyspace on a fresh database, applied batch by batch as the state machine does.
struct Subject {
    _dir: tempfile::TempDir,
    db: StoreDb,
    state: KeyspaceState,
    floor: AtomicU64,
}

impl Subject {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let expect = Expect { member_id: 1, cluster_id: None, fresh_cluster_id: Uuid::new_v4() };
        let (db, _) = StoreDb::open(&dir.path().join("db"), &expect).unwrap();
        Subject { _dir: dir, db, state: KeyspaceState::default(), floor: AtomicU64::new(0) }
    }

    /// Applies `batch` as one write, returning each command's answer (reads run after the write).
    fn run(&mut self, batch: &[Command]) -> Vec<Result<Answer, Error>> {
        let mut apply = Apply::new(&self.db, self.state);
        let mut answers = Vec::new();
        let mut reads = Vec::new();
        for (i, command) in batch.iter().enumerate() {
            match command {
                Command::Txn(txn) => answers.push(apply.txn(txn).map(Answer::Txn)),
                Command::Compact(rev) => answers.push(apply.compact(*rev).map(Answer::Compact)),
                Command::Range(req) => {
                    answers.push(Ok(Answer::Pending));
                    reads.push((i, req));
                }
            }
        }
        let (batch, state, _) = apply.finish();
        self.db.db().write(batch).unwrap();
        self.state = state;
        self.floor.store(state.compact_revision, std::sync::atomic::Ordering::SeqCst);
        for (i, req) in reads {
            answers[i] = range(&self.db, req).map(Answer::Range);
        }
        answers
    }
}

#[derive(Debug, PartialEq)]
enum Answer {
    Txn(TxnResponse),
    Compact(Revision),
    Range(RangeResponse),
    Pending,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn keyspace_matches_the_model(batches in prop::collection::vec(prop::collection::vec(command(), 1..5), 1..25)) {
        let mut subject = Subject::new();
        let mut model = Model::new();
        for batch in &batches {
            let answers = subject.run(batch);
            // The model applies writes in order, and reads after the whole batch, as the subject did.
            let mut expected: Vec<Result<Answer, Error>> = batch.iter().map(|command| match command {
                Command::Txn(txn) => Ok(Answer::Txn(model.txn(txn))),
                Command::Compact(rev) => model.compact(*rev).map(Answer::Compact),
                Command::Range(_) => Ok(Answer::Pending),
            }).collect();
            for (i, command) in batch.iter().enumerate() {
                if let Command::Range(req) = command {
                    expected[i] = model.range(req).map(Answer::Range);
                }
            }
            prop_assert_eq!(&answers, &expected, "batch {:?}", batch);
            prop_assert_eq!(subject.state.revision, model.head());
        }
        // History since the compaction floor replays exactly the model's events, in order.
        let from = model.compact_revision.max(INITIAL_REVISION) + 1;
        let (changes, next) = history_since(&subject.db, from, model.head(), &KeyRange::prefix(""), usize::MAX, &subject.floor).unwrap();
        prop_assert_eq!(next, model.head() + 1);
        let replayed: Vec<(Revision, Vec<Event>)> = changes.into_iter().map(|c| (c.revision, c.events)).collect();
        let modelled: Vec<(Revision, Vec<Event>)> = model.events.range(from..).map(|(r, e)| (*r, e.clone())).collect();
        prop_assert_eq!(replayed, modelled);
    }
}

#[test]
fn history_is_read_in_chunks_of_whole_revisions() {
    let mut subject = Subject::new();
    for i in 0..10 {
        let txn = TxnRequest::default().then([Op::put(format!("k{i}a"), "v"), Op::put(format!("k{i}b"), "v")]);
        subject.run(&[Command::Txn(txn)]);
    }
    let all = KeyRange::prefix("k");
    let (first, next) = history_since(&subject.db, 2, 11, &all, 3, &subject.floor).unwrap();
    assert_eq!(first.iter().map(|c| c.revision).collect::<Vec<_>>(), vec![2, 3]);
    assert!(first.iter().all(|c| c.events.len() == 2), "a revision is never split");
    assert_eq!(next, 4);
    let (rest, next) = history_since(&subject.db, next, 11, &all, 100, &subject.floor).unwrap();
    assert_eq!(rest.len(), 8);
    assert_eq!(next, 12);
}

#[test]
fn history_below_the_floor_is_compacted() {
    let mut subject = Subject::new();
    for i in 0..5 {
        subject.run(&[Command::Txn(TxnRequest::default().then([Op::put(format!("k{i}"), "v")]))]);
    }
    subject.run(&[Command::Compact(4)]);
    let err = history_since(&subject.db, 4, 6, &KeyRange::prefix(""), 10, &subject.floor).unwrap_err();
    assert_eq!(err, Error::Compacted { requested: 4, compact_revision: 4 });
    let (changes, _) = history_since(&subject.db, 5, 6, &KeyRange::prefix(""), 10, &subject.floor).unwrap();
    assert_eq!(changes.iter().map(|c| c.revision).collect::<Vec<_>>(), vec![5, 6]);
    // Reads at the floor itself still work: the state there is the head with later changes undone.
    let at_floor = range(&subject.db, &RangeRequest::new(KeyRange::prefix("")).at_revision(4)).unwrap();
    assert_eq!(at_floor.count, 3);
    let below = range(&subject.db, &RangeRequest::new(KeyRange::prefix("")).at_revision(3)).unwrap_err();
    assert_eq!(below, Error::Compacted { requested: 3, compact_revision: 4 });
}
