//! core/v1 Events, as upstream components write them: what `kubectl describe` shows. A repeat of
//! the same event on the same object within [`SERIES_WINDOW`] bumps its `count` instead of
//! creating another (upstream's event correlator), so a crash loop or a pod that stays
//! unschedulable is one line. One task writes a recorder's events in order; when 1,000 wait,
//! new ones are dropped rather than slowing the component down (upstream's broadcaster too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;

/// Repeats closer together than this are counted on one Event.
pub(crate) const SERIES_WINDOW: Duration = Duration::from_secs(600);
/// Series remembered at most: memory stays bounded however many objects churn.
const MAX_SERIES: usize = 4096;
/// Events waiting to be written, at most; past this, new ones are dropped (upstream's
/// broadcaster queues 1,000 and drops when full).
const QUEUED_EVENTS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Writes Events in the background: a slow or failing API never holds up the caller.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    /// `source.component`, `reportingComponent`: `kubelet`, `default-scheduler`, …
    component: Arc<str>,
    /// `source.host`, `reportingInstance`: the node, for a kubelet.
    host: Option<Arc<str>>,
    series: Arc<Mutex<HashMap<String, Series>>>,
    /// Where events go to be written; `None`: nowhere ([`Recorder::discarding`]).
    queue: Option<mpsc::Sender<(Api<Event>, Request)>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("component", &self.component).field("host", &self.host).finish_non_exhaustive()
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
    /// A recorder for `component`, and the task that writes its events (it ends with the last
    /// clone of the recorder). Must be called within a Tokio runtime.
    pub fn new(client: kube::Client, component: &str, host: Option<&str>) -> Recorder {
        let (queue, waiting) = mpsc::channel(QUEUED_EVENTS);
        tokio::spawn(write_events(waiting));
        let queue = Some(queue);
        Recorder { client, component: component.into(), host: host.map(Into::into), series: Arc::default(), queue }
    }

    /// A recorder that writes nothing: for simulated components (hollow nodes), whose events
    /// would only load the API server that they are there to measure.
    pub fn discarding(client: kube::Client, component: &str) -> Recorder {
        Recorder { client, component: component.into(), host: None, series: Arc::default(), queue: None }
    }

    /// Records an event about `object`.
    pub fn object<K>(&self, object: &K, kind: EventType, reason: &str, message: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.record(reference(object, None), kind, reason, message);
    }

    /// Records an event about `pod`, or about one of its containers when `container` names it
    /// (`spec.containers{name}`, as the kubelet's field paths read).
    pub fn pod(&self, pod: &Pod, container: Option<&str>, kind: EventType, reason: &str, message: String) {
        let init = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|cs| container.is_some_and(|c| cs.iter().any(|i| i.name == c)));
        let field_path = container
            .map(|c| if init { format!("spec.initContainers{{{c}}}") } else { format!("spec.containers{{{c}}}") });
        self.record(reference(pod, field_path), kind, reason, message);
    }

    fn record(&self, object: ObjectReference, kind: EventType, reason: &str, message: String) {
        // Events are best effort: a burst beyond the queue loses some rather than slowing the
        // component down (checked first, so a lost event starts no series; the send below
        // fails too only if another clone filled the queue meanwhile).
        let Some(queue) = &self.queue else { return };
        let dropped = || tracing::debug!(reason, "too many events waiting to be written; one dropped");
        if queue.capacity() == 0 {
            return dropped();
        }
        let namespace = object.namespace.clone().unwrap_or_else(|| "default".into());
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
                    let object_name = object.name.as_deref().unwrap_or_default();
                    let name = format!("{object_name}.{:x}", jiff::Timestamp::now().as_nanosecond());
                    series.insert(key, Series { name: name.clone(), count: 1, last: now });
                    Write::Create { name }
                }
            }
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = Time(jiff::Timestamp::now());
        let request = match write {
            Write::Create { name } => {
                let host = self.host.as_deref().map(str::to_string);
                let event = Event {
                    metadata: ObjectMeta { name: Some(name), namespace: Some(namespace), ..Default::default() },
                    involved_object: object,
                    reason: Some(reason.into()),
                    message: Some(message),
                    type_: Some(kind.as_str().into()),
                    source: Some(EventSource { component: Some(self.component.to_string()), host: host.clone() }),
                    reporting_component: Some(self.component.to_string()),
                    reporting_instance: Some(host.unwrap_or_else(|| self.component.to_string())),
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
        if queue.try_send((api, request)).is_err() {
            dropped();
        }
    }
}

/// Writes events one at a time, in the order they were recorded (a series' first event before
/// its count bumps), as upstream's broadcaster does.
async fn write_events(mut queue: mpsc::Receiver<(Api<Event>, Request)>) {
    while let Some((api, request)) = queue.recv().await {
        let result = match request {
            Request::Create(event) => api.create(&PostParams::default(), &*event).await.map(drop),
            Request::Patch(name, patch) => {
                api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.map(drop)
            }
        };
        if let Err(err) = result {
            tracing::debug!(%err, "cannot record an event");
        }
    }
}

fn reference<K: Resource<DynamicType = ()>>(object: &K, field_path: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        namespace: object.namespace(),
        name: Some(object.name_any()),
        uid: object.uid(),
        resource_version: object.resource_version(),
        field_path,
    }
}
