//! Events expire, as upstream's API server lets them (`--event-ttl`, an hour by default; a lease
//! on each Event's key in etcd): an Event left unchanged for the TTL is deleted. Nodes and the
//! control plane write Events all the time (every pull, every start, every wake from zero);
//! kept for good, they would fill an edge node's disk.
//!
//! The store keeps no write times, and an Event's own timestamps are its writer's clock (a
//! node's may be off). So the store's leader notes, at each sweep, which Events changed since
//! the last one (by their modification revision), and deletes those it has seen unchanged for the
//! TTL, each only if it is still unchanged (a compare on its revision): an Event written again
//! meanwhile lives on. A TTL runs from the leader's first sight of an Event's last change and
//! ends up to one sweep late; a new leader starts its notes afresh, so a change of leader lets
//! Events live up to one TTL longer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flotilla_store::{Compare, CompareOp, CompareTarget, KeyRange, Op, RangeRequest, Revision, Store, TxnRequest};
use futures::StreamExt;

const EVENTS: &str = "/registry/events/";

/// Expired Events deleted at once (each its own compare-and-delete, batched by the store).
const PARALLEL_DELETES: usize = 16;

/// Runs until `stop` resolves, sweeping every tenth of `ttl` (between 1 s and a minute).
pub async fn expire_events(store: Store, ttl: Duration, stop: impl Future<Output = ()>) {
    let mut ticks = tokio::time::interval((ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut notes = Notes::default();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {}
        }
        let status = store.status();
        if status.leader != Some(status.member_id) {
            notes = Notes::default();
            continue;
        }
        let listed = match store.range(RangeRequest::new(KeyRange::prefix(EVENTS)).keys_only()).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the Events to expire; trying again at the next sweep");
                continue;
            }
        };
        let expired = notes.sweep(listed.kvs.into_iter().map(|kv| (kv.key, kv.mod_revision)), Instant::now(), ttl);
        let deleted = futures::stream::iter(expired)
            .map(|(key, revision)| {
                let unchanged = Compare::new(key.clone(), CompareOp::Equal, CompareTarget::ModRevision(revision));
                let delete = Op::Delete { range: KeyRange::key(key), prev_kv: false };
                store.txn(TxnRequest::when([unchanged]).then([delete]))
            })
            .buffer_unordered(PARALLEL_DELETES)
            .filter_map(|deleted| async move {
                match deleted {
                    Ok(answer) => answer.succeeded.then_some(()),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot delete an expired Event; trying again at the next sweep");
                        None
                    }
                }
            })
            .count()
            .await;
        if deleted > 0 {
            tracing::debug!(deleted, "expired Events deleted");
        }
    }
}

/// Each Event's revision when last seen, and since when it has had it.
#[derive(Debug, Default)]
struct Notes(HashMap<Vec<u8>, (Revision, Instant)>);

impl Notes {
    /// Takes in the Events there are now; returns those unchanged for `ttl`, which it forgets.
    fn sweep(
        &mut self,
        events: impl Iterator<Item = (Vec<u8>, Revision)>,
        now: Instant,
        ttl: Duration,
    ) -> Vec<(Vec<u8>, Revision)> {
        let mut kept = HashMap::with_capacity(self.0.len());
        let mut expired = Vec::new();
        for (key, revision) in events {
            let since = match self.0.get(&key) {
                Some((seen, since)) if *seen == revision => *since,
                _ => now,
            };
            if now.duration_since(since) >= ttl {
                expired.push((key, revision));
            } else {
                kept.insert(key, (revision, since));
            }
        }
        self.0 = kept;
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_expire_a_ttl_after_their_last_change_was_seen() {
        let ttl = Duration::from_secs(10);
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut notes = Notes::default();
        let event = |name: &str, revision: Revision| (name.as_bytes().to_vec(), revision);
        assert!(notes.sweep([event("a", 1), event("b", 2)].into_iter(), at(0), ttl).is_empty());
        // `b` changes at 6 s: its TTL starts again.
        assert!(notes.sweep([event("a", 1), event("b", 7)].into_iter(), at(6), ttl).is_empty());
        assert_eq!(notes.sweep([event("a", 1), event("b", 7)].into_iter(), at(10), ttl), vec![event("a", 1)]);
        assert_eq!(notes.sweep([event("b", 7)].into_iter(), at(16), ttl), vec![event("b", 7)]);
        // Deleted meanwhile, forgotten.
        assert!(notes.sweep([].into_iter(), at(17), ttl).is_empty() && notes.0.is_empty());
    }
}
