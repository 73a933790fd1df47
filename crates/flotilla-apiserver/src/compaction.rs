//! Compacting the store's history, as upstream's API server compacts etcd: every interval, forget
//! history up to the revision that was current one interval ago. Watches and continued lists
//! older than that get 410 Gone, after which clients list again; nothing newer is touched.

use std::time::Duration;

use flotilla_store::{Error, Store};

/// Upstream's default (`--etcd-compaction-interval=5m`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// Runs until `stop` resolves. Only the store's leader compacts (a compaction is replicated, so
/// once is enough); a member that becomes leader takes over at its next tick.
pub async fn compact_history(store: Store, interval: Duration, stop: impl Future<Output = ()>) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous = None;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {}
        }
        let current = store.revision();
        let status = store.status();
        if let Some(target) = previous
            && status.leader == Some(status.member_id)
            && target > store.compact_revision()
        {
            match store.compact(target).await {
                Ok(_) => tracing::debug!(revision = target, "compacted the store's history"),
                // Another member compacted further meanwhile: nothing to do.
                Err(Error::Compacted { .. }) => {}
                Err(e) => tracing::warn!(error = %e, revision = target, "cannot compact the store's history"),
            }
        }
        previous = Some(current);
    }
}
