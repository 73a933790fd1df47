//! Following the store: what the objects under a key prefix contribute to some in-memory state,
//! kept up to date by listing them and then watching them from the list's revision, listing
//! again whenever the watch ends. The Node authorizer's graph follows pods and registrations;
//! the custom metrics follow `Activating` Events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::resource::ResourceDef;
use flotilla_store::{EventKind, KeyRange, KeyValue, RangeRequest, Revision, WatchRequest, WatchResponse};
use tokio::sync::watch;

use crate::registry::Registry;

/// What the objects under a prefix contribute to a state `S`.
pub(crate) struct Followed<S> {
    pub(crate) prefix: &'static str,
    pub(crate) def: &'static ResourceDef,
    /// What an object (as stored: a header, then its JSON) does to the state: `None` for a
    /// deletion, or for an object that cannot be read.
    pub(crate) apply: fn(&mut S, Vec<u8>, Option<&[u8]>),
    /// Forgets what all of them contributed, before a list puts it back.
    pub(crate) reset: fn(&mut S),
}

/// Lists the objects under the prefix, then watches them from there; lists again whenever the
/// watch ends (a slow watcher is cancelled by the store, a compaction overtakes it). A list
/// replaces what the prefix contributed. `reached` tells how far the state has followed the
/// store; the loop ends once no one listens to it. A notice on `asked` has the store tell at
/// once how far it is (a progress notification behind every change so far): a question that
/// must see the store's current revision then waits for the changes in flight, not for the
/// store's next periodic progress.
pub(crate) async fn follow<S>(
    registry: Registry,
    followed: Followed<S>,
    state: Arc<Mutex<S>>,
    reached: watch::Sender<Revision>,
    asked: Arc<tokio::sync::Notify>,
) {
    let Followed { prefix, def, apply, reset } = followed;
    let store = registry.store().clone();
    // An object that cannot be decrypted is left out.
    let put = |state: &mut S, kv: KeyValue| match registry.open(def, &kv.key, kv.value, kv.mod_revision) {
        Ok(stored) => apply(state, kv.key, Some(&stored.bytes)),
        Err(err) => {
            tracing::warn!(error = %err.0, prefix, "cannot read a followed object");
            apply(state, kv.key, None);
        }
    };
    loop {
        if reached.is_closed() {
            return;
        }
        let listed = match store.range(RangeRequest::new(KeyRange::prefix(prefix))).await {
            Ok(listed) => listed,
            Err(err) => {
                tracing::debug!(%err, prefix, "listing to follow; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        {
            let mut state = state.lock().expect("followed state lock");
            reset(&mut state);
            for kv in listed.kvs {
                put(&mut state, kv);
            }
        }
        let _ = reached.send(listed.revision);
        let request =
            WatchRequest::new(KeyRange::prefix(prefix)).from_revision(listed.revision + 1).with_progress_notify();
        let mut watch = match store.watch(request) {
            Ok(watch) => watch,
            Err(err) => {
                tracing::debug!(%err, prefix, "watching to follow; listing again");
                continue;
            }
        };
        loop {
            let response = tokio::select! {
                response = watch.next() => response,
                () = asked.notified() => {
                    watch.request_progress();
                    continue;
                }
            };
            let Some(response) = response else { break };
            let revision = match response {
                Ok(WatchResponse::Events(events)) => {
                    let mut state = state.lock().expect("followed state lock");
                    let mut last = None;
                    for event in events {
                        last = Some(event.kv.mod_revision);
                        if event.kind == EventKind::Delete {
                            apply(&mut state, event.kv.key, None);
                        } else {
                            put(&mut state, event.kv);
                        }
                    }
                    last
                }
                Ok(WatchResponse::Progress { revision }) => Some(revision),
                Err(err) => {
                    tracing::debug!(%err, prefix, "a followed watch ended; listing again");
                    break;
                }
            };
            if let Some(revision) = revision {
                let _ = reached.send(revision);
            }
        }
    }
}

/// Follow tasks, stopped when dropped.
#[derive(Debug)]
pub(crate) struct Followers(pub(crate) Vec<tokio::task::JoinHandle<()>>);

impl Drop for Followers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
