//! The ConfigMaps and Secrets the node's pods use, kept as the kubelet's `Watch` change
//! detection keeps them: one watch per object (`fieldSelector=metadata.name=<name>`), shared by
//! every pod here that refers to it and ended when the last of them lets go. A container's start
//! reads them from here, with no request, and a pod's volumes follow them as they change, with no
//! polling. The node cannot watch them all at once: the Node authorizer lets it read only the
//! objects its own pods use.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// How long a container's start waits for the first lists of the objects it uses. The kubelet
/// waits 1 s and fails the start (which is retried, with back-off); a node on a slow link or a
/// busy machine is given longer before its pod is held back.
pub(crate) const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// What a watch knows of its object.
#[derive(Debug, Clone)]
pub(crate) enum Known<K> {
    /// Not listed yet.
    Syncing,
    /// As last listed or watched; `None`: there is no such object.
    Synced(Option<K>),
}

/// An object's namespace and name.
type Key = (String, String);

/// The watches of one kind of object, by namespace and name.
pub(crate) struct ObjectWatches<K> {
    client: kube::Client,
    watches: Mutex<HashMap<Key, Weak<ObjectWatch<K>>>>,
}

impl<K> Debug for ObjectWatches<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let watches = self.watches.lock().map_or(0, |w| w.len());
        f.debug_struct("ObjectWatches").field("watches", &watches).finish_non_exhaustive()
    }
}

/// One object's watch: it runs while anyone holds it.
struct ObjectWatch<K> {
    known: Arc<watch::Sender<Known<K>>>,
    task: tokio::task::AbortHandle,
}

impl<K> Drop for ObjectWatch<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A pod's hold on one object's watch: what it last read of it, and whether that changed since.
pub(crate) struct Subscription<K> {
    _watch: Arc<ObjectWatch<K>>,
    known: watch::Receiver<Known<K>>,
}

impl<K> ObjectWatches<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync,
    K: 'static,
{
    pub(crate) fn new(client: kube::Client) -> ObjectWatches<K> {
        ObjectWatches { client, watches: Mutex::default() }
    }

    /// A hold on the watch of `namespace/name`, started if no one holds it yet.
    pub(crate) fn subscribe(&self, namespace: &str, name: &str) -> Subscription<K> {
        let mut watches = self.watches.lock().expect("object watches lock");
        watches.retain(|_, watch| watch.strong_count() > 0);
        let key = (namespace.to_string(), name.to_string());
        let watch = match watches.get(&key).and_then(Weak::upgrade) {
            Some(watch) => watch,
            None => {
                let known = Arc::new(watch::Sender::new(Known::Syncing));
                let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
                let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                let task = tokio::spawn(follow(watcher::watcher(api, config).default_backoff(), known.clone()));
                let watch = Arc::new(ObjectWatch { known, task: task.abort_handle() });
                watches.insert(key, Arc::downgrade(&watch));
                watch
            }
        };
        Subscription { known: watch.known.subscribe(), _watch: watch }
    }
}

/// Keeps `known` as the watch `events` of one object tell it. A list that finds it as it was
/// (a watch restarted) is no news.
async fn follow<K: Resource + Clone>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    known: Arc<watch::Sender<Known<K>>>,
) {
    let tell = |object: Option<K>| {
        known.send_if_modified(|was| {
            let same = match (&*was, &object) {
                (Known::Synced(None), None) => true,
                (Known::Synced(Some(old)), Some(new)) => old.resource_version() == new.resource_version(),
                _ => false,
            };
            if !same {
                *was = Known::Synced(object);
            }
            !same
        });
    };
    let mut listed = None;
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listed = None,
            Ok(watcher::Event::InitApply(object)) => listed = Some(object),
            Ok(watcher::Event::InitDone) => tell(listed.take()),
            Ok(watcher::Event::Apply(object)) => tell(Some(object)),
            Ok(watcher::Event::Delete(_)) => tell(None),
            // The watch is retried with back-off; until its first list, starts wait for it.
            Err(err) => tracing::warn!(%err, "cannot watch an object a pod uses"),
        }
    }
}

impl<K: Clone> Subscription<K> {
    /// The object as last known, once its first list is in (`None`: there is no such object),
    /// waiting for that until `deadline`: `None` if it did not come.
    pub(crate) async fn read(&mut self, deadline: tokio::time::Instant) -> Option<Option<K>> {
        if deadline <= tokio::time::Instant::now() {
            // No wait at all (tokio's budget could make even a ready wait time out).
            return match &*self.known.borrow_and_update() {
                Known::Synced(object) => Some(object.clone()),
                Known::Syncing => None,
            };
        }
        let synced = |known: &Known<K>| matches!(known, Known::Synced(_));
        let known = tokio::time::timeout_at(deadline, self.known.wait_for(synced)).await.ok()?.ok()?;
        match &*known {
            Known::Synced(object) => Some(object.clone()),
            Known::Syncing => None,
        }
    }

    /// Resolves when the object changes from what `read` last returned.
    pub(crate) async fn changed(&mut self) {
        if self.known.changed().await.is_err() {
            // Its watch ended, which it does only when no one holds it: nothing will change.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use watcher::Event;

    use super::*;

    fn map(version: &str, colour: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "palette", "namespace": "default", "resourceVersion": version},
            "data": {"colour": colour},
        }))
        .unwrap()
    }

    fn subscriber(known: &Arc<watch::Sender<Known<ConfigMap>>>) -> Subscription<ConfigMap> {
        let task = tokio::spawn(std::future::pending::<()>());
        let watch = Arc::new(ObjectWatch { known: known.clone(), task: task.abort_handle() });
        Subscription { known: known.subscribe(), _watch: watch }
    }

    fn colour(found: Option<Option<ConfigMap>>) -> Option<Option<String>> {
        found.map(|object| object.map(|o| o.data.unwrap()["colour"].clone()))
    }

    #[tokio::test]
    async fn a_watch_tells_its_objects_changes_and_nothing_else() {
        let known = Arc::new(watch::Sender::new(Known::Syncing));
        let mut pod = subscriber(&known);
        let soon = || tokio::time::Instant::now() + Duration::from_millis(50);
        // Before its first list, a read waits, then gives up.
        assert!(pod.read(soon()).await.is_none());

        let (events, rx) = futures::channel::mpsc::unbounded();
        let following = tokio::spawn(follow(rx, known.clone()));
        let send = |event: Event<ConfigMap>| events.unbounded_send(Ok(event)).unwrap();
        // A (re)started watch's list, which finds the object or not.
        let list = |found: Option<ConfigMap>| {
            send(Event::Init);
            found.into_iter().for_each(|object| send(Event::InitApply(object)));
            send(Event::InitDone);
        };
        list(Some(map("1", "blue")));
        pod.changed().await;
        assert_eq!(colour(pod.read(soon()).await), Some(Some("blue".into())));

        // A watch restarted that lists it as it was is no news; a change is. (The test's
        // runtime has one thread: a sleep lets the follower take in all that was sent.)
        let settle = || tokio::time::sleep(Duration::from_millis(20));
        list(Some(map("1", "blue")));
        settle().await;
        assert!(!pod.known.has_changed().unwrap(), "a relist of the same object was told as a change");
        send(Event::Apply(map("2", "green")));
        pod.changed().await;
        assert_eq!(colour(pod.read(soon()).await), Some(Some("green".into())));

        // Deleted: known not to exist, and so a relist that finds nothing is no news either.
        send(Event::Delete(map("2", "green")));
        pod.changed().await;
        assert_eq!(colour(pod.read(soon()).await), Some(None));
        list(None);
        settle().await;
        assert!(!pod.known.has_changed().unwrap(), "a relist that finds nothing was told as a change");
        send(Event::Apply(map("3", "red")));
        pod.changed().await;
        assert_eq!(colour(pod.read(soon()).await), Some(Some("red".into())));
        following.abort();
    }
}
