//! A one-member group: the default for a single machine.

use anyhow::Result;
use flotilla_store::{
    Compare, Error, EventKind, INITIAL_REVISION, KeyRange, MAX_REQUEST_BYTES, MAX_TXN_OPS, Op, OpResponse,
    RangeRequest, TxnRequest, WatchRequest, WatchResponse,
};

use crate::support::{init_tracing, single};

#[tokio::test]
async fn reads_and_writes_follow_etcd_semantics() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let member = single(dir.path()).await?;
    let store = &member.store;
    assert_eq!(store.revision(), INITIAL_REVISION);

    let first = store.put("/registry/pods/default/a", "1").await?;
    assert_eq!(first.revision, 2);
    assert_eq!(first.prev_kv, None);
    let second = store.put("/registry/pods/default/a", "2").await?;
    assert_eq!(second.revision, 3);
    assert_eq!(second.prev_kv.as_ref().map(|kv| kv.value.as_slice()), Some(&b"1"[..]));
    store.put("/registry/pods/default/b", "x").await?;

    let a = store.get("/registry/pods/default/a").await?.expect("a exists");
    assert_eq!((a.create_revision, a.mod_revision, a.version, a.value.as_slice()), (2, 3, 2, &b"2"[..]));

    // Create-if-absent, as the API server creates: the second attempt fails and reads the winner.
    let create = |value: &'static str| {
        TxnRequest::when([Compare::absent("/registry/pods/default/c")])
            .then([Op::put("/registry/pods/default/c", value)])
            .otherwise([Op::get("/registry/pods/default/c")])
    };
    let won = store.txn(create("first")).await?;
    assert!(won.succeeded);
    let lost = store.txn(create("second")).await?;
    assert!(!lost.succeeded);
    assert_eq!(lost.revision, won.revision, "a failed compare writes nothing");
    match &lost.responses[..] {
        [OpResponse::Range(range)] => assert_eq!(range.kvs[0].value, b"first"),
        other => panic!("expected the winner's value, got {other:?}"),
    }

    // Update on a stale revision fails; on the current one it succeeds.
    let stale = TxnRequest::when([Compare::mod_revision("/registry/pods/default/a", 2)])
        .then([Op::put("/registry/pods/default/a", "3")]);
    assert!(!store.txn(stale).await?.succeeded);
    let fresh = TxnRequest::when([Compare::mod_revision("/registry/pods/default/a", 3)])
        .then([Op::put("/registry/pods/default/a", "3")]);
    assert!(store.txn(fresh).await?.succeeded);

    let all = store.range(RangeRequest::new(KeyRange::prefix("/registry/pods/")).limit(2)).await?;
    assert_eq!((all.kvs.len(), all.count, all.more), (2, 3, true));
    let count = store.range(RangeRequest::new(KeyRange::prefix("/registry/pods/")).count_only()).await?;
    assert_eq!((count.kvs.len(), count.count), (0, 3));

    // A read at a past revision sees the past.
    let then = store.range(RangeRequest::new(KeyRange::key("/registry/pods/default/a")).at_revision(2)).await?;
    assert_eq!(then.kvs[0].value, b"1");

    assert_eq!(store.delete(KeyRange::prefix("/registry/pods/default/")).await?, 3);
    assert_eq!(store.range(RangeRequest::new(KeyRange::prefix("/registry/")).count_only()).await?.count, 0);
    member.stop().await;
    Ok(())
}

#[tokio::test]
async fn oversized_and_malformed_requests_are_refused_with_the_reason() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let member = single(dir.path()).await?;
    let store = &member.store;
    let revision = store.revision();

    let err = store.put("big", vec![b'x'; MAX_REQUEST_BYTES + 1]).await.unwrap_err();
    assert!(matches!(err, Error::RequestTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("limit is 1572864 bytes"), "{err}");

    let ops = (0..=MAX_TXN_OPS).map(|i| Op::put(format!("k{i}"), "v"));
    let err = store.txn(TxnRequest::default().then(ops)).await.unwrap_err();
    assert!(err.to_string().contains("too many success operations in transaction: 129, the limit is 128"), "{err}");

    let err = store.txn(TxnRequest::default().then([Op::put("", "v")])).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");

    assert_eq!(store.revision(), revision, "nothing refused was written");
    // A value just under the limit is fine.
    store.put("big", vec![b'x'; MAX_REQUEST_BYTES - 3]).await?;
    member.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_restart_keeps_every_write_and_the_revision() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let member = single(dir.path()).await?;
    for i in 0..200 {
        member.store.put(format!("key/{i:03}"), format!("value {i}")).await?;
    }
    member.store.compact(50).await?;
    let revision = member.store.revision();
    let config = member.stop().await;

    let member = crate::support::Member::start(config).await?;
    assert_eq!(member.store.revision(), revision);
    assert_eq!(member.store.compact_revision(), 50);
    let all = member.store.range(RangeRequest::new(KeyRange::prefix("key/"))).await?;
    assert_eq!(all.count, 200);
    assert_eq!(all.kvs[7].value, b"value 7");
    assert_eq!(member.store.put("key/next", "v").await?.revision, revision + 1);
    member.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_restart_after_a_snapshot_and_log_purge_keeps_everything() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let url = crate::support::free_url("127.0.0.1").await?;
    let mut config = crate::support::fast(flotilla_store::StoreConfig::single(dir.path().join("m"), url));
    config.snapshot_after_entries = 20;
    config.entries_kept_after_snapshot = 5;
    let member = crate::support::Member::start(config).await?;
    for i in 0..100 {
        member.store.put(format!("key/{i:03}"), "v").await?;
    }
    member.store.trigger_snapshot().await?;
    let revision = member.store.revision();
    let config = member.stop().await;
    let member = crate::support::Member::start(config).await?;
    assert_eq!(member.store.revision(), revision);
    assert_eq!(member.store.range(RangeRequest::new(KeyRange::prefix("key/")).count_only()).await?.count, 100);
    member.stop().await;
    Ok(())
}

#[tokio::test]
async fn compacted_revisions_are_refused_for_reads_and_watches() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let member = single(dir.path()).await?;
    let store = &member.store;
    for i in 0..10 {
        store.put(format!("k{i}"), "v").await?;
    }
    assert_eq!(store.compact(6).await?, 6);
    let err = store.compact(4).await.unwrap_err();
    assert_eq!(err, Error::Compacted { requested: 4, compact_revision: 6 });
    let err = store.compact(100).await.unwrap_err();
    assert!(matches!(err, Error::FutureRevision { requested: 100, .. }), "{err}");

    let err = store.range(RangeRequest::new(KeyRange::prefix("k")).at_revision(5)).await.unwrap_err();
    assert_eq!(err, Error::Compacted { requested: 5, compact_revision: 6 });
    assert!(err.to_string().contains("has been compacted"), "{err}");
    assert_eq!(store.range(RangeRequest::new(KeyRange::prefix("k")).at_revision(6)).await?.count, 5);

    let err = store.watch(WatchRequest::new(KeyRange::prefix("k")).from_revision(6)).unwrap_err();
    assert_eq!(err, Error::Compacted { requested: 6, compact_revision: 6 });
    let mut watch = store.watch(WatchRequest::new(KeyRange::prefix("k")).from_revision(7))?;
    match watch.next().await {
        Some(Ok(WatchResponse::Events(events))) => {
            assert_eq!(events.first().map(|e| e.kv.mod_revision), Some(7));
            assert!(events.iter().all(|e| e.kind == EventKind::Put));
        }
        other => panic!("expected replayed events, got {other:?}"),
    }
    drop(watch);
    member.stop().await;
    Ok(())
}
