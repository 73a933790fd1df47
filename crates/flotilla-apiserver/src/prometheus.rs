//! `/metrics`: the server's measurements as Prometheus text, under upstream's names. The API
//! server's own are made here (`apiserver_request_total`, `apiserver_request_duration_seconds`,
//! `apiserver_storage_objects`); the store, the scheduler and the controllers add theirs to the
//! same registry ([`crate::ApiServerConfig::prometheus`]), as upstream's components each serve
//! their own. Read by `system:masters` and by `system:monitoring`, the metrics token's group, as
//! upstream's role of that name reads it.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use flotilla_api::resource::{self, Subresource};
use flotilla_auth::UserInfo;
use flotilla_store::{KeyRange, RangeRequest};
use http::{HeaderMap, Method, StatusCode, Uri, header};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::request::{Query, Route};
use crate::{ApiServer, Error, Inner, authz};

/// The path, and what `system:monitoring` may read.
pub(crate) const PATH: &str = "/metrics";

/// How often the objects in the store are counted: upstream's interval for
/// `apiserver_storage_objects`.
const COUNT_INTERVAL: Duration = Duration::from_secs(60);

/// upstream's buckets for `apiserver_request_duration_seconds`.
const DURATION_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0,
];

/// What a request asked, as upstream labels it. Every value is one the server knows (a served
/// resource, a method it answers), so a caller cannot grow the families with made-up paths.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Asked {
    verb: &'static str,
    dry_run: &'static str,
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    subresource: &'static str,
    scope: &'static str,
    component: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Answered {
    #[prometheus(flatten)]
    asked: Asked,
    code: u16,
}

type Durations = Family<Asked, Histogram, fn() -> Histogram>;

/// The API server's own instruments.
#[derive(Clone, Debug)]
pub(crate) struct Instruments {
    requests: Family<Answered, Counter>,
    durations: Durations,
    objects: Family<[(&'static str, String); 1], Gauge>,
}

impl Instruments {
    pub(crate) fn register(registry: &mut Registry) -> Instruments {
        let instruments = Instruments {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            objects: Family::default(),
        };
        registry.register(
            "apiserver_request",
            "[STABLE] Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.",
            instruments.requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "[STABLE] Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.",
            instruments.durations.clone(),
        );
        registry.register(
            "apiserver_storage_objects",
            "[STABLE] Number of stored objects at the time of last check split by kind.",
            instruments.objects.clone(),
        );
        instruments
    }

    /// Counts an answered request. A watch counts when its stream starts.
    pub(crate) fn observe(&self, asked: Asked, status: StatusCode, elapsed: Duration) {
        self.durations.get_or_create(&asked).observe(elapsed.as_secs_f64());
        self.requests.get_or_create(&Answered { asked, code: status.as_u16() }).inc();
    }

    /// Counts the stored objects of every kind, now and every [`COUNT_INTERVAL`], while the server
    /// lives.
    pub(crate) fn count_objects(&self, server: Weak<Inner>) {
        let objects = self.objects.clone();
        tokio::spawn(async move {
            loop {
                let Some(inner) = server.upgrade() else { return };
                for def in resource::resources().iter().filter(|d| d.stored() && d.conversion.is_none()) {
                    let request = RangeRequest::new(KeyRange::prefix(def.key_prefix().into_bytes())).count_only();
                    if let Ok(counted) = inner.registry.store().range(request).await {
                        let label = flotilla_api::error::qualified(def.group, def.plural);
                        objects
                            .get_or_create(&[("resource", label)])
                            .set(i64::try_from(counted.count).unwrap_or(i64::MAX));
                    }
                }
                drop(inner);
                tokio::time::sleep(COUNT_INTERVAL).await;
            }
        });
    }
}

/// Counts and times a request, whichever route serves it (the middleware every authenticated
/// request passes).
pub(crate) async fn count(
    State(server): State<ApiServer>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let asked = asked(request.method(), request.uri(), request.headers());
    let response = next.run(request).await;
    server.inner.instruments.observe(asked, response.status(), started.elapsed());
    response
}

/// What `method` on `uri` asks, as upstream's `CleanVerb`, `CleanScope`, `cleanDryRun` and
/// `RequestInfo` label it.
pub(crate) fn asked(method: &Method, uri: &Uri, headers: &HeaderMap) -> Asked {
    let query = Query::parse(uri.query());
    let dry_run = match query.all("dryRun") {
        [] => "",
        values if values.iter().all(|v| v == "All") => "All",
        _ => "invalid",
    };
    // Upstream's valid request methods; anything else is `other`.
    let method_verb = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    };
    let mut asked = Asked {
        verb: method_verb,
        dry_run,
        group: "",
        version: "",
        resource: "",
        subresource: "",
        scope: "",
        component: "apiserver",
    };
    let path = uri.path();
    if path == flotilla_api::TOKEN_REVIEWS_PATH {
        // Created and never stored, so not among the served resources; labelled as upstream's.
        (asked.group, asked.version, asked.resource, asked.scope) =
            ("authentication.k8s.io", "v1", "tokenreviews", "resource");
        return asked;
    }
    if !path.starts_with("/api") {
        return asked;
    }
    match crate::request::parse_path(path) {
        Ok(Route::Object(target)) => {
            let def = target.resource;
            let named = target.name.is_some();
            let reading = matches!(*method, Method::GET | Method::HEAD);
            let creating = *method == Method::POST;
            let apply = headers
                .get(header::CONTENT_TYPE)
                .and_then(|t| t.to_str().ok())
                .is_some_and(|t| t.starts_with("application/apply-patch"));
            asked.verb = match target.subresource {
                Some(Subresource::Exec | Subresource::Attach | Subresource::PortForward | Subresource::Log) => {
                    "CONNECT"
                }
                _ if reading && query.flag("watch") => "WATCH",
                _ if reading && !named => "LIST",
                _ if *method == Method::DELETE && !named => "DELETECOLLECTION",
                _ if *method == Method::PATCH && apply => "APPLY",
                _ if *method == Method::HEAD => "GET",
                _ => method_verb,
            };
            (asked.group, asked.version, asked.resource) = (def.group, def.version, def.plural);
            asked.subresource = target.subresource.map(Subresource::name).unwrap_or_default();
            // A create names the object it makes, in its body: upstream's scope is `resource`.
            asked.scope = match (named || creating, &target.namespace) {
                (true, _) => "resource",
                (false, Some(_)) => "namespace",
                (false, None) => "cluster",
            };
        }
        Ok(Route::CustomMetric(metric)) => {
            (asked.group, asked.version) = (crate::custom_metrics::GROUP, crate::custom_metrics::VERSION);
            asked.scope = if metric.namespace.is_some() { "namespace" } else { "cluster" };
        }
        _ => {}
    }
    asked
}

/// The registry the server's `/metrics` writes, shared with the components that add to it.
pub type Prometheus = Arc<Mutex<Registry>>;

/// `GET /metrics`.
pub(crate) async fn serve(State(server): State<ApiServer>, Extension(user): Extension<UserInfo>) -> Response {
    if user.is_anonymous() {
        return Error(flotilla_api::ApiError::new(flotilla_api::Reason::Unauthorized, "Unauthorized")).into_response();
    }
    let attributes = authz::Attributes { user: &user, verb: "get", target: authz::Request::Path(PATH) };
    if let Err(e) = server.inner.authorizer.authorize(&attributes).await {
        return Error(e).into_response();
    }
    let mut text = String::new();
    // Writing to a String does not fail. A collector that panicked once leaves the registry as
    // it was: it is read on.
    let registry = server.inner.prometheus.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = prometheus_text::encode(&mut text, &registry);
    ([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked_of(method: Method, uri: &str, content_type: Option<&str>) -> Asked {
        let mut headers = HeaderMap::new();
        if let Some(t) = content_type {
            headers.insert(header::CONTENT_TYPE, t.parse().unwrap());
        }
        asked(&method, &uri.parse().unwrap(), &headers)
    }

    #[test]
    fn requests_are_labelled_as_upstream_labels_them() {
        let list = asked_of(Method::GET, "/api/v1/namespaces/default/pods?limit=500", None);
        assert_eq!((list.verb, list.resource, list.scope, list.group), ("LIST", "pods", "namespace", ""));
        let all = asked_of(Method::GET, "/apis/apps/v1/deployments?watch=true", None);
        assert_eq!((all.verb, all.group, all.version, all.scope), ("WATCH", "apps", "v1", "cluster"));
        let get = asked_of(Method::GET, "/apis/apps/v1/namespaces/d/deployments/web/scale", None);
        assert_eq!((get.verb, get.subresource, get.scope), ("GET", "scale", "resource"));
        let exec = asked_of(Method::GET, "/api/v1/namespaces/d/pods/p/exec?command=ls", None);
        assert_eq!(exec.verb, "CONNECT");
        let logs = asked_of(Method::GET, "/api/v1/namespaces/d/pods/p/log?follow=true", None);
        assert_eq!((logs.verb, logs.subresource), ("CONNECT", "log"));
        let create = asked_of(Method::POST, "/api/v1/namespaces/d/pods", None);
        assert_eq!((create.verb, create.scope), ("POST", "resource"));
        let odd = asked_of(Method::POST, "/api/v1/namespaces/d/pods?dryRun=All&dryRun=Some", None);
        assert_eq!(odd.dry_run, "invalid");
        let apply = asked_of(
            Method::PATCH,
            "/api/v1/namespaces/d/configmaps/c?dryRun=All",
            Some("application/apply-patch+yaml"),
        );
        assert_eq!((apply.verb, apply.dry_run), ("APPLY", "All"));
        let wipe = asked_of(Method::DELETE, "/api/v1/namespaces/d/pods", None);
        assert_eq!(wipe.verb, "DELETECOLLECTION");
        // Paths the server does not serve name no resource: a caller cannot invent labels.
        let made_up = asked_of(Method::GET, "/api/v1/namespaces/d/made-up-things", None);
        assert_eq!((made_up.verb, made_up.resource, made_up.scope), ("GET", "", ""));
        let discovery = asked_of(Method::GET, "/apis", None);
        assert_eq!((discovery.verb, discovery.resource), ("GET", ""));
        assert_eq!(asked_of(Method::OPTIONS, "/version", None).verb, "other");
    }
}
