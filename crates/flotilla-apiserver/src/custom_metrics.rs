//! The custom metrics API (`custom.metrics.k8s.io/v1beta2`), the part an adapter
//! (prometheus-adapter, KEDA's) plays upstream, for the requests the nodes count: the HPA's
//! `Pods` and `Object` metrics read it.
//!
//! - `requests_in_flight`: a pod's requests in flight on average between its last two readings
//!   (Knative's concurrency: short requests between readings count), or at its one reading; a
//!   Service's, the sum over the Running pods it selects, plus, while none of them is Ready,
//!   the requests nodes hold for it (read from the nodes when asked for, and only from nodes
//!   that told of holding some with an `Activating` Event on the Service, which [`Holders`]
//!   follows from the store rather than listing Events at every question): a Service at zero
//!   asks for 0 replicas, or for enough to serve what waits. A Service one of whose Running pods
//!   has not been read yet has no value: a pod just woken is not taken for an idle one.
//! - `requests_per_second`: the rate between a pod's last two readings; a Service's, the sum.
//!
//! Values are `MetricValueList`s, computed when asked for, never stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Response;
use flotilla_api::selector::LabelSelector;
use flotilla_api::stats::{ACTIVATING, Held, REQUESTS_IN_FLIGHT, REQUESTS_PER_SECOND};
use flotilla_api::{ApiError, Reason};
use futures::StreamExt;
use http::{Method, StatusCode};
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::error::Result;
use crate::follow::{Followed, Followers, follow};
use crate::handlers;
use crate::metrics::{Metrics, PodRequests, Requests};
use crate::node_proxy::NodeProxy;
use crate::registry::{ListOptions, Registry};
use crate::request::{Query, not_served};

pub(crate) const GROUP: &str = "custom.metrics.k8s.io";
pub(crate) const VERSION: &str = "v1beta2";
/// The metrics served, for each kind of object.
const METRICS: &[&str] = &[REQUESTS_IN_FLIGHT, REQUESTS_PER_SECOND];
/// How recent a node's `Activating` Event must be for it to be asked what it holds. A node
/// holding requests tells again every few seconds, so this is slack for its clock, which
/// stamps the Event.
const HOLDING_RECENTLY: Duration = Duration::from_secs(300);
/// The most a node's held requests may weigh.
const MAX_HELD_BYTES: usize = 1024 * 1024;
/// The most requests one node is believed to hold for a Service: what its activator may hold.
const MAX_HELD_PER_NODE: u64 = 4096;

/// How long a question waits for [`Holders`] to catch up with the store: an HPA woken by an
/// `Activating` Event asks at once, and the index may be a revision short of that Event.
const CATCH_UP: Duration = Duration::from_secs(2);

const EVENTS: &str = "/registry/events/";

/// Which nodes told, with an `Activating` Event, that they hold requests for which Service, and
/// when they last did: followed from the store's Events, so that the custom metrics of a
/// Service at zero cost a lookup, not a list of its namespace's Events. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Holders {
    state: Arc<Mutex<Holding>>,
    reached: tokio::sync::watch::Receiver<flotilla_store::Revision>,
    asked: Arc<tokio::sync::Notify>,
    store: flotilla_store::Store,
    _follower: Arc<Followers>,
}

/// A Service, by namespace and name.
type ServiceKey = (String, String);

#[derive(Debug, Default)]
struct Holding {
    /// By Service, its `Activating` Events (by store key): the node, and when it last told.
    /// One per node and Service: the nodes' recorders count repeats in one Event.
    services: HashMap<ServiceKey, HashMap<Vec<u8>, (String, Timestamp)>>,
    /// Each of those Events' Service.
    events: HashMap<Vec<u8>, ServiceKey>,
}

impl Holding {
    fn apply(&mut self, key: Vec<u8>, told: Option<(ServiceKey, String, Timestamp)>) {
        if let Some(service) = self.events.remove(&key)
            && let Some(events) = self.services.get_mut(&service)
        {
            events.remove(&key);
            if events.is_empty() {
                self.services.remove(&service);
            }
        }
        if let Some((service, node, last)) = told {
            self.events.insert(key.clone(), service.clone());
            self.services.entry(service).or_default().insert(key, (node, last));
        }
    }
}

impl Holders {
    pub(crate) fn follow(registry: Registry) -> Holders {
        let state = Arc::new(Mutex::new(Holding::default()));
        let (reached, revision) = tokio::sync::watch::channel(0);
        let followed = Followed {
            prefix: EVENTS,
            def: flotilla_api::resource::find("", "v1", "events").expect("events are served"),
            apply: |holding: &mut Holding, key, stored| holding.apply(key, stored.and_then(activating)),
            reset: |holding| *holding = Holding::default(),
        };
        let store = registry.store().clone();
        let asked = Arc::new(tokio::sync::Notify::new());
        let follower = tokio::spawn(follow(registry, followed, state.clone(), reached, asked.clone()));
        Holders { state, reached: revision, asked, store, _follower: Arc::new(Followers(vec![follower])) }
    }

    /// The nodes that told of holding requests for `namespace/name` since `since`, once the
    /// index has caught up with the store (or has tried to for [`CATCH_UP`]).
    async fn nodes(&self, namespace: &str, name: &str, since: Timestamp) -> Vec<String> {
        let current = self.store.revision();
        let mut reached = self.reached.clone();
        if *reached.borrow() < current {
            self.asked.notify_one();
            let _ = tokio::time::timeout(CATCH_UP, reached.wait_for(|reached| *reached >= current)).await;
        }
        let holding = self.state.lock().expect("holders lock");
        let service = (namespace.to_string(), name.to_string());
        let events = holding.services.get(&service).into_iter().flat_map(HashMap::values);
        let mut nodes: Vec<String> = events.filter(|(_, last)| *last >= since).map(|(node, _)| node.clone()).collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }
}

/// What a stored Event tells, if it is a node's `Activating` Event on a Service.
fn activating(stored: &[u8]) -> Option<(ServiceKey, String, Timestamp)> {
    // Most Events are not: skip them before they are parsed.
    let json = stored.get(4..)?;
    if !json.windows(ACTIVATING.len()).any(|w| w == ACTIVATING.as_bytes()) {
        return None;
    }
    let event: Value = serde_json::from_slice(json).ok()?;
    let text = |pointer: &str| event.pointer(pointer).and_then(Value::as_str);
    if text("/reason")? != ACTIVATING || text("/involvedObject/kind")? != "Service" {
        return None;
    }
    let service = (text("/involvedObject/namespace")?.to_string(), text("/involvedObject/name")?.to_string());
    let last = text("/lastTimestamp")?.parse::<Timestamp>().ok()?;
    Some((service, text("/source/host")?.to_string(), last))
}

/// `/apis/custom.metrics.k8s.io/v1beta2/[namespaces/<ns>/]<resource>/<name or *>/<metric>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MetricRequest {
    pub(crate) namespace: Option<String>,
    /// `pods` or `services`.
    pub(crate) resource: String,
    /// An object's name, or `*` for every one the label selector picks.
    pub(crate) name: String,
    pub(crate) metric: String,
}

/// The request a path under the group's version names.
pub(crate) fn parse(version: &str, rest: &[&str]) -> Result<MetricRequest> {
    if version != VERSION {
        return Err(not_served().into());
    }
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] => (Some((*namespace).to_string()), rest),
        rest => (None, rest),
    };
    let [resource, name, metric] = rest else { return Err(not_served().into()) };
    Ok(MetricRequest {
        namespace,
        resource: (*resource).to_string(),
        // Clients escape the `*` (kubectl's `get --raw` sends `%2A`).
        name: crate::request::decode(name),
        metric: (*metric).to_string(),
    })
}

/// `/apis/custom.metrics.k8s.io/v1beta2`: what is served, as an adapter lists it.
pub(crate) fn resource_list() -> Value {
    let resources: Vec<Value> = ["pods", "services"]
        .iter()
        .flat_map(|resource| METRICS.iter().map(move |metric| (resource, metric)))
        .map(|(resource, metric)| {
            json!({"name": format!("{resource}/{metric}"), "singularName": "", "namespaced": true,
                   "kind": "MetricValueList", "verbs": ["get"]})
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"), "resources": resources})
}

/// The same, as aggregated discovery lists them: each metric a subresource of a parent with no
/// verbs of its own, as upstream's aggregator converts an adapter's list.
pub(crate) fn discovery_resources() -> Vec<Value> {
    ["pods", "services"]
        .iter()
        .map(|resource| {
            let metrics: Vec<Value> = METRICS
                .iter()
                .map(|metric| {
                    json!({"subresource": metric, "responseKind": {"group": GROUP, "version": VERSION, "kind": "MetricValueList"}, "verbs": ["get"]})
                })
                .collect();
            json!({"resource": resource, "responseKind": {"group": GROUP, "version": VERSION, "kind": "MetricValueList"},
                   "scope": "Namespaced", "singularResource": "", "verbs": [], "subresources": metrics})
        })
        .collect()
}

/// The adapter's 404 for a metric it does not have.
fn metric_not_found(request: &MetricRequest) -> ApiError {
    let message = if request.name == "*" {
        format!("the server could not find the metric {} for {}", request.metric, request.resource)
    } else {
        format!("the server could not find the metric {} for {} {}", request.metric, request.resource, request.name)
    };
    ApiError::new(Reason::NotFound, message)
}

/// What the request asks of the nodes' counts, as a `MetricValueList`.
pub(crate) async fn serve(
    request: &MetricRequest,
    method: &Method,
    query: &Query,
    registry: &Registry,
    nodes: &NodeProxy,
    metrics: &Metrics,
    holders: &Holders,
) -> Result<Response> {
    if *method != Method::GET {
        return Err(handlers::method_not_allowed(method));
    }
    let known = matches!(request.resource.as_str(), "pods" | "services") && METRICS.contains(&request.metric.as_str());
    let Some(namespace) = request.namespace.as_deref().filter(|_| known) else {
        return Err(metric_not_found(request).into());
    };
    let selector = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.message))?;
    let def = |plural: &str| flotilla_api::resource::find("", "v1", plural).expect("pods and services are served");
    let objects: Vec<Value> = if request.name == "*" {
        let options = ListOptions { labels: selector, ..ListOptions::default() };
        let listed = registry.list(def(&request.resource), Some(namespace), &options).await?;
        listed.items.iter().filter_map(|stored| stored.value().ok()).collect()
    } else {
        vec![registry.get(def(&request.resource), Some(namespace), &request.name).await?.value()?]
    };
    let now = Timestamp::now();
    let mut items = Vec::new();
    for object in &objects {
        let requests = match request.resource.as_str() {
            "pods" => match pod_requests(metrics, object) {
                PodRequests::Read(requests) => requests,
                PodRequests::Unread | PodRequests::Uncounted => continue,
            },
            _ => match service_requests(registry, nodes, metrics, holders, object, now).await? {
                Ok(requests) => requests,
                Err(unread) if request.name != "*" => {
                    let message = format!("{}: pod {unread} has not been read yet", metric_not_found(request).message);
                    return Err(ApiError::new(Reason::NotFound, message).into());
                }
                Err(_) => continue,
            },
        };
        let value = match request.metric.as_str() {
            REQUESTS_IN_FLIGHT => requests.in_flight,
            _ => match requests.per_second {
                Some(rate) => rate,
                None => continue,
            },
        };
        let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
        let mut item = json!({
            "describedObject": {
                "kind": if request.resource == "pods" { "Pod" } else { "Service" },
                "namespace": text("/metadata/namespace"),
                "name": text("/metadata/name"),
                "apiVersion": "/v1",
            },
            "metric": {"name": request.metric},
            "timestamp": requests.time.to_string(),
            "value": milli(value),
        });
        if let Some(window) = requests.window {
            item["windowSeconds"] = window.as_secs().into();
        }
        items.push(item);
    }
    if items.is_empty() && request.name != "*" {
        return Err(metric_not_found(request).into());
    }
    let list =
        json!({"kind": "MetricValueList", "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items});
    handlers::json_response(StatusCode::OK, &list, &[])
}

/// A value as a quantity, in milli-units when it has a fraction (`1500m`), as adapters write
/// them; a fraction of a thousandth counts as one, so that any demand shows.
fn milli(value: f64) -> String {
    let milli = (value * 1000.0).ceil();
    match milli {
        m if m.is_nan() || m <= 0.0 => "0".into(),
        m if m % 1000.0 == 0.0 => format!("{}", (m / 1000.0) as u64),
        m => format!("{}m", m as u64),
    }
}

fn pod_requests(metrics: &Metrics, pod: &Value) -> PodRequests {
    let text = |pointer: &str| pod.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
    if text("/status/phase") != "Running" {
        return PodRequests::Uncounted;
    }
    metrics.requests(text("/spec/nodeName"), text("/metadata/namespace"), text("/metadata/name"), text("/metadata/uid"))
}

/// A Service's requests: its Running pods' and, while none of them is Ready, what nodes hold
/// for it; or the name of a Running pod that has not been read yet.
async fn service_requests(
    registry: &Registry,
    nodes: &NodeProxy,
    metrics: &Metrics,
    holders: &Holders,
    service: &Value,
    now: Timestamp,
) -> Result<std::result::Result<Requests, String>> {
    let namespace = service.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
    let name = service.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let selected: BTreeMap<String, String> =
        service.pointer("/spec/selector").and_then(|s| serde_json::from_value(s.clone()).ok()).unwrap_or_default();
    let mut pods = Vec::new();
    if !selected.is_empty() {
        let labels = selected.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let labels = LabelSelector::parse(&labels).map_err(|e| ApiError::internal(e.message))?;
        let options = ListOptions { labels, ..ListOptions::default() };
        let pods_def = flotilla_api::resource::find("", "v1", "pods").expect("pods are served");
        let listed = registry.list(pods_def, Some(namespace), &options).await?;
        pods = listed.items.iter().filter_map(|stored| stored.value().ok()).collect();
    }
    let mut read = Vec::new();
    for pod in &pods {
        match pod_requests(metrics, pod) {
            PodRequests::Read(requests) => read.push(requests),
            PodRequests::Uncounted => {}
            PodRequests::Unread => {
                let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
                return Ok(Err(name.to_string()));
            }
        }
    }
    let ready = pods.iter().any(|pod| {
        let conditions = pod.pointer("/status/conditions").and_then(Value::as_array);
        conditions.into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    // Requests are held only while the Service has no endpoint: with a pod Ready, none waits.
    let held = if ready { 0 } else { held(registry, nodes, holders, namespace, name, now).await? };
    let in_flight = read.iter().map(|r| r.in_flight).sum::<f64>() + held as f64;
    let rates: Option<Vec<f64>> = read.iter().map(|r| r.per_second).collect();
    let per_second = rates.map(|rates| rates.iter().sum());
    let time = read.iter().map(|r| r.time).min().unwrap_or(now);
    let window = read.iter().filter_map(|r| r.window).max();
    Ok(Ok(Requests { time, window, in_flight, per_second }))
}

/// The requests held for Service `namespace/name` by the nodes that recently told of holding
/// some.
async fn held(
    registry: &Registry,
    nodes: &NodeProxy,
    holders: &Holders,
    namespace: &str,
    name: &str,
    now: Timestamp,
) -> Result<u64> {
    let recently = now.checked_sub(HOLDING_RECENTLY).unwrap_or(Timestamp::UNIX_EPOCH);
    let holding = holders.nodes(namespace, name, recently).await;
    let nodes_def = flotilla_api::resource::find("", "v1", "nodes").expect("nodes are served");
    let counts = futures::stream::iter(holding)
        .map(|node| async move {
            let node = registry.get(nodes_def, None, &node).await.ok()?.value().ok()?;
            let read = tokio::time::timeout(Duration::from_secs(2), nodes.read(&node, "/stats/held", MAX_HELD_BYTES));
            let held: Held = serde_json::from_slice(&read.await.ok()?.ok()?).ok()?;
            let held = held.services.iter().find(|s| s.namespace == namespace && s.name == name)?;
            Some(held.requests.min(MAX_HELD_PER_NODE))
        })
        .buffer_unordered(16)
        .collect::<Vec<Option<u64>>>()
        .await;
    Ok(counts.into_iter().flatten().fold(0, u64::saturating_add))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_indexed_by_service_and_forgotten_with_their_events() {
        let stored = |reason: &str, kind: &str, node: &str, at: &str| {
            let event = json!({
                "reason": reason, "lastTimestamp": at, "source": {"host": node},
                "involvedObject": {"kind": kind, "namespace": "fn", "name": "hello"},
            });
            [b"k8s\0".to_vec(), serde_json::to_vec(&event).unwrap()].concat()
        };
        let at = "2026-12-05T10:00:00Z";
        let told = activating(&stored(ACTIVATING, "Service", "n1", at)).unwrap();
        assert_eq!(told, (("fn".to_string(), "hello".to_string()), "n1".to_string(), at.parse().unwrap()));
        assert_eq!(activating(&stored("Scheduled", "Service", "n1", at)), None);
        assert_eq!(activating(&stored(ACTIVATING, "Pod", "n1", at)), None);

        let mut holding = Holding::default();
        holding.apply(b"/registry/events/fn/a".to_vec(), Some(told.clone()));
        let other = (told.0.clone(), "n2".to_string(), told.2);
        holding.apply(b"/registry/events/fn/b".to_vec(), Some(other));
        assert_eq!(holding.services[&told.0].len(), 2);
        // An Event deleted, or rewritten as something else, holds no more.
        holding.apply(b"/registry/events/fn/a".to_vec(), None);
        holding.apply(b"/registry/events/fn/b".to_vec(), None);
        assert!(holding.services.is_empty() && holding.events.is_empty());
    }

    #[test]
    fn paths_name_an_object_or_all_and_a_metric() {
        let parsed = parse("v1beta2", &["namespaces", "ns", "pods", "*", "requests_in_flight"]).unwrap();
        assert_eq!(
            parsed,
            MetricRequest {
                namespace: Some("ns".into()),
                resource: "pods".into(),
                name: "*".into(),
                metric: "requests_in_flight".into()
            }
        );
        assert_eq!(parse("v1beta2", &["namespaces", "ns", "pods", "%2A", "requests_in_flight"]).unwrap().name, "*");
        assert!(parse("v1beta1", &["namespaces", "ns", "pods", "*", "requests_in_flight"]).is_err());
        assert!(parse("v1beta2", &["namespaces", "ns", "pods", "*"]).is_err());
        assert_eq!(parse("v1beta2", &["nodes", "n1", "load"]).unwrap().namespace, None);
        assert_eq!(milli(1.5), "1500m");
        assert_eq!(milli(2.0), "2");
        assert_eq!(milli(0.0001), "1m");
        assert_eq!(milli(0.0), "0");
        assert_eq!(milli(f64::NAN), "0");
        let list = resource_list();
        let names: Vec<&str> =
            list["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "pods/requests_in_flight",
                "pods/requests_per_second",
                "services/requests_in_flight",
                "services/requests_per_second"
            ]
        );
    }
}
