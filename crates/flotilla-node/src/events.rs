//! core/v1 Events about pods, as the kubelet writes them: what `kubectl describe pod` shows.
//! A repeat of the same event on the same object within [`SERIES_WINDOW`] bumps its `count`
//! instead of creating another (upstream's event correlator), so a crash loop is one line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Repeats closer together than this are counted on one Event.
pub(crate) const SERIES_WINDOW: Duration = Duration::from_secs(600);
/// Series remembered at most: the agent's memory stays bounded however many pods churn.
const MAX_SERIES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Normal,
    Warning,
}

/// Writes Events in the background: a slow or failing API never holds up a pod.
#[derive(Clone)]
pub(crate) struct Recorder {
    client: kube::Client,
    node: Arc<str>,
    series: Arc<Mutex<HashMap<String, Series>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("node", &self.node).finish_non_exhaustive()
    }
}

enum Write {
    Create { name: String },
    Bump { name: String, count: i32 },
}

enum Request {
    Create(Box<Event>),
    Patch(String, serde_json::Value),
}

#[derive(Debug, Clone)]
struct Series {
    name: String,
    count: i32,
    last: Instant,
}

impl Recorder {
    pub(crate) fn new(client: kube::Client, node: &str) -> Recorder {
        Recorder { client, node: node.into(), series: Arc::default() }
    }

    /// Records an event about `pod`, or about one of its containers when `container` names it
    /// (`spec.containers{name}`, as the kubelet's field paths read).
    pub(crate) fn pod(&self, pod: &Pod, container: Option<&str>, kind: EventType, reason: &str, message: String) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let init = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|cs| container.is_some_and(|c| cs.iter().any(|i| i.name == c)));
        let field_path = container
            .map(|c| if init { format!("spec.initContainers{{{c}}}") } else { format!("spec.containers{{{c}}}") });
        let object = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.clone()),
            name: Some(name.clone()),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            field_path,
        };
        let key = format!("{}/{:?}/{reason}/{message}", object.uid.as_deref().unwrap_or_default(), object.field_path);
        let now = Instant::now();
        let write = {
            let mut series = self.series.lock().expect("event series lock");
            if series.len() >= MAX_SERIES {
                series.retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
                if series.len() >= MAX_SERIES {
                    series.clear();
                }
            }
            match series.get_mut(&key) {
                Some(s) if now.duration_since(s.last) < SERIES_WINDOW => {
                    s.count += 1;
                    s.last = now;
                    Write::Bump { name: s.name.clone(), count: s.count }
                }
                _ => {
                    // Upstream names events `<object>.<unix nanoseconds in hex>`.
                    let name = format!("{name}.{:x}", jiff::Timestamp::now().as_nanosecond());
                    series.insert(key, Series { name: name.clone(), count: 1, last: now });
                    Write::Create { name }
                }
            }
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = Time(jiff::Timestamp::now());
        let request = match write {
            Write::Create { name } => {
                let event = Event {
                    metadata: ObjectMeta { name: Some(name), namespace: Some(namespace), ..Default::default() },
                    involved_object: object,
                    reason: Some(reason.into()),
                    message: Some(message),
                    type_: Some(
                        match kind {
                            EventType::Normal => "Normal",
                            EventType::Warning => "Warning",
                        }
                        .into(),
                    ),
                    source: Some(EventSource { component: Some("kubelet".into()), host: Some(self.node.to_string()) }),
                    reporting_component: Some("kubelet".into()),
                    reporting_instance: Some(self.node.to_string()),
                    first_timestamp: Some(now.clone()),
                    last_timestamp: Some(now),
                    count: Some(1),
                    ..Default::default()
                };
                Request::Create(Box::new(event))
            }
            Write::Bump { name, count } => {
                Request::Patch(name, serde_json::json!({"count": count, "lastTimestamp": now}))
            }
        };
        tokio::spawn(async move {
            let result = match request {
                Request::Create(event) => api.create(&PostParams::default(), &*event).await.map(drop),
                Request::Patch(name, patch) => {
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.map(drop)
                }
            };
            if let Err(err) = result {
                tracing::debug!(%err, "cannot record an event");
            }
        });
    }
}
