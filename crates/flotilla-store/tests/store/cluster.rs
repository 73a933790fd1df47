//! Three members on loopback: replication, leader loss, catch-up by snapshot, membership changes,
//! and refusal of a foreign cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use flotilla_store::{
    Error, KeyRange, MembershipChange, RangeRequest, Store, StoreConfig, WatchRequest, WatchResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Cluster, Member, fast, free_url};

async fn count(store: &Store, prefix: &str) -> Result<u64> {
    Ok(store.range(RangeRequest::new(KeyRange::prefix(prefix)).count_only()).await?.count)
}

#[tokio::test]
async fn writes_through_any_member_reach_every_member() -> Result<()> {
    let cluster = Cluster::start(3, |c| c).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.follower(leader);
    // Through a follower: forwarded to the leader.
    for i in 0..50 {
        cluster.store(follower).put(format!("r/{i}"), "v").await?;
    }
    for i in 50..100 {
        cluster.store(leader).put(format!("r/{i}"), "v").await?;
    }
    // A linearizable read on any member sees every acknowledged write at once.
    for id in cluster.members.keys() {
        assert_eq!(count(cluster.store(*id), "r/").await?, 100, "member {id}");
    }
    let revision = cluster.store(leader).revision();
    cluster.converge(revision).await?;
    for id in cluster.members.keys() {
        let serial = cluster.store(*id).range(RangeRequest::new(KeyRange::prefix("r/")).serializable()).await?;
        assert_eq!(serial.count, 100);
        assert_eq!(serial.revision, revision, "member {id} applied the same revisions");
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn losing_the_leader_elects_another_and_loses_nothing_acknowledged() -> Result<()> {
    let mut cluster = Cluster::start(3, |c| c).await?;
    let leader = cluster.leader().await?;
    let through = cluster.follower(leader);
    let writer = {
        let store = cluster.store(through).clone();
        tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut last_revision = 0;
            for i in 0..400u32 {
                // Errors during the election are expected; only acknowledged writes count.
                if let Ok(response) = store.put(format!("l/{i:04}"), format!("{i}")).await {
                    assert!(response.revision > last_revision, "revisions only go forward");
                    last_revision = response.revision;
                    acked.insert(i, response.revision);
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old_leader = cluster.stop(leader).await;
    let acked = writer.await?;
    let new_leader = cluster.leader().await?;
    assert_ne!(new_leader, leader);
    assert!(acked.len() > 300, "writes continued under the new leader: {} acknowledged", acked.len());

    cluster.restart(old_leader).await?;
    let last = *acked.values().max().unwrap();
    cluster.converge(last).await?;
    for (id, member) in &cluster.members {
        let all = member.store.range(RangeRequest::new(KeyRange::prefix("l/")).serializable()).await?;
        let present: BTreeMap<String, Vec<u8>> =
            all.kvs.into_iter().map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.value)).collect();
        for i in acked.keys() {
            assert_eq!(
                present.get(&format!("l/{i:04}")),
                Some(&i.to_string().into_bytes()),
                "member {id} lost write {i}"
            );
        }
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_leader_without_a_quorum_fails_writes_in_time_and_recovers() -> Result<()> {
    let mut cluster = Cluster::start(3, |mut c| {
        c.request_timeout = Duration::from_secs(3);
        c
    })
    .await?;
    let leader = cluster.leader().await?;
    cluster.store(leader).put("q/before", "v").await?;
    let followers: Vec<u64> = cluster.members.keys().copied().filter(|id| *id != leader).collect();
    let mut stopped = Vec::new();
    for id in &followers {
        stopped.push(cluster.stop(*id).await);
    }

    let started = tokio::time::Instant::now();
    let err = cluster.store(leader).put("q/lonely", "v").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "the write failed at its deadline, not never");
    let err = cluster.store(leader).get("q/before").await.unwrap_err();
    assert!(err.is_retryable(), "a linearizable read needs a quorum too: {err}");
    // A serializable read is served from what this member has.
    let local = cluster.store(leader).range(RangeRequest::new(KeyRange::key("q/before")).serializable()).await?;
    assert_eq!(local.count, 1);

    for config in stopped {
        cluster.restart(config).await?;
    }
    let leader = cluster.leader().await?;
    cluster.store(leader).put("q/after", "v").await?;
    assert!(count(cluster.store(leader), "q/").await? >= 2, "writes resume once the quorum is back");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_member_down_while_the_log_was_purged_catches_up_by_snapshot() -> Result<()> {
    let mut cluster = Cluster::start(3, |mut c| {
        c.snapshot_after_entries = 50;
        c.entries_kept_after_snapshot = 10;
        c
    })
    .await?;
    let leader = cluster.leader().await?;
    let absent = cluster.follower(leader);
    let absent_applied = cluster.store(absent).status().applied_index.unwrap_or(0);
    let absent_config = cluster.stop(absent).await;
    for i in 0..400 {
        cluster.store(leader).put(format!("s/{i:04}"), format!("{i}")).await?;
    }
    cluster.store(leader).trigger_snapshot().await?;
    let leader_status = wait_for(|| {
        let status = cluster.store(leader).status();
        // Purged well past what the absent member has: it cannot catch up from the log.
        (status.purged_index.unwrap_or(0) > absent_applied + 100).then_some(status)
    })
    .await
    .context("the leader never purged its log")?;
    assert!(leader_status.snapshot_index.is_some());

    cluster.restart(absent_config).await?;
    let revision = cluster.store(leader).revision();
    cluster.converge(revision).await?;
    let caught_up = cluster.store(absent);
    assert!(caught_up.status().snapshot_index.is_some(), "the member caught up from a snapshot");
    let all = caught_up.range(RangeRequest::new(KeyRange::prefix("s/")).serializable()).await?;
    assert_eq!(all.count, 400);
    assert_eq!(all.kvs[123].value, b"123");
    // History travelled with the snapshot: a watch from the start replays on the new member too.
    let mut watch = caught_up.watch(WatchRequest::new(KeyRange::prefix("s/")).from_revision(2))?;
    let mut replayed = 0;
    while replayed < 400 {
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await? {
            Some(Ok(WatchResponse::Events(events))) => replayed += events.len(),
            Some(Ok(WatchResponse::Progress { .. })) => {}
            other => bail!("replay ended: {other:?}"),
        }
    }
    assert_eq!(replayed, 400);
    drop(watch);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn members_join_as_learners_get_promoted_and_are_removed() -> Result<()> {
    let mut cluster = Cluster::start(3, |c| c).await?;
    for i in 0..20 {
        cluster.store(1).put(format!("m/{i}"), "v").await?;
    }
    // Member 4 joins through member 2, then is added and promoted (through member 3).
    let url = free_url("127.0.0.14").await?;
    let joiner = fast(StoreConfig::join(cluster.dir.path().join("member-4"), 4, &url, cluster.urls[&2].clone()));
    let joiner = Member::start(joiner).await?;
    assert_eq!(joiner.store.cluster_id(), cluster.store(1).cluster_id());
    cluster.members.insert(4, joiner);
    let membership =
        cluster.store(3).change_membership(MembershipChange::AddLearner { id: 4, addr: url.clone() }).await?;
    assert_eq!(membership.learners.get(&4), Some(&url));
    let membership = cluster.store(3).change_membership(MembershipChange::Promote { id: 4 }).await?;
    assert_eq!(membership.voters.len(), 4);
    assert!(membership.learners.is_empty());
    assert_eq!(count(cluster.store(4), "m/").await?, 20);

    // Remove the leader itself: the rest elect a new one and carry on.
    let leader = cluster.leader().await?;
    let other = cluster.follower(leader);
    let membership = cluster.store(other).change_membership(MembershipChange::Remove { id: leader }).await?;
    assert_eq!(membership.voters.len(), 3);
    assert!(!membership.voters.contains_key(&leader) && !membership.learners.contains_key(&leader));
    cluster.stop(leader).await;
    let new_leader = cluster.leader().await?;
    assert_eq!(cluster.store(new_leader).status().membership, membership);
    cluster.store(new_leader).put("m/after", "v").await?;
    for id in cluster.members.keys() {
        assert_eq!(count(cluster.store(*id), "m/").await?, 21, "member {id}");
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn another_clusters_members_and_data_are_refused() -> Result<()> {
    let mut cluster = Cluster::start(3, |c| c).await?;
    let url = cluster.urls[&1].trim_start_matches("https://").to_string();

    // Without a member certificate, the peer API does not even answer: reads and writes of the
    // store are for members only.
    let anonymous = flotilla_auth::tls::client_config(crate::support::PEERS.cert_pem(), None)?;
    let err = flotilla_store::StoreClient::connect(&cluster.urls[&1], &anonymous, Duration::from_secs(5)).await;
    assert!(err.is_err(), "a client without a member certificate was answered");
    let (stranger_ca, _) = flotilla_auth::pki::Authority::generate("strangers")?;
    let stranger = stranger_ca.issue_key(&flotilla_auth::pki::Profile::store_member(9, &[]))?;
    let foreign = flotilla_auth::tls::client_config(
        crate::support::PEERS.cert_pem(),
        Some((&stranger.cert_pem, &stranger.key_der)),
    )?;
    assert!(flotilla_store::StoreClient::connect(&cluster.urls[&1], &foreign, Duration::from_secs(5)).await.is_err());
    let mut plain = tokio::net::TcpStream::connect(&url).await?;
    plain.write_all(b"POST /store/v1/range HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").await?;
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "plain HTTP was answered");

    // A member's request carrying another cluster's id is refused with a reason.
    let tls = crate::support::member_tls(7, "https://127.0.0.1:1");
    let connector = tokio_rustls::TlsConnector::from(tls);
    let tcp = tokio::net::TcpStream::connect(&url).await?;
    let ip = url.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(&url).to_string();
    let mut stream = connector.connect(rustls::pki_types::ServerName::try_from(ip)?, tcp).await?;
    let request = format!(
        "POST /raft/vote HTTP/1.1\r\nhost: {url}\r\nx-flotilla-cluster: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        uuid::Uuid::new_v4()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    assert!(response.starts_with("HTTP/1.1 412"), "{response}");
    assert!(response.contains("cluster id mismatch"), "{response}");

    // A member restarted with another cluster's configuration refuses its data directory.
    let mut config = cluster.stop(2).await;
    if let flotilla_store::Bootstrap::Initial { token, .. } = &mut config.bootstrap {
        *token = "another-cluster".into();
    }
    let err = Store::open(config).await.unwrap_err();
    assert!(matches!(err, Error::DataDir { .. }), "{err}");
    assert!(err.to_string().contains("belongs to cluster"), "{err}");
    cluster.shutdown().await;
    Ok(())
}

async fn wait_for<T>(mut check: impl FnMut() -> Option<T>) -> Result<T> {
    for _ in 0..200 {
        if let Some(value) = check() {
            return Ok(value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("condition not met within 10 s")
}
