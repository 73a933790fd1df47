//! A server killed with SIGKILL in the middle of a write storm loses no acknowledged write and
//! comes back at the same revision or later, however often it happens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use flotilla_store::{KeyRange, RangeRequest, StoreClient};
use tokio::sync::Mutex;

use crate::harness::{Ports, Server, store_tls};

const WRITERS: usize = 16;
const CRASHES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = Ports::free();
    let mut server = Server::start(dir.path(), ports.clone())?;
    // key → (value, revision) of every write the server acknowledged.
    let acked: Arc<Mutex<BTreeMap<String, (String, u64)>>> = Arc::default();
    let mut highest = 0;

    for crash in 0..CRASHES {
        let client = StoreClient::connect(&server.store_url, &store_tls(dir.path())?, Duration::from_secs(5)).await?;
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (client, acked) = (client.clone(), acked.clone());
                tokio::spawn(async move {
                    for i in 0.. {
                        let key = format!("crash/{crash}/{w}/{i}");
                        let value = format!("value-{crash}-{w}-{i}");
                        match client.put(key.clone(), value.clone()).await {
                            Ok(revision) => acked.lock().await.insert(key, (value, revision)),
                            // The server is gone: this write may or may not have landed.
                            Err(_) => return,
                        };
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.kill()?;
        for writer in writers {
            writer.await?;
        }

        server = Server::start(dir.path(), ports.clone())?;
        let client = StoreClient::connect(&server.store_url, &store_tls(dir.path())?, Duration::from_secs(5)).await?;
        let acked = acked.lock().await;
        let before = acked.values().map(|(_, r)| *r).max().unwrap_or(0);
        ensure!(before > highest, "crash {crash}: no writes were acknowledged before the kill");
        highest = before;
        let stored = client.range(RangeRequest::new(KeyRange::prefix("crash/"))).await?;
        ensure!(stored.revision >= highest, "crash {crash}: revision went back from {highest} to {}", stored.revision);
        let stored: BTreeMap<String, (String, u64)> = stored
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    (String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision),
                )
            })
            .collect();
        for (key, expected) in acked.iter() {
            let found = stored.get(key).with_context(|| format!("crash {crash}: acknowledged write {key} was lost"))?;
            ensure!(found == expected, "crash {crash}: {key} is {found:?}, acknowledged as {expected:?}");
        }
        eprintln!("crash {crash}: {} acknowledged writes all survived; revision {}", acked.len(), highest);
    }
    Ok(())
}
