//! Watch guarantees: every event exactly once, in revision order, across replay, live delivery
//! and resumption; slow watchers cancelled without slowing writers; progress for quiet watchers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use flotilla_store::{
    Error, Event, EventKind, KeyRange, Op, OpResponse, Revision, Store, TxnRequest, Watch, WatchRequest, WatchResponse,
};

use crate::support::{Member, fast, free_url, init_tracing, single};

/// Reads events until one at `last` or later arrives, returning them all.
async fn collect_until(watch: &mut Watch, last: Revision) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    while events.last().is_none_or(|e: &Event| e.kv.mod_revision < last) {
        match tokio::time::timeout(Duration::from_secs(20), watch.next()).await.context("watch went quiet")? {
            Some(Ok(WatchResponse::Events(batch))) => events.extend(batch),
            Some(Ok(WatchResponse::Progress { .. })) => {}
            Some(Err(e)) => bail!("watch ended: {e}"),
            None => bail!("watch ended"),
        }
    }
    Ok(events)
}

/// Checks that `events` are in revision order with no (revision, key) twice.
fn assert_ordered_and_unique(events: &[Event]) {
    let mut seen = BTreeSet::new();
    for pair in events.windows(2) {
        assert!(pair[0].kv.mod_revision <= pair[1].kv.mod_revision, "out of order: {pair:?}");
    }
    for e in events {
        assert!(seen.insert((e.kv.mod_revision, e.kv.key.clone())), "duplicate event {e:?}");
    }
}

/// Acknowledged writes by revision: each key written, with its value or `None` for a delete.
type Writes = BTreeMap<Revision, Vec<(Vec<u8>, Option<Vec<u8>>)>>;

/// Writes `per_writer` changes from each of `writers` tasks at once; returns every acknowledged
/// write as revision → (key, value or None for a delete).
async fn concurrent_writes(
    store: &Store,
    writers: usize,
    per_writer: usize,
) -> Result<BTreeMap<Revision, Vec<(Vec<u8>, Option<Vec<u8>>)>>> {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..per_writer {
                    let key = format!("w/{w}/{}", i % 7).into_bytes();
                    if i % 5 == 4 {
                        // A two-key transaction: one revision, two events.
                        let other = format!("w/{w}/pair").into_bytes();
                        let txn = TxnRequest::default().then([Op::put(key.clone(), "t"), Op::put(other.clone(), "t")]);
                        let revision = store.txn(txn).await?.revision;
                        acked.push((revision, key, Some(b"t".to_vec())));
                        acked.push((revision, other, Some(b"t".to_vec())));
                    } else if i % 5 == 3 {
                        let response = store.txn(TxnRequest::default().then([Op::delete(key.clone())])).await?;
                        if response.responses.first() == Some(&OpResponse::Delete { deleted: 1, prev_kvs: vec![] }) {
                            acked.push((response.revision, key, None));
                        }
                    } else {
                        let value = format!("{w}-{i}").into_bytes();
                        let revision = store.put(key.clone(), value.clone()).await?.revision;
                        acked.push((revision, key, Some(value)));
                    }
                }
                anyhow::Ok(acked)
            })
        })
        .collect();
    let mut writes = Writes::new();
    for task in tasks {
        for (revision, key, value) in task.await?? {
            writes.entry(revision).or_default().push((key, value));
        }
    }
    Ok(writes)
}

#[tokio::test]
async fn concurrent_writers_are_seen_exactly_once_in_order_across_a_resume() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let member = single(dir.path()).await?;
    let store = member.store.clone();
    let start = store.revision() + 1;

    // One watcher reads live while the writers run; it stops halfway and resumes.
    let watcher = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut watch =
                store.watch(WatchRequest::new(KeyRange::prefix("w/")).from_revision(start).with_prev_kv())?;
            let mut events = Vec::new();
            while events.len() < 400 {
                match watch.next().await {
                    Some(Ok(WatchResponse::Events(batch))) => events.extend(batch),
                    Some(Ok(WatchResponse::Progress { .. })) => {}
                    other => bail!("watch ended early: {other:?}"),
                }
            }
            let resume = watch.resume_revision();
            drop(watch);
            anyhow::Ok((events, resume))
        })
    };
    let writes = concurrent_writes(&store, 8, 150).await?;
    let (mut events, resume) = watcher.await??;
    let last = *writes.keys().next_back().unwrap();
    let mut resumed = store.watch(WatchRequest::new(KeyRange::prefix("w/")).from_revision(resume).with_prev_kv())?;
    events.extend(collect_until(&mut resumed, last).await?);

    assert_ordered_and_unique(&events);
    let mut seen = Writes::new();
    for e in &events {
        let value = (e.kind == EventKind::Put).then(|| e.kv.value.clone());
        seen.entry(e.kv.mod_revision).or_default().push((e.kv.key.clone(), value));
    }
    for (revision, changes) in &writes {
        let got = seen.get(revision).with_context(|| format!("revision {revision} never delivered"))?;
        for change in changes {
            assert!(got.contains(change), "revision {revision}: {change:?} missing from {got:?}");
        }
    }
    assert_eq!(seen.len(), writes.len(), "every delivered revision was an acknowledged write");
    // A put of an existing key carries the value it replaced.
    assert!(events.iter().any(|e| e.kind == EventKind::Put && e.prev_kv.is_some()));
    assert!(events.iter().filter(|e| e.kind == EventKind::Delete).all(|e| e.prev_kv.is_some()));
    member.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_watch_from_the_past_replays_then_goes_live_without_a_gap() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let member = single(dir.path()).await?;
    let store = member.store.clone();
    for i in 0..2500 {
        store.put(format!("p/{}", i % 50), format!("{i}")).await?;
    }
    // The watch starts while a writer keeps going: replay (in chunks) hands over to live events.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                store.put(format!("p/live/{i}"), "v").await?;
            }
            anyhow::Ok(store.revision())
        })
    };
    let mut watch = store.watch(WatchRequest::new(KeyRange::prefix("p/")).from_revision(2))?;
    let last = writer.await??;
    let events = collect_until(&mut watch, last).await?;
    assert_ordered_and_unique(&events);
    let revisions: Vec<Revision> = events.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revisions.len() as u64, last - 1, "one event per revision from 2 to {last}");
    assert!(revisions.iter().copied().eq(2..=last), "one event per revision, none missing");
    member.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_slow_watcher_is_cancelled_without_blocking_writers_and_resumes() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let url = free_url("127.0.0.1").await?;
    let mut config = fast(flotilla_store::StoreConfig::single(dir.path().join("m"), url));
    config.watch_buffer = 8;
    let member = Member::start(config).await?;
    let store = member.store.clone();
    let start = store.revision() + 1;
    let mut watch = store.watch(WatchRequest::new(KeyRange::prefix("s/")).from_revision(start))?;

    // Nobody reads the watch while 200 writes go through: none of them waits for it.
    let writes = tokio::time::timeout(Duration::from_secs(30), async {
        for i in 0..200 {
            store.put(format!("s/{i}"), "v").await?;
        }
        anyhow::Ok(())
    });
    writes.await.context("writers were blocked by a slow watcher")??;
    let last = store.revision();

    let mut events = Vec::new();
    let resume = loop {
        match watch.next().await {
            Some(Ok(WatchResponse::Events(batch))) => events.extend(batch),
            Some(Ok(WatchResponse::Progress { .. })) => {}
            Some(Err(Error::WatchCancelled { resume_from, reason })) => {
                assert!(reason.contains("fell behind"), "{reason}");
                break resume_from;
            }
            other => bail!("expected a cancellation, got {other:?}"),
        }
    };
    assert!(watch.next().await.is_none(), "a cancelled watch ends");
    assert!(events.len() < 200, "the watcher was cut off, not fed everything");
    assert_eq!(resume, events.last().map_or(start, |e| e.kv.mod_revision + 1));

    let mut resumed = store.watch(WatchRequest::new(KeyRange::prefix("s/")).from_revision(resume))?;
    events.extend(collect_until(&mut resumed, last).await?);
    assert!(events.iter().map(|e| e.kv.mod_revision).eq(start..=last), "every revision once, in order");
    member.stop().await;
    Ok(())
}

#[tokio::test]
async fn quiet_watchers_learn_the_current_revision() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let member = single(dir.path()).await?;
    let store = member.store.clone();
    let mut quiet = store.watch(WatchRequest::new(KeyRange::prefix("quiet/")).with_progress_notify())?;
    let mut silent = store.watch(WatchRequest::new(KeyRange::prefix("quiet/")))?;
    for i in 0..5 {
        store.put(format!("busy/{i}"), "v").await?;
    }
    let revision = store.revision();
    let progress = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match quiet.next().await {
                Some(Ok(WatchResponse::Progress { revision: r })) if r >= revision => return Ok(r),
                Some(Ok(WatchResponse::Progress { .. })) => continue,
                other => return Err(anyhow::anyhow!("expected progress, got {other:?}")),
            }
        }
    })
    .await
    .context("no progress notification")??;
    assert_eq!(progress, revision);
    assert_eq!(quiet.resume_revision(), revision + 1, "progress moves the resume point");

    // A watcher that did not ask gets progress only on request.
    assert!(tokio::time::timeout(Duration::from_millis(300), silent.next()).await.is_err());
    silent.request_progress();
    match tokio::time::timeout(Duration::from_secs(5), silent.next()).await? {
        Some(Ok(WatchResponse::Progress { revision: r })) => assert_eq!(r, revision),
        other => bail!("expected requested progress, got {other:?}"),
    }
    member.stop().await;
    Ok(())
}
