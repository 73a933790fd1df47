//! The resource metrics API (`metrics.k8s.io/v1beta1`): metrics-server's part, inside the API
//! server. Every resolution each node's Summary (`/stats/summary`) is read through the node
//! proxy, and each node's and container's last two readings are kept; CPU usage is the rate
//! between them, memory the working set of the last. `kubectl top` and the HPA read them as
//! `NodeMetrics` and `PodMetrics`, computed when asked for, never stored.
//!
//! As metrics-server does: a usage needs two readings, but for a container read first between
//! 10 s and one resolution after its start, which counts from its start (its CPU time was zero
//! then; sooner, its start-up would be all there is to see); a container that restarted, or
//! whose CPU time went back, starts a new series; only Running pods are shown, and only those
//! every container of which has a usage. A node whose read fails keeps its readings for a few
//! resolutions, then has no metrics until it is read again. What a node says of pods is kept
//! only up to [`MAX_PODS`], and served only for pods bound to it.
//!
//! The request counts of `wasi:http` containers, which the custom metrics serve for
//! request-driven scaling, are read apart, every [`REQUESTS_RESOLUTION`] (a second), from a
//! summary of only them (`/stats/summary?only_requests=true`): an autoscaler's panic window of
//! a few seconds needs readings that fresh, and the whole summary of a node of thousands of
//! pods is too much to read every second.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Response;
use flotilla_api::kinds::metrics::{self, ContainerMetrics, NodeMetrics, PodMetrics};
use flotilla_api::stats::{self, CpuStats, MemoryStats, Summary, UserDefinedMetric};
use flotilla_api::{ApiError, Reason, quantity};
use futures::StreamExt;
use http::{Method, StatusCode, header};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::handlers::{self, Request};
use crate::node_proxy::NodeProxy;
use crate::registry::{ListOptions, Registry};
use crate::request::{Representation, representation};
use crate::table::{IncludeObject, ListMeta, table_of};

/// How often nodes are read by default: metrics-server's shipped `--metric-resolution`.
pub(crate) const DEFAULT_RESOLUTION: Duration = Duration::from_secs(15);
/// How often nodes' request counts are read (at most): Knative's autoscaler reads its pods'
/// every second too.
pub(crate) const REQUESTS_RESOLUTION: Duration = Duration::from_secs(1);
/// Nodes read at once.
const CONCURRENT_READS: usize = 16;
/// The most a Summary may hold: far more than a node of 10,000 pods writes.
pub(crate) const MAX_SUMMARY_BYTES: usize = 16 * 1024 * 1024;
/// The most a summary of request counts may hold, read every second: a few hundred bytes for
/// each of 10,000 pods.
const MAX_REQUESTS_BYTES: usize = 4 * 1024 * 1024;
/// The least time a node whose reads fail keeps its readings, however short the period: a
/// node busy with a surge of requests may be slow to answer just when its counts matter.
const MIN_KEPT: Duration = Duration::from_secs(10);
/// The most pods of one node, and containers of one pod, that are kept: twice what a node may
/// run, so that a node reporting more cannot hold the server's memory.
const MAX_PODS: usize = 20_000;
const MAX_CONTAINERS: usize = 64;
/// A container read first this soon after its start has no usage yet (metrics-server's).
const FRESH: Duration = Duration::from_secs(10);
/// Rounds a node whose reads fail keeps its readings.
const KEPT_ROUNDS: u32 = 3;

/// The readings, and the tasks that take them. Dropping it stops the tasks.
pub(crate) struct Metrics {
    /// By node, what its summaries say.
    usage: Readings<NodeReadings>,
    /// By node, what its summaries of request counts say.
    requests: Readings<NodeRequests>,
    tasks: [JoinHandle<()>; 2],
}

/// What is kept of each node's reads, by node.
type Readings<R> = Arc<Mutex<HashMap<String, Read<R>>>>;

/// What a node said, and when this server read it.
struct Read<R> {
    at: std::time::Instant,
    said: R,
}

impl<R> std::ops::Deref for Read<R> {
    type Target = R;

    fn deref(&self) -> &R {
        &self.said
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl Metrics {
    /// Reads every node's summary through `nodes` each `resolution` (a second at least), and
    /// its request counts each [`REQUESTS_RESOLUTION`] (or `resolution`, if shorter).
    pub(crate) fn start(registry: Registry, nodes: NodeProxy, resolution: Duration) -> Metrics {
        let resolution = resolution.max(Duration::from_secs(1));
        let (usage, requests) = (Readings::default(), Readings::default());
        let read_usage = read_nodes(
            registry.clone(),
            nodes.clone(),
            (resolution, "/stats/summary", MAX_SUMMARY_BYTES),
            move |summary, before| self::readings(summary, before, resolution),
            Arc::clone(&usage),
        );
        let read_requests = read_nodes(
            registry,
            nodes,
            (resolution.min(REQUESTS_RESOLUTION), "/stats/summary?only_requests=true", MAX_REQUESTS_BYTES),
            request_readings,
            Arc::clone(&requests),
        );
        Metrics { usage, requests, tasks: [tokio::spawn(read_usage), tokio::spawn(read_requests)] }
    }

    fn node(&self, name: &str) -> Option<Usage> {
        self.usage.lock().expect("metrics lock").get(name)?.node.usage()
    }

    /// Each container's usage, if every one has one.
    fn pod(&self, node: &str, namespace: &str, name: &str, uid: &str) -> Option<Vec<(String, Usage)>> {
        let readings = self.usage.lock().expect("metrics lock");
        let pod = readings.get(node)?.pods.get(&(namespace.to_string(), name.to_string()))?;
        if pod.uid != uid || pod.containers.is_empty() {
            return None;
        }
        pod.containers.iter().map(|(name, series)| Some((name.clone(), series.usage()?))).collect()
    }
}

/// What a pod's containers say of their requests, read at `time`: how many are in flight on
/// average over `window` before it (with two readings of the same runs; else at that
/// moment), and how many arrived per second over it (with two readings).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Requests {
    pub(crate) time: Timestamp,
    pub(crate) window: Option<Duration>,
    pub(crate) in_flight: f64,
    pub(crate) per_second: Option<f64>,
}

/// What the readings say of a pod's requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum PodRequests {
    /// The pod has not been read yet.
    Unread,
    /// It was read, and none of its containers counts requests (none serves `wasi:http`).
    Uncounted,
    Read(Requests),
}

impl Metrics {
    /// The requests of a pod, from its node's readings.
    pub(crate) fn requests(&self, node: &str, namespace: &str, name: &str, uid: &str) -> PodRequests {
        let key = (namespace.to_string(), name.to_string());
        let requests = self.requests.lock().expect("metrics lock");
        // A node whose counts could not be read lately says nothing of its pods: not that they
        // are idle.
        let Some(counts) = requests.get(node) else { return PodRequests::Unread };
        let Some(counted) = counts.pods.get(&key).filter(|pod| pod.uid == uid) else {
            // A summary of counts names only pods that count: one the whole summary names
            // counts none.
            drop(requests);
            let usage = self.usage.lock().expect("metrics lock");
            let read = usage.get(node).and_then(|n| n.pods.get(&key)).is_some_and(|pod| pod.uid == uid);
            return if read { PodRequests::Uncounted } else { PodRequests::Unread };
        };
        let counted: Vec<&CountSeries> = counted.containers.values().collect();
        let Some(time) = counted.iter().map(|s| s.last.time).min() else { return PodRequests::Uncounted };
        // Each container's two readings of one run, and the window between them.
        let windows: Option<Vec<(Counts, Counts, Duration)>> = counted
            .iter()
            .map(|s| {
                let (prev, last) = (s.prev?, s.last);
                let window = Duration::try_from(last.time.duration_since(prev.time)).ok().filter(|w| !w.is_zero())?;
                Some((prev.counts, last.counts, window))
            })
            .collect();
        let Some(windows) = windows else {
            let in_flight = counted.iter().map(|s| s.last.counts.in_flight).sum();
            return PodRequests::Read(Requests { time, window: None, in_flight, per_second: None });
        };
        let rate = |before: f64, after: f64, window: Duration| (after - before).max(0.0) / window.as_secs_f64();
        let in_flight = windows.iter().map(|(before, after, w)| rate(before.busy, after.busy, *w)).sum();
        let per_second = windows.iter().map(|(before, after, w)| rate(before.total, after.total, *w)).sum();
        let window = windows.iter().map(|(_, _, w)| *w).max();
        PodRequests::Read(Requests { time, window, in_flight, per_second: Some(per_second) })
    }
}

struct NodeReadings {
    node: Series,
    /// By namespace and name.
    pods: HashMap<(String, String), PodReadings>,
}

struct PodReadings {
    uid: String,
    containers: BTreeMap<String, Series>,
}

/// What a node's summaries of request counts say, by pod.
struct NodeRequests {
    /// By namespace and name.
    pods: HashMap<(String, String), PodCounts>,
}

/// The counts of a pod's containers that count requests.
struct PodCounts {
    uid: String,
    containers: BTreeMap<String, CountSeries>,
}

/// One reading of a container's request counts.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Counted {
    time: Timestamp,
    /// When its run started: counts of another run are no series with these.
    start: Timestamp,
    counts: Counts,
}

/// The last two readings of a container's request counts.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CountSeries {
    prev: Option<Counted>,
    last: Counted,
}

impl CountSeries {
    /// The series after `point`, read after `old`.
    fn next(old: Option<&CountSeries>, point: Counted) -> CountSeries {
        match old {
            Some(old) if point.time <= old.last.time => *old,
            Some(old)
                if point.start == old.last.start
                    && point.counts.total >= old.last.counts.total
                    && point.counts.busy >= old.last.counts.busy =>
            {
                CountSeries { prev: Some(old.last), last: point }
            }
            _ => CountSeries { prev: None, last: point },
        }
    }
}

/// One reading of a node or a container.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    time: Timestamp,
    /// Since when `cpu` counts.
    start: Timestamp,
    /// CPU time, in nanoseconds.
    cpu: u64,
    /// Working set, in bytes.
    memory: u64,
}

impl Point {
    fn of(start: Timestamp, cpu: Option<&CpuStats>, memory: Option<&MemoryStats>) -> Option<Point> {
        let (cpu, memory) = (cpu?, memory?);
        let (time, memory) = (cpu.time.0, memory.working_set_bytes?);
        Some(Point { time, start, cpu: cpu.usage_core_nano_seconds?, memory })
    }
}

/// The last two readings of one node or container.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Series {
    prev: Option<Point>,
    last: Point,
}

/// What a series says: CPU in nanocores over `window`, ending at `time`, and memory.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Usage {
    time: Timestamp,
    window: Duration,
    nanocores: u64,
    memory: u64,
}

impl Series {
    /// The series after `point`, read after `old`. With `fresh` (a container's, read at most
    /// a resolution after its start), a first reading counts from the start.
    fn next(old: Option<&Series>, point: Point, fresh: Option<Duration>) -> Series {
        match old {
            // The same reading again (a node whose clock stood still) changes nothing.
            Some(old) if point.time <= old.last.time => *old,
            // The same run, counting on: the old reading is the new one's predecessor.
            Some(old) if point.start == old.last.start && point.cpu >= old.last.cpu => {
                Series { prev: Some(old.last), last: point }
            }
            // New, restarted, or counting from less than before: a series of its own.
            _ => {
                let age = point.time.duration_since(point.start);
                let counts_from_start = fresh.is_some_and(|resolution| {
                    Duration::try_from(age).is_ok_and(|age| age >= FRESH && age < resolution)
                });
                let start = Point { time: point.start, cpu: 0, ..point };
                Series { prev: counts_from_start.then_some(start), last: point }
            }
        }
    }

    fn usage(&self) -> Option<Usage> {
        let (prev, last) = (self.prev?, self.last);
        let window = last.time.duration_since(prev.time);
        let nanos = u128::try_from(window.as_nanos()).ok().filter(|n| *n > 0)?;
        let used = u128::from(last.cpu.checked_sub(prev.cpu)?);
        Some(Usage {
            time: last.time,
            window: Duration::from_nanos(u64::try_from(nanos).ok()?),
            nanocores: u64::try_from(used * 1_000_000_000 / nanos).unwrap_or(u64::MAX),
            memory: last.memory,
        })
    }
}

/// A container's request counts: in flight now, received in all, and the seconds they have
/// spent in flight in all (whose rate is the average in flight).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counts {
    in_flight: f64,
    total: f64,
    busy: f64,
}

/// The most a count a node reports is believed to be: exactly representable, and summed over
/// any number of pods without reaching infinity.
const MAX_COUNT: f64 = 9_007_199_254_740_992.0;

/// A container's request counts among its own metrics.
fn requests(metrics: &[UserDefinedMetric]) -> Option<Counts> {
    let value = |name: &str| {
        let metric = metrics.iter().find(|m| m.name == name)?;
        (metric.value.is_finite() && metric.value >= 0.0).then_some(metric.value.min(MAX_COUNT))
    };
    Some(Counts {
        in_flight: value(stats::REQUESTS_IN_FLIGHT)?,
        total: value(stats::REQUESTS_TOTAL)?,
        busy: value(stats::REQUESTS_IN_FLIGHT_SECONDS)?,
    })
}

/// What a node's Summary adds to its readings, `old` being what they were; the server reads
/// nodes every `resolution`.
fn readings(summary: &Summary, old: Option<&NodeReadings>, resolution: Duration) -> Option<NodeReadings> {
    let node = &summary.node;
    let point = Point::of(node.start_time.0, node.cpu.as_ref(), node.memory.as_ref())?;
    let mut pods = HashMap::new();
    for pod in summary.pods.iter().take(MAX_PODS) {
        let key = (pod.pod_ref.namespace.clone(), pod.pod_ref.name.clone());
        let before = old.and_then(|o| o.pods.get(&key)).filter(|p| p.uid == pod.pod_ref.uid);
        let containers = pod
            .containers
            .iter()
            .take(MAX_CONTAINERS)
            .filter_map(|c| {
                let point = Point::of(c.start_time.0, c.cpu.as_ref(), c.memory.as_ref())?;
                let series = Series::next(before.and_then(|b| b.containers.get(&c.name)), point, Some(resolution));
                Some((c.name.clone(), series))
            })
            .collect();
        pods.insert(key, PodReadings { uid: pod.pod_ref.uid.clone(), containers });
    }
    let node = Series::next(old.map(|o| &o.node), point, None);
    Some(NodeReadings { node, pods })
}

/// What a node's request summary adds to its readings, `old` being what they were.
fn request_readings(summary: &Summary, old: Option<&NodeRequests>) -> Option<NodeRequests> {
    let mut pods = HashMap::new();
    for pod in summary.pods.iter().take(MAX_PODS) {
        let key = (pod.pod_ref.namespace.clone(), pod.pod_ref.name.clone());
        let before = old.and_then(|o| o.pods.get(&key)).filter(|p| p.uid == pod.pod_ref.uid);
        let containers: BTreeMap<String, CountSeries> = pod
            .containers
            .iter()
            .take(MAX_CONTAINERS)
            .filter_map(|c| {
                let counts = requests(&c.user_defined_metrics)?;
                let time = c.user_defined_metrics.iter().map(|m| m.time.0).min()?;
                let point = Counted { time, start: c.start_time.0, counts };
                Some((c.name.clone(), CountSeries::next(before.and_then(|b| b.containers.get(&c.name)), point)))
            })
            .collect();
        if !containers.is_empty() {
            pods.insert(key, PodCounts { uid: pod.pod_ref.uid.clone(), containers });
        }
    }
    Some(NodeRequests { pods })
}

/// Reads every node's `path` (at most `limit` bytes) each `period`, and folds what each says
/// into `readings`. A node whose read fails or takes longer than `period` keeps its readings
/// for a few periods ([`MIN_KEPT`] at least): one slow read is not a gap in its metrics.
async fn read_nodes<R: Send + 'static>(
    registry: Registry,
    proxy: NodeProxy,
    (period, path, limit): (Duration, &'static str, usize),
    fold: impl Fn(&Summary, Option<&R>) -> Option<R> + Send + 'static,
    readings: Readings<R>,
) {
    let nodes_def = flotilla_api::resource::find("", "v1", "nodes").expect("nodes are served");
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let nodes = match registry.list(nodes_def, None, &ListOptions::default()).await {
            Ok(listed) => listed.items.iter().filter_map(|n| n.value().ok()).collect::<Vec<Value>>(),
            Err(e) => {
                tracing::warn!(error = %e.0, "cannot list the nodes to read their metrics");
                continue;
            }
        };
        let listed: std::collections::HashSet<String> = nodes
            .iter()
            .filter_map(|n| n.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string))
            .collect();
        let mut summaries = futures::stream::iter(nodes)
            .map(|node| {
                let proxy = proxy.clone();
                async move {
                    let name = node.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
                    let read = tokio::time::timeout(period, proxy.read(&node, path, limit));
                    let summary = match read.await {
                        // Up to 16 MiB of JSON: parsed off the async threads.
                        Ok(Ok(bytes)) => tokio::task::spawn_blocking(move || serde_json::from_slice::<Summary>(&bytes))
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|parsed| parsed.map_err(|e| e.to_string()))
                            .map_err(|e| tracing::debug!(node = %name, error = %e, "a node's summary does not parse"))
                            .ok(),
                        Ok(Err(e)) => {
                            tracing::debug!(node = %name, error = %e.0, "cannot read a node's summary");
                            None
                        }
                        Err(_) => None,
                    };
                    (name, summary)
                }
            })
            .buffer_unordered(CONCURRENT_READS);
        // Each summary is folded in as it comes, in place of its node's last.
        while let Some((name, summary)) = summaries.next().await {
            let mut readings = readings.lock().expect("metrics lock");
            if let Some(read) = summary
                .filter(|s| s.node.node_name == name)
                .and_then(|s| fold(&s, readings.get(&name).map(|r| &r.said)))
            {
                readings.insert(name, Read { at: std::time::Instant::now(), said: read });
            }
        }
        let kept = (period * KEPT_ROUNDS).max(MIN_KEPT);
        readings.lock().expect("metrics lock").retain(|name, read| listed.contains(name) && read.at.elapsed() < kept);
    }
}

fn quantities(usage: &Usage) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), Quantity(quantity::nanocores(usage.nanocores))),
        ("memory".to_string(), Quantity(quantity::bytes(usage.memory))),
    ])
}

/// metrics-server's metadata: the object's name, namespace and labels, created now.
fn metadata(object: &Value, now: Timestamp) -> ObjectMeta {
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str).map(str::to_string);
    ObjectMeta {
        name: text("/metadata/name"),
        namespace: text("/metadata/namespace"),
        labels: object.pointer("/metadata/labels").and_then(|l| serde_json::from_value(l.clone()).ok()),
        creation_timestamp: Some(Time(now)),
        ..ObjectMeta::default()
    }
}

fn node_metrics(metrics: &Metrics, node: &Value, now: Timestamp) -> Option<NodeMetrics> {
    let usage = metrics.node(node.pointer("/metadata/name")?.as_str()?)?;
    Some(NodeMetrics {
        api_version: format!("{}/{}", metrics::GROUP, metrics::VERSION),
        kind: "NodeMetrics".into(),
        metadata: metadata(node, now),
        timestamp: Time(usage.time),
        window: flotilla_api::go::duration(usage.window),
        usage: quantities(&usage),
    })
}

fn pod_metrics(metrics: &Metrics, pod: &Value, now: Timestamp) -> Option<PodMetrics> {
    let text = |pointer: &str| pod.pointer(pointer).and_then(Value::as_str);
    if text("/status/phase") != Some("Running") {
        return None;
    }
    let containers = metrics.pod(
        text("/spec/nodeName")?,
        text("/metadata/namespace")?,
        text("/metadata/name")?,
        text("/metadata/uid")?,
    )?;
    // The pod's time and window are its earliest container's, as metrics-server gives them.
    let (_, earliest) = containers.iter().min_by_key(|(_, usage)| usage.time)?;
    Some(PodMetrics {
        api_version: format!("{}/{}", metrics::GROUP, metrics::VERSION),
        kind: "PodMetrics".into(),
        metadata: metadata(pod, now),
        timestamp: Time(earliest.time),
        window: flotilla_api::go::duration(earliest.window),
        containers: containers
            .iter()
            .map(|(name, usage)| ContainerMetrics { name: name.clone(), usage: quantities(usage) })
            .collect(),
    })
}

/// A `get` or `list` of `nodes` or `pods` in `metrics.k8s.io`.
pub(crate) async fn serve(req: &Request<'_>, metrics: &Metrics) -> Result<Response> {
    let def = req.target.resource;
    if req.method != Method::GET || req.target.subresource.is_some() {
        return Err(handlers::method_not_allowed(&req.method));
    }
    if req.query.flag("watch") {
        return Err(ApiError::new(
            Reason::MethodNotAllowed,
            format!("watch is not supported on resources of kind \"{}.{}\"", def.plural, def.group),
        )
        .into());
    }
    // What is measured is read from the objects measured: their labels select, their
    // existence decides between "not found" and "no metrics yet".
    let measured = flotilla_api::resource::find("", "v1", def.plural).expect("nodes and pods are served");
    let namespace = req.target.namespace.as_deref();
    let now = Timestamp::now();
    let object = |value: &Value| -> Option<Value> {
        match def.plural {
            "nodes" => node_metrics(metrics, value, now).and_then(|m| serde_json::to_value(m).ok()),
            _ => pod_metrics(metrics, value, now).and_then(|m| serde_json::to_value(m).ok()),
        }
    };
    if let Some(name) = &req.target.name {
        let found = req.registry.get(measured, namespace, name).await?.value()?;
        let Some(metrics) = object(&found) else {
            let what = namespace.map_or(name.clone(), |ns| format!("{ns}/{name}"));
            return Err(ApiError::not_found(def.group, &def.kind.to_lowercase(), &what).into());
        };
        return respond(req, vec![metrics], false);
    }
    let mut options = handlers::list_options(req)?;
    // Every measured object at once: a page of metrics would be a page of the objects.
    (options.limit, options.continue_token) = (None, None);
    let listed = req.registry.list(measured, namespace, &options).await?;
    let items = listed.items.iter().filter_map(|stored| object(&stored.value().ok()?)).collect();
    respond(req, items, true)
}

fn respond(req: &Request<'_>, items: Vec<Value>, list: bool) -> Result<Response> {
    let def = req.target.resource;
    if let Representation::Table(version) = representation(handlers::header(&req.headers, header::ACCEPT))? {
        let include = IncludeObject::parse(req.query.get("includeObject"))?;
        return handlers::json_response(
            StatusCode::OK,
            &table_of(def, items, version, include, ListMeta::default())?,
            &[],
        );
    }
    let body = if list {
        json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(), "metadata": {}, "items": items})
    } else {
        items.into_iter().next().ok_or_else(|| ApiError::internal("no metrics to answer with"))?
    };
    handlers::json_response(StatusCode::OK, &body, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: f64) -> Timestamp {
        Timestamp::from_nanosecond((secs * 1e9) as i128).unwrap()
    }

    fn point(time: f64, start: f64, cpu_ms: u64) -> Point {
        Point { time: at(time), start: at(start), cpu: cpu_ms * 1_000_000, memory: 4096 }
    }

    const RESOLUTION: Duration = Duration::from_secs(15);

    #[test]
    fn cpu_is_the_rate_between_the_last_two_readings_of_one_run() {
        // Read first 12 s after its start, having used 1.2 s: a tenth of a core since it began.
        let first = Series::next(None, point(112.0, 100.0, 1200), Some(RESOLUTION));
        let usage = first.usage().unwrap();
        assert_eq!((usage.nanocores, usage.window, usage.memory), (100_000_000, Duration::from_secs(12), 4096));
        // Read again 1 s later, 250 ms more: a quarter of a core over that second.
        let second = Series::next(Some(&first), point(113.0, 100.0, 1450), Some(RESOLUTION));
        let usage = second.usage().unwrap();
        assert_eq!((usage.nanocores, usage.window, usage.time), (250_000_000, Duration::from_secs(1), at(113.0)));
        // The same reading again changes nothing.
        assert_eq!(Series::next(Some(&second), point(113.0, 100.0, 1450), Some(RESOLUTION)), second);
        // A restart starts over; a count that went back too, with no usage until read again.
        let restarted = Series::next(Some(&second), point(120.0, 108.0, 1200), Some(RESOLUTION));
        assert_eq!(restarted.usage().unwrap().nanocores, 100_000_000);
        let back = Series::next(Some(&second), point(121.0, 100.0, 10), Some(RESOLUTION));
        assert_eq!((back.prev, back.usage()), (None, None));
        // Read first sooner than 10 s after its start (its start-up alone), or later than a
        // resolution (its whole life), or a node read once: no usage yet.
        for (first, fresh) in [
            (point(105.0, 100.0, 900), Some(RESOLUTION)),
            (point(200.0, 100.0, 900), Some(RESOLUTION)),
            (point(112.0, 100.0, 900), None),
        ] {
            assert_eq!(Series::next(None, first, fresh).usage(), None);
        }
        // A start after the reading (a node's clock) is no window either.
        assert_eq!(Series::next(None, point(100.0, 112.0, 900), Some(RESOLUTION)).usage(), None);
    }

    #[test]
    fn a_nodes_readings_follow_its_pods_by_uid() {
        let summary = |uid: &str, cpu_ms: u64| -> Summary {
            let time = |t: f64| k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(at(t));
            let stats = |cpu_ms: u64| {
                (
                    Some(CpuStats {
                        time: time(110.0),
                        usage_nano_cores: None,
                        usage_core_nano_seconds: Some(cpu_ms * 1_000_000),
                    }),
                    Some(MemoryStats {
                        time: time(110.0),
                        available_bytes: None,
                        usage_bytes: None,
                        working_set_bytes: Some(1 << 20),
                        rss_bytes: None,
                    }),
                )
            };
            let (cpu, memory) = stats(cpu_ms);
            let (node_cpu, node_memory) = stats(50_000);
            serde_json::from_value(json!({
                "node": {"nodeName": "n1", "startTime": time(0.0), "cpu": node_cpu, "memory": node_memory},
                "pods": [{
                    "podRef": {"name": "web", "namespace": "default", "uid": uid},
                    "startTime": time(100.0),
                    "containers": [{"name": "c", "startTime": time(100.0), "cpu": cpu, "memory": memory}],
                }],
            }))
            .unwrap()
        };
        let first = readings(&summary("u1", 1000), None, RESOLUTION).unwrap();
        let key = ("default".to_string(), "web".to_string());
        // Read 10 s after its start: it counts from there. The node needs two readings.
        assert_eq!(first.pods[&key].containers["c"].usage().unwrap().nanocores, 100_000_000);
        assert_eq!(first.node.usage(), None);
        // The next reading of the same pod carries on its series; a pod of the same name
        // and another uid starts its own.
        let mut later = summary("u1", 1500);
        later.pods[0].containers[0].cpu.as_mut().unwrap().time.0 = at(111.0);
        later.node.cpu.as_mut().unwrap().time.0 = at(111.0);
        later.node.cpu.as_mut().unwrap().usage_core_nano_seconds = Some(50_500 * 1_000_000);
        let second = readings(&later, Some(&first), RESOLUTION).unwrap();
        assert_eq!(second.pods[&key].containers["c"].usage().unwrap().nanocores, 500_000_000);
        assert_eq!(second.node.usage().unwrap().nanocores, 500_000_000);
        let mut replaced = summary("u2", 1500);
        replaced.pods[0].containers[0].cpu.as_mut().unwrap().time.0 = at(111.0);
        replaced.pods[0].containers[0].start_time.0 = at(105.0);
        let third = readings(&replaced, Some(&first), RESOLUTION).unwrap();
        assert_eq!(third.pods[&key].containers["c"].usage(), None, "a pod of its own, read once, 6 s after its start");
    }

    #[test]
    fn request_counts_carry_on_within_a_run_and_start_over_in_another() {
        let summary = |uid: &str, time: f64, start: f64, total: f64, busy: f64| -> Summary {
            let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(at(time));
            let metric = |name: &str, value: f64| json!({"name": name, "type": "cumulative", "units": "requests", "time": time, "value": value});
            serde_json::from_value(json!({
                "node": {"nodeName": "n1", "startTime": time},
                "pods": [{
                    "podRef": {"name": "fn", "namespace": "default", "uid": uid},
                    "startTime": time,
                    "containers": [{"name": "c", "startTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(at(start)), "userDefinedMetrics": [
                        metric(stats::REQUESTS_IN_FLIGHT, 3.0),
                        metric(stats::REQUESTS_TOTAL, total),
                        metric(stats::REQUESTS_IN_FLIGHT_SECONDS, busy),
                    ]}],
                }],
            }))
            .unwrap()
        };
        let key = ("default".to_string(), "fn".to_string());
        let first = request_readings(&summary("u1", 101.0, 100.0, 10.0, 2.0), None).unwrap();
        assert_eq!(first.pods[&key].containers["c"].prev, None);
        // A second later: 20 more requests, 4 s more in flight in all (4 on average).
        let second = request_readings(&summary("u1", 102.0, 100.0, 30.0, 6.0), Some(&first)).unwrap();
        let series = second.pods[&key].containers["c"];
        let (prev, last) = (series.prev.unwrap(), series.last);
        assert_eq!((last.counts.total - prev.counts.total, last.counts.busy - prev.counts.busy), (20.0, 4.0));
        // A restarted container, counts that went back, or another pod of the name: over.
        for (uid, start, total) in [("u1", 101.5, 40.0), ("u1", 100.0, 5.0), ("u2", 100.0, 40.0)] {
            let next = request_readings(&summary(uid, 103.0, start, total, 7.0), Some(&second)).unwrap();
            assert_eq!(next.pods[&key].containers["c"].prev, None, "{uid} {start} {total}");
        }
        // A node that says nothing of a container's requests names no pod.
        let mut silent = summary("u1", 103.0, 100.0, 40.0, 7.0);
        silent.pods[0].containers[0].user_defined_metrics.clear();
        assert!(request_readings(&silent, Some(&second)).unwrap().pods.is_empty());
    }
}
