//! One watch per kind, shared by every control loop in the process: a cache of the objects with
//! the indexes loops look things up by, and change notifications that loops turn into work.
//!
//! The cache also knows the newest resource version it has seen. Resource versions are the
//! store's global revision, so once a cache has seen revision R it holds every write up to R:
//! a loop that wrote at R waits for that ([`Cache::observed`]) before it reads its own writes
//! back, where upstream keeps per-controller "expectations".

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// `namespace/name`, or `name` for a cluster-scoped object: how upstream keys its caches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey { namespace: namespace.map(str::to_string), name: name.to_string() }
    }

    pub fn of<K: Resource>(object: &K) -> ObjectKey {
        ObjectKey { namespace: object.namespace(), name: object.name_any() }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What happened to an object, as a handler sees it: the cache's own shared copies, so a
/// handler that keeps one clones a pointer, not the object.
#[derive(Debug)]
pub enum Change<'a, K> {
    /// Created or changed; `old` is what the cache held before, if anything.
    Applied {
        old: Option<&'a Arc<K>>,
        new: &'a Arc<K>,
    },
    Deleted(&'a Arc<K>),
}

/// The controller among `object`'s owners (`ownerReferences[].controller`).
pub fn controller_of<K: Resource>(object: &K) -> Option<&OwnerReference> {
    object.meta().owner_references.as_ref()?.iter().find(|r| r.controller == Some(true))
}

/// An object's resource version as the store revision it is.
pub fn resource_version<K: Resource>(object: &K) -> u64 {
    object.meta().resource_version.as_deref().and_then(|rv| rv.parse().ok()).unwrap_or(0)
}

struct Contents<K> {
    objects: HashMap<ObjectKey, Arc<K>>,
    by_namespace: HashMap<String, BTreeSet<ObjectKey>>,
    /// Objects by the uid of every owner they name.
    by_owner: HashMap<String, BTreeSet<ObjectKey>>,
}

impl<K: Resource> Contents<K> {
    fn insert(&mut self, key: ObjectKey, object: Arc<K>) -> Option<Arc<K>> {
        let old = self.remove(&key);
        if let Some(ns) = &key.namespace {
            self.by_namespace.entry(ns.clone()).or_default().insert(key.clone());
        }
        for owner in object.owner_references() {
            self.by_owner.entry(owner.uid.clone()).or_default().insert(key.clone());
        }
        self.objects.insert(key, object);
        old
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        let old = self.objects.remove(key)?;
        if let Some(ns) = &key.namespace {
            unindex(&mut self.by_namespace, ns, key);
        }
        for owner in old.owner_references() {
            unindex(&mut self.by_owner, &owner.uid, key);
        }
        Some(old)
    }
}

fn unindex(index: &mut HashMap<String, BTreeSet<ObjectKey>>, at: &str, key: &ObjectKey) {
    if let Some(keys) = index.get_mut(at) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(at);
        }
    }
}

/// The objects of one kind as the watch last saw them. Cheap to clone; reads never wait on
/// the network.
pub struct Cache<K> {
    contents: Arc<RwLock<Contents<K>>>,
    /// The newest resource version the watch has delivered; 0 until the first list is in.
    observed: watch::Sender<u64>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Cache { contents: self.contents.clone(), observed: self.observed.clone() }
    }
}

impl<K> Debug for Cache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("observed", &*self.observed.borrow()).finish_non_exhaustive()
    }
}

impl<K: Resource> Cache<K> {
    fn new() -> Cache<K> {
        let contents = Contents { objects: HashMap::new(), by_namespace: HashMap::new(), by_owner: HashMap::new() };
        Cache { contents: Arc::new(RwLock::new(contents)), observed: watch::channel(0).0 }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Contents<K>> {
        self.contents.read().expect("informer cache lock")
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.read().objects.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().objects.values().cloned().collect()
    }

    pub fn keys(&self) -> Vec<ObjectKey> {
        self.read().objects.keys().cloned().collect()
    }

    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let contents = self.read();
        let keys = contents.by_namespace.get(namespace);
        keys.into_iter().flatten().filter_map(|k| contents.objects.get(k).cloned()).collect()
    }

    /// Objects that name `uid` among their owners.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<K>> {
        let contents = self.read();
        let keys = contents.by_owner.get(uid);
        keys.into_iter().flatten().filter_map(|k| contents.objects.get(k).cloned()).collect()
    }

    /// Objects whose controller (`ownerReferences[].controller`) has `uid`.
    pub fn controlled_by(&self, uid: &str) -> Vec<Arc<K>> {
        let mut owned = self.owned_by(uid);
        owned.retain(|o| controller_of(&**o).is_some_and(|c| c.uid == uid));
        owned
    }

    /// Whether the first list has arrived.
    pub fn is_synced(&self) -> bool {
        *self.observed.borrow() > 0
    }

    /// Waits until the first list is in.
    pub async fn synced(&self) {
        let _ = self.observed.subscribe().wait_for(|rv| *rv > 0).await;
    }

    /// Waits until the cache holds every write up to `revision`; false if that takes longer
    /// than `timeout` (the watch is down), and the caller should retry later rather than act on
    /// a stale view.
    pub async fn observed(&self, revision: u64, timeout: Duration) -> bool {
        let mut seen = self.observed.subscribe();
        tokio::time::timeout(timeout, seen.wait_for(|rv| *rv >= revision)).await.is_ok_and(|r| r.is_ok())
    }

    fn advance(&self, revision: u64) {
        self.observed.send_if_modified(|seen| {
            let newer = revision > *seen;
            if newer {
                *seen = revision;
            }
            newer
        });
    }
}

type Handler<K> = Box<dyn Fn(Change<'_, K>) + Send + Sync>;

/// A watch of one kind feeding a [`Cache`] and the handlers registered before it runs.
pub struct Informer<K: Resource> {
    api: Api<K>,
    config: watcher::Config,
    cache: Cache<K>,
    handlers: Vec<Handler<K>>,
}

impl<K: Resource> Debug for Informer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer").field("cache", &self.cache).field("handlers", &self.handlers.len()).finish()
    }
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    /// Watches every object of the kind, in all namespaces.
    pub fn all(client: kube::Client) -> Informer<K> {
        Informer::new(Api::all(client))
    }

    pub fn new(api: Api<K>) -> Informer<K> {
        Informer { api, config: watcher::Config::default().any_semantic(), cache: Cache::new(), handlers: Vec::new() }
    }

    /// Watches only the objects a field selector selects (`spec.nodeName!=`): the server
    /// filters, so the others are neither sent nor decoded.
    pub fn selecting_fields(mut self, selector: &str) -> Informer<K> {
        self.config = self.config.fields(selector);
        self
    }

    pub fn cache(&self) -> Cache<K> {
        self.cache.clone()
    }

    /// Calls `handler` for every change, in the order the watch delivers them, after the cache
    /// has taken it in. Handlers must be quick: they run on the watch's task.
    pub fn on_change(&mut self, handler: impl Fn(Change<'_, K>) + Send + Sync + 'static) {
        self.handlers.push(Box::new(handler));
    }

    /// Runs the watch until the task is dropped; it relists and resumes by itself after errors.
    pub async fn run(self) {
        let Informer { api, config, cache, handlers } = self;
        let notify = |change: Change<'_, K>| {
            for handler in &handlers {
                handler(match &change {
                    Change::Applied { old, new } => Change::Applied { old: *old, new },
                    Change::Deleted(object) => Change::Deleted(object),
                });
            }
        };
        // Objects of a relist, applied all at once when it completes.
        let mut relist: Option<Vec<K>> = None;
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let event = match event.map(|e| e.modify(strip_managed_fields)) {
                Ok(event) => event,
                Err(err) => {
                    tracing::debug!(kind = %K::kind(&Default::default()), %err, "watch failed; resuming");
                    continue;
                }
            };
            match event {
                watcher::Event::Init => relist = Some(Vec::new()),
                watcher::Event::InitApply(object) => relist.get_or_insert_with(Vec::new).push(object),
                watcher::Event::InitDone => {
                    let listed = relist.take().unwrap_or_default();
                    let newest = listed.iter().map(resource_version).max().unwrap_or(0);
                    let mut keep = BTreeSet::new();
                    for object in listed {
                        let key = ObjectKey::of(&object);
                        keep.insert(key.clone());
                        apply(&cache, key, object, &notify);
                    }
                    let gone: Vec<ObjectKey> = cache.keys().into_iter().filter(|k| !keep.contains(k)).collect();
                    for key in gone {
                        let removed = cache.contents.write().expect("informer cache lock").remove(&key);
                        if let Some(old) = removed {
                            notify(Change::Deleted(&old));
                        }
                    }
                    // An empty list still counts as synced.
                    cache.advance(newest.max(1));
                }
                watcher::Event::Apply(object) => {
                    let revision = resource_version(&object);
                    apply(&cache, ObjectKey::of(&object), object, &notify);
                    cache.advance(revision);
                }
                watcher::Event::Delete(object) => {
                    let revision = resource_version(&object);
                    let key = ObjectKey::of(&object);
                    let removed = cache.contents.write().expect("informer cache lock").remove(&key);
                    let removed = removed.unwrap_or_else(|| Arc::new(object));
                    notify(Change::Deleted(&removed));
                    cache.advance(revision);
                }
            }
        }
    }
}

/// Managed fields are only for server-side apply, and often the larger part of an object:
/// caches drop them, as kube-scheduler's and kube-controller-manager's informers do
/// (client-go's `TransformStripManagedFields`).
fn strip_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

fn apply<K: Resource>(cache: &Cache<K>, key: ObjectKey, object: K, notify: &impl Fn(Change<'_, K>)) {
    let new = Arc::new(object);
    let old = cache.contents.write().expect("informer cache lock").insert(key, new.clone());
    notify(Change::Applied { old: old.as_ref(), new: &new });
}
