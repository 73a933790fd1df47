//! `/metrics`: the node's own measurements, under the kubelet's names where it has one
//! (`kubelet_running_pods`, `kubelet_running_containers`, `kubelet_pod_start_duration_seconds`),
//! and the data path's under Flotilla's: the requests each `wasi:http` container has served and
//! is serving, and the connections the activator holds for Services scaling up from zero and
//! what became of those it held.
//! Read by `system:masters` and `system:monitoring`; the metrics token is checked with the API
//! server ([`ApiTokenReview`]), as the kubelet checks bearer tokens.

use std::sync::Arc;

use flotilla_auth::UserInfo;
use flotilla_auth::authn::ReviewToken;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::Node;

/// What the node times as it goes.
#[derive(Clone, Debug)]
pub(crate) struct Instruments {
    /// From the worker's first sight of a new pod to the pod running.
    pub(crate) pod_start: Histogram,
}

impl Default for Instruments {
    fn default() -> Self {
        // Upstream's buckets, 0.5 s to an hour, below which a wasm pod's start of milliseconds
        // gets buckets of its own.
        let buckets = [
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0,
            120.0, 180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
        ];
        Instruments { pod_start: Histogram::new(buckets) }
    }
}

/// The text `/metrics` answers with now.
pub(crate) fn text(node: &Arc<Node>) -> String {
    let mut registry = Registry::default();
    registry.register(
        "kubelet_pod_start_duration_seconds",
        "[ALPHA] Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
        node.instruments.pod_start.clone(),
    );
    registry.register_collector(Box::new(Now(node.clone())));
    let mut text = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

/// What is so when scraped.
struct Now(Arc<Node>);

impl std::fmt::Debug for Now {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Now").finish_non_exhaustive()
    }
}

impl Collector for Now {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let pods = self.0.pods.all();
        let usages: Vec<(Arc<crate::pods::PodEntry>, String, crate::runtime::ContainerUsage)> = pods
            .iter()
            .flat_map(|pod| {
                let usage = pod.usage.lock().expect("pod entry lock");
                usage.iter().map(|(name, usage)| (pod.clone(), name.clone(), usage.clone())).collect::<Vec<_>>()
            })
            .collect();
        // Pods with a container running: the distinct pods among the runs, read once above.
        let mut running = usages.iter().map(|(pod, _, _)| Arc::as_ptr(pod)).collect::<Vec<_>>();
        running.dedup();
        let running_pods = running.len();
        let help = "[ALPHA] Number of pods that have a running pod sandbox";
        ConstGauge::new(running_pods as i64).encode(encoder.encode_descriptor(
            "kubelet_running_pods",
            help,
            None,
            MetricType::Gauge,
        )?)?;
        let help = "[ALPHA] Number of containers currently running";
        let mut family = encoder.encode_descriptor("kubelet_running_containers", help, None, MetricType::Gauge)?;
        ConstGauge::new(usages.len() as i64).encode(family.encode_family(&[("container_state", "running")])?)?;

        let counted: Vec<_> = usages.iter().filter(|(_, _, usage)| usage.requests.counted()).collect();
        let labels = |pod: &crate::pods::PodEntry, container: &str| {
            [("container", container.to_string()), ("namespace", pod.namespace.clone()), ("pod", pod.name.clone())]
        };
        let help = "HTTP requests a container's wasi:http server has taken";
        let mut family = encoder.encode_descriptor("flotilla_http_requests", help, None, MetricType::Counter)?;
        for (pod, container, usage) in &counted {
            let (_, total, _) = usage.requests.read();
            ConstCounter::new(total).encode(family.encode_family(&labels(pod, container))?)?;
        }
        let help = "HTTP requests a container's wasi:http server is answering now";
        let mut family =
            encoder.encode_descriptor("flotilla_http_requests_in_flight", help, None, MetricType::Gauge)?;
        for (pod, container, usage) in &counted {
            let (in_flight, _, _) = usage.requests.read();
            ConstGauge::new(in_flight as i64).encode(family.encode_family(&labels(pod, container))?)?;
        }
        let help = "Connections held for a Service scaling up from zero, waiting for its first endpoint";
        let mut family =
            encoder.encode_descriptor("flotilla_activator_held_connections", help, None, MetricType::Gauge)?;
        for (service, held) in self.0.activator.held() {
            let labels = [("namespace", service.namespace.unwrap_or_default()), ("service", service.name)];
            ConstGauge::new(held as i64).encode(family.encode_family(&labels)?)?;
        }
        let outcomes = self.0.activator.outcomes();
        let help = "Connections the activator held, by what became of them: passed on to an endpoint, timed out (answered 503), refused for want of room, left by their client, or let go when their Service stopped scaling from zero";
        let mut family =
            encoder.encode_descriptor("flotilla_activator_connections", help, None, MetricType::Counter)?;
        for (result, count) in [
            ("passed", outcomes.passed),
            ("timed_out", outcomes.timed_out),
            ("full", outcomes.full),
            ("left", outcomes.left),
            ("closed", outcomes.closed),
        ] {
            ConstCounter::new(count).encode(family.encode_family(&[("result", result)])?)?;
        }
        let help = "Seconds the connections passed on to an endpoint waited for it, in all";
        let family = encoder.encode_descriptor("flotilla_activator_waited_seconds", help, None, MetricType::Counter)?;
        ConstCounter::new(outcomes.waited.as_secs_f64()).encode(family)?;
        Ok(())
    }
}

/// Asks the API server who a bearer token names, with a `TokenReview` (the kubelet's
/// `--authentication-token-webhook`).
pub(crate) struct ApiTokenReview(pub(crate) kube::Client);

impl ReviewToken for ApiTokenReview {
    fn review(&self, token: String) -> BoxFuture<'static, Result<Option<UserInfo>, String>> {
        let client = self.0.clone();
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec { token: Some(token), ..Default::default() },
                ..Default::default()
            };
            let body = serde_json::to_vec(&review).map_err(|e| e.to_string())?;
            let request = http::Request::post(flotilla_api::TOKEN_REVIEWS_PATH)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .map_err(|e| e.to_string())?;
            let reviewed: TokenReview = client.request(request).await.map_err(|e| e.to_string())?;
            let status = reviewed.status.unwrap_or_default();
            Ok(match (status.authenticated, status.user) {
                (Some(true), Some(user)) => {
                    let groups: Vec<&str> = user.groups.iter().flatten().map(String::as_str).collect();
                    Some(UserInfo::new(user.username.unwrap_or_default(), &groups))
                }
                _ => None,
            })
        })
    }
}
