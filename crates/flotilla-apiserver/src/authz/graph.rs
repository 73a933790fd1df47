//! Which node each pod is bound to and which Secrets, ConfigMaps and ServiceAccounts those pods
//! use: the graph upstream's Node authorizer keeps, here fed by a watch of the store's pods. A
//! node may read an object exactly when a pod bound to it refers to it. Beside it, which nodes
//! are registered (`credentials`): a node identity without a registration is revoked.
//!
//! The graph follows the store a moment behind. A node asking for a Secret right after its pod
//! was bound may find the graph a revision short: such a question waits (briefly) for the graph
//! to reach the store's current revision before it is answered no.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_store::{Revision, Store};
use serde::Deserialize;
use tokio::sync::watch;

use crate::follow::{Followed, Followers, follow};
use crate::registry::Registry;

/// How long a question waits for the graph to catch up with the store before it is answered.
const CATCH_UP: Duration = Duration::from_secs(2);

const PODS: &str = "/registry/pods/";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RefKind {
    Secret,
    ConfigMap,
    ServiceAccount,
}

/// An object a pod refers to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Ref {
    pub(crate) kind: RefKind,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

#[derive(Default, Debug)]
struct State {
    /// Nodes with a registration Secret.
    registered: std::collections::HashSet<String>,
    /// The server's own node, registered whatever its Secret says (it joins in-process).
    reserved: std::collections::HashSet<String>,
    /// Bound pods by store key: their node and what they refer to.
    pods: HashMap<Vec<u8>, (String, Vec<Ref>)>,
    /// For each object referred to, the nodes whose pods refer to it, and how many pods.
    users: HashMap<Ref, HashMap<String, usize>>,
}

impl State {
    fn remove(&mut self, key: &[u8]) {
        let Some((node, refs)) = self.pods.remove(key) else { return };
        for r in refs {
            if let Some(nodes) = self.users.get_mut(&r) {
                if let Some(count) = nodes.get_mut(&node) {
                    *count -= 1;
                    if *count == 0 {
                        nodes.remove(&node);
                    }
                }
                if nodes.is_empty() {
                    self.users.remove(&r);
                }
            }
        }
    }

    fn put(&mut self, key: Vec<u8>, stored: &[u8]) {
        self.remove(&key);
        let Some((node, refs)) = bound_pod(&key, stored) else { return };
        self.add(key, node, refs);
    }

    fn add(&mut self, key: Vec<u8>, node: String, refs: Vec<Ref>) {
        for r in &refs {
            *self.users.entry(r.clone()).or_default().entry(node.clone()).or_default() += 1;
        }
        self.pods.insert(key, (node, refs));
    }
}

/// The graph. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct NodeGraph {
    state: Arc<Mutex<State>>,
    /// The revisions the watches of pods and of registrations have reached.
    revisions: [watch::Receiver<Revision>; 2],
    /// Has the watches tell how far they are at once (see `follow`).
    asked: [Arc<tokio::sync::Notify>; 2],
    store: Option<Store>,
    /// The watching tasks, which end with the last clone: they hold the store open.
    _followers: Arc<Followers>,
}

impl NodeGraph {
    /// Follows the pods of `registry`'s store (decrypted, if they are stored encrypted) until
    /// the store is dropped.
    pub(crate) fn follow(registry: Registry) -> NodeGraph {
        let state = Arc::new(Mutex::new(State::default()));
        let store = registry.store().clone();
        let (pods_reached, pods_revision) = watch::channel(0);
        let (registrations_reached, registrations_revision) = watch::channel(0);
        let asked = [Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new())];
        let followers = Followers(vec![
            tokio::spawn(follow(registry.clone(), Followed::pods(), state.clone(), pods_reached, asked[0].clone())),
            tokio::spawn(follow(
                registry,
                Followed::registrations(),
                state.clone(),
                registrations_reached,
                asked[1].clone(),
            )),
        ]);
        NodeGraph {
            state,
            revisions: [pods_revision, registrations_revision],
            asked,
            store: Some(store),
            _followers: Arc::new(followers),
        }
    }

    /// Whether `node` is registered.
    pub(crate) async fn registered(&self, node: &str) -> bool {
        self.answer(|state| state.registered.contains(node) || state.reserved.contains(node)).await
    }

    /// Counts `node` as registered for as long as this server runs: the node it runs itself.
    pub(crate) fn reserve(&self, node: &str) {
        self.state.lock().expect("graph lock").reserved.insert(node.to_string());
    }

    /// Whether a pod bound to `node` refers to `wanted`.
    pub(crate) async fn related(&self, node: &str, wanted: &Ref) -> bool {
        self.answer(|state| state.users.get(wanted).is_some_and(|nodes| nodes.contains_key(node))).await
    }

    /// Whether pod `namespace/name` is bound to `node`.
    pub(crate) async fn pod_on(&self, node: &str, namespace: &str, name: &str) -> bool {
        let key = format!("{PODS}{namespace}/{name}").into_bytes();
        self.answer(|state| state.pods.get(&key).is_some_and(|(bound, _)| bound == node)).await
    }

    /// `check`, asked again once the graph has caught up with the store if it said no.
    async fn answer(&self, check: impl Fn(&State) -> bool) -> bool {
        if check(&self.state.lock().expect("graph lock")) {
            return true;
        }
        let Some(store) = &self.store else { return false };
        let current = store.revision();
        for asked in &self.asked {
            asked.notify_one();
        }
        let caught_up = async {
            for revision in &self.revisions {
                let mut revision = revision.clone();
                revision.wait_for(|reached| *reached >= current).await.ok()?;
            }
            Some(())
        };
        let caught_up = tokio::time::timeout(CATCH_UP, caught_up).await;
        matches!(caught_up, Ok(Some(()))) && check(&self.state.lock().expect("graph lock"))
    }
}

/// Where the registrations of nodes are kept (see `credentials`).
const REGISTRATIONS: &str = "/registry/secrets/kube-system/";

impl Followed<State> {
    fn pods() -> Followed<State> {
        Followed {
            prefix: PODS,
            def: flotilla_api::resource::find("", "v1", "pods").expect("pods are served"),
            apply: apply_pod,
            reset: |state| {
                state.pods.clear();
                state.users.clear();
            },
        }
    }

    fn registrations() -> Followed<State> {
        Followed {
            prefix: REGISTRATIONS,
            def: flotilla_api::resource::find("", "v1", "secrets").expect("secrets are served"),
            apply: apply_registration,
            reset: |state| state.registered.clear(),
        }
    }
}

fn apply_pod(state: &mut State, key: Vec<u8>, stored: Option<&[u8]>) {
    match stored {
        Some(stored) => state.put(key, stored),
        None => state.remove(&key),
    }
}

fn apply_registration(state: &mut State, key: Vec<u8>, stored: Option<&[u8]>) {
    let name = std::str::from_utf8(&key).ok().and_then(|k| k.strip_prefix(REGISTRATIONS));
    let Some(node) = name.and_then(|n| n.strip_suffix(crate::credentials::REGISTRATION_SUFFIX)) else { return };
    match stored {
        Some(_) => state.registered.insert(node.to_string()),
        None => state.registered.remove(node),
    };
}

/// The node a stored pod is bound to and what it refers to; `None` for an unbound pod.
fn bound_pod(key: &[u8], stored: &[u8]) -> Option<(String, Vec<Ref>)> {
    // The stored form is a 4-byte header, then the object's JSON (see `codec`).
    let pod: PodView = serde_json::from_slice(stored.get(4..)?).ok()?;
    let spec = pod.spec?;
    let node = spec.node_name.filter(|n| !n.is_empty())?;
    let namespace = std::str::from_utf8(key).ok()?.strip_prefix(PODS)?.split('/').next()?.to_string();
    let mut refs = Vec::new();
    let mut add = |kind, name: Option<String>| {
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            refs.push(Ref { kind, namespace: namespace.clone(), name });
        }
    };
    add(RefKind::ServiceAccount, spec.service_account_name);
    for secret in spec.image_pull_secrets {
        add(RefKind::Secret, secret.name);
    }
    for volume in spec.volumes {
        add(RefKind::Secret, volume.secret.and_then(|s| s.secret_name));
        add(RefKind::ConfigMap, volume.config_map.and_then(|c| c.name));
        for source in volume.projected.map(|p| p.sources).unwrap_or_default() {
            add(RefKind::Secret, source.secret.and_then(|s| s.name));
            add(RefKind::ConfigMap, source.config_map.and_then(|c| c.name));
        }
    }
    for container in spec.init_containers.into_iter().chain(spec.containers).chain(spec.ephemeral_containers) {
        for from in container.env_from {
            add(RefKind::Secret, from.secret_ref.and_then(|s| s.name));
            add(RefKind::ConfigMap, from.config_map_ref.and_then(|c| c.name));
        }
        for var in container.env {
            let from = var.value_from.unwrap_or_default();
            add(RefKind::Secret, from.secret_key_ref.and_then(|s| s.name));
            add(RefKind::ConfigMap, from.config_map_key_ref.and_then(|c| c.name));
        }
    }
    refs.sort_by(|a, b| (a.kind as u8, &a.name).cmp(&(b.kind as u8, &b.name)));
    refs.dedup();
    Some((node, refs))
}

/// Only what the graph needs of a pod; serde steps over the rest.
#[derive(Deserialize)]
struct PodView {
    spec: Option<SpecView>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecView {
    node_name: Option<String>,
    service_account_name: Option<String>,
    #[serde(default)]
    image_pull_secrets: Vec<Named>,
    #[serde(default)]
    volumes: Vec<VolumeView>,
    #[serde(default)]
    containers: Vec<ContainerView>,
    #[serde(default)]
    init_containers: Vec<ContainerView>,
    #[serde(default)]
    ephemeral_containers: Vec<ContainerView>,
}

#[derive(Deserialize, Default)]
struct Named {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeView {
    secret: Option<SecretVolume>,
    config_map: Option<Named>,
    projected: Option<Projected>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretVolume {
    secret_name: Option<String>,
}

#[derive(Deserialize)]
struct Projected {
    #[serde(default)]
    sources: Vec<ProjectionView>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProjectionView {
    secret: Option<Named>,
    config_map: Option<Named>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerView {
    #[serde(default)]
    env: Vec<EnvView>,
    #[serde(default)]
    env_from: Vec<EnvFromView>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvView {
    value_from: Option<ValueFrom>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ValueFrom {
    secret_key_ref: Option<Named>,
    config_map_key_ref: Option<Named>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvFromView {
    secret_ref: Option<Named>,
    config_map_ref: Option<Named>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored(pod: serde_json::Value) -> Vec<u8> {
        let mut bytes = vec![0u8; 4];
        bytes.extend(serde_json::to_vec(&pod).unwrap());
        bytes
    }

    #[test]
    fn a_bound_pod_relates_its_node_to_what_it_uses_and_no_more() {
        let mut state = State::default();
        let pod = json!({"spec": {"nodeName": "n1", "serviceAccountName": "default",
            "volumes": [{"name": "a", "secret": {"secretName": "tls"}}, {"name": "b", "projected": {"sources": [{"configMap": {"name": "cfg"}}]}}],
            "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": "env"}}]}]}});
        state.put(b"/registry/pods/ns/web".to_vec(), &stored(pod));
        let r = |kind, name: &str| Ref { kind, namespace: "ns".into(), name: name.into() };
        let used = |state: &State, node: &str, r: &Ref| state.users.get(r).is_some_and(|n| n.contains_key(node));
        for wanted in [
            r(RefKind::Secret, "tls"),
            r(RefKind::Secret, "db"),
            r(RefKind::ConfigMap, "cfg"),
            r(RefKind::ConfigMap, "env"),
        ] {
            assert!(used(&state, "n1", &wanted), "{wanted:?}");
            assert!(!used(&state, "n2", &wanted), "{wanted:?}");
        }
        assert!(!used(&state, "n1", &r(RefKind::Secret, "other")));
        let elsewhere = Ref { kind: RefKind::Secret, namespace: "other".into(), name: "tls".into() };
        assert!(!used(&state, "n1", &elsewhere), "the namespace counts");
        // Unbound pods relate nothing; a deleted pod takes its edges along.
        state.put(
            b"/registry/pods/ns/pending".to_vec(),
            &stored(json!({"spec": {"volumes": [{"name": "a", "secret": {"secretName": "x"}}]}})),
        );
        assert!(!state.users.contains_key(&r(RefKind::Secret, "x")));
        state.remove(b"/registry/pods/ns/web");
        assert!(state.users.is_empty() && state.pods.is_empty());
    }
}
