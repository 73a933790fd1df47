//! `flotilla-apiserver`: the Kubernetes REST API over the Flotilla store.
//!
//! Discovery (legacy and aggregated), OpenAPI v3, every verb on the served resources with
//! upstream's semantics (optimistic concurrency, finalizers, graceful pod deletion, label and
//! field selectors, consistent pagination), JSON, merge and strategic merge patches, watches,
//! Tables for `kubectl get`; behind `flotilla-auth`'s authentication layer, an authorizer chain
//! (`authz`) in front of every request and NodeRestriction in the writes of nodes.

mod authz;
mod codec;
mod compaction;
mod conversion;
mod credentials;
mod custom_metrics;
mod discovery;
mod encryption;
mod error;
mod event_ttl;
mod follow;
mod handlers;
mod metrics;
mod node_proxy;
mod openapi;
mod prometheus;
mod registry;
mod request;
mod services;
mod table;
mod token_review;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flotilla_api::resource::{self, ResourceDef, Subresource};
use flotilla_api::selector::FieldSelector;
use flotilla_api::{ApiError, Reason};
use flotilla_auth::pki::{Authority, Issued};
use flotilla_auth::{Authenticate, Authenticator, UserInfo};
use flotilla_store::Store;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use serde_json::{Value, json};

pub use compaction::{DEFAULT_INTERVAL as DEFAULT_COMPACTION_INTERVAL, compact_history};
pub use encryption::Encryption;
pub use error::Error;
pub use event_ttl::expire_events;
pub use flotilla_api::Cidr;
pub use prometheus::Prometheus;

use crate::authz::Authorizer;
use crate::handlers::{MAX_BODY_BYTES, json_response};
use crate::node_proxy::NodeProxy;
use crate::registry::{Registry, WriteOptions};
use crate::request::{Query, Route, parse_path};

/// The namespaces every cluster has from its first start.
const DEFAULT_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

#[derive(Clone)]
pub struct ApiServerConfig {
    /// Cluster IPs of Services come from here. On a single host it lies in 127.0.0.0/8, so
    /// that nothing needs privileges to route it.
    pub service_cidr: Cidr,
    /// Who may call: bearer tokens (the admin's, the join token's) beside the client
    /// certificates the TLS listener verified.
    pub authenticator: Authenticator,
    /// The cluster CA, served at `/cacerts` so that a joining agent can fetch it and check it
    /// against the hash in its join token, and the key that signs nodes' certificates when
    /// they join. `None` when the cluster takes no nodes from elsewhere.
    pub authority: Option<Arc<Authority>>,
    /// What the server presents to nodes when it proxies to them (`kubectl logs`).
    pub node_client: Option<Issued>,
    /// How long pods tolerate an unreachable or not-ready node before they are evicted, unless
    /// they say otherwise (upstream's DefaultTolerationSeconds admission, 300 s there).
    pub default_toleration_seconds: i64,
    /// Which resources are encrypted at rest, and how (`--encryption-provider-config`).
    pub encryption: Encryption,
    /// Where pods reach this server: the endpoint of the `default/kubernetes` Service, through
    /// which in-cluster clients find the API (`KUBERNETES_SERVICE_HOST`). `None`: no Service.
    pub advertise: Option<std::net::SocketAddr>,
    /// How often the resource metrics read every node (`--metrics-resolution`).
    pub metrics_resolution: std::time::Duration,
    /// What `/metrics` writes: the server adds its own instruments, the process's other
    /// components (the store, the scheduler, the controllers) theirs.
    pub prometheus: Prometheus,
}

/// Pods tolerate an unreachable node for a minute, not upstream's five: a serverless workload
/// should move quickly, and the node grace period before it already rides out a flaky link.
pub const DEFAULT_TOLERATION_SECONDS: i64 = 60;

/// How often the resource metrics read every node by default: metrics-server's shipped
/// `--metric-resolution`.
pub const DEFAULT_METRICS_RESOLUTION: std::time::Duration = metrics::DEFAULT_RESOLUTION;

impl std::fmt::Debug for ApiServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerConfig").field("service_cidr", &self.service_cidr).finish_non_exhaustive()
    }
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            service_cidr: "127.43.0.0/16".parse().expect("a valid CIDR"),
            authenticator: Authenticator::new(),
            authority: None,
            node_client: None,
            default_toleration_seconds: DEFAULT_TOLERATION_SECONDS,
            encryption: Encryption::default(),
            advertise: None,
            metrics_resolution: DEFAULT_METRICS_RESOLUTION,
            prometheus: Prometheus::default(),
        }
    }
}

/// The API server: a router over the store. Cheap to clone.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    nodes: NodeProxy,
    metrics: metrics::Metrics,
    /// The nodes holding requests for Services at zero, for the custom metrics.
    holders: custom_metrics::Holders,
    authenticator: Authenticator,
    authorizer: Authorizer,
    authority: Option<Arc<Authority>>,
    ready: AtomicBool,
    prometheus: Prometheus,
    instruments: prometheus::Instruments,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer").field("ready", &self.inner.ready.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl ApiServer {
    /// An API server over `store`. Creates the default namespaces if they are missing.
    pub async fn new(store: Store, config: ApiServerConfig) -> Result<ApiServer, Error> {
        let allocator = services::Allocator::new(store.clone(), config.service_cidr);
        let registry = Registry::new(store, allocator, config.default_toleration_seconds, config.encryption);
        let authorizer = Authorizer::new(authz::NodeGraph::follow(registry.clone()));
        let namespaces = resource::find("", "v1", "namespaces").expect("namespaces are served");
        for name in DEFAULT_NAMESPACES {
            let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            match registry.create(namespaces, None, object, WriteOptions::default()).await {
                Ok(_) => tracing::info!(namespace = name, "created a default namespace"),
                Err(Error(e)) if e.reason == Reason::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        bootstrap_dns_service(&registry, config.service_cidr).await?;
        bootstrap_runtime_classes(&registry).await?;
        if let Some(advertise) = config.advertise {
            bootstrap_kubernetes_service(&registry, config.service_cidr, advertise).await;
        }
        let nodes = NodeProxy::new(config.node_client);
        let metrics = metrics::Metrics::start(registry.clone(), nodes.clone(), config.metrics_resolution);
        let instruments =
            prometheus::Instruments::register(&mut config.prometheus.lock().expect("prometheus registry lock"));
        let inner = Inner {
            holders: custom_metrics::Holders::follow(registry.clone()),
            registry,
            nodes,
            metrics,
            authenticator: config.authenticator,
            authorizer,
            authority: config.authority,
            ready: AtomicBool::new(false),
            prometheus: config.prometheus,
            instruments,
        };
        let inner = Arc::new(inner);
        inner.instruments.count_objects(Arc::downgrade(&inner));
        Ok(ApiServer { inner })
    }

    /// Registers the node `name` runs as in this process, so that no one else can register
    /// that name with the join token (see `credentials`). Idempotent.
    pub async fn reserve_node_name(&self, name: &str) -> Result<(), Error> {
        self.inner.authorizer.reserve_node(name);
        credentials::reserve(self, name).await
    }

    /// From now on `/readyz` answers 200.
    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::SeqCst);
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/livez", get(|| async { "ok" }))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            // With and without the trailing slash, as upstream's go-restful route is matched
            // (kr8s and kubernetes_asyncio ask for `/version/`).
            .route("/version", get(version))
            .route("/version/", get(version))
            .route("/cacerts", get(cacerts))
            .route(prometheus::PATH, get(prometheus::serve))
            .route(flotilla_api::TOKEN_REVIEWS_PATH, axum::routing::post(token_review::serve))
            .route(authz::NODE_CREDENTIALS_PATH, axum::routing::post(credentials::node_credentials))
            .fallback(dispatch)
            // Every request that gets past authentication is counted, whichever route serves it.
            .layer(axum::middleware::from_fn_with_state(self.clone(), prometheus::count))
            .with_state(self.clone())
            .layer(Authenticate::layer(self.inner.authenticator.clone()))
    }
}

/// `default/kubernetes` on the first address of the service range, port 443, and its
/// EndpointSlice naming this server at `advertise`, as upstream's API server keeps them (its
/// endpoint reconciler): in-cluster clients reach the API through it. A server of the group
/// that starts adds itself to the slice. (One that is gone stays in it: upstream's lease-based
/// reconciler, which removes it, is not here.)
async fn bootstrap_kubernetes_service(registry: &Registry, range: flotilla_api::Cidr, advertise: std::net::SocketAddr) {
    let services = resource::find("", "v1", "services").expect("services are served");
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": range.first().to_string(), "ports": [
            {"name": "https", "port": 443, "protocol": "TCP", "targetPort": advertise.port()},
        ]},
    });
    match registry.create(services, Some("default"), service, WriteOptions::default()).await {
        Ok(_) => tracing::info!(ip = %range.first(), "created the kubernetes Service"),
        Err(Error(e)) if e.reason == Reason::AlreadyExists => {}
        Err(e) => {
            tracing::warn!(error = %e.0.message, "cannot create default/kubernetes");
            return;
        }
    }
    let slices = resource::find("discovery.k8s.io", "v1", "endpointslices").expect("endpoint slices are served");
    let endpoint = |ip: &str| json!({"addresses": [ip], "conditions": {"ready": true}});
    let slice = |endpoints: Vec<Value>| {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "https", "port": advertise.port(), "protocol": "TCP"}],
        })
    };
    let own = advertise.ip().to_string();
    let written = match registry.get(slices, Some("default"), "kubernetes").await.and_then(|stored| stored.value()) {
        Ok(mut existing) => {
            let mut addresses: Vec<String> = existing["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["addresses"][0].as_str().map(String::from))
                .collect();
            if addresses.contains(&own) && existing["ports"][0]["port"] == advertise.port() {
                return;
            }
            addresses.retain(|a| *a != own);
            addresses.push(own);
            let mut updated = slice(addresses.iter().map(|a| endpoint(a)).collect());
            updated["metadata"] = existing["metadata"].take();
            registry.update(slices, Some("default"), "kubernetes", None, updated, WriteOptions::default()).await
        }
        Err(_) => registry.create(slices, Some("default"), slice(vec![endpoint(&own)]), WriteOptions::default()).await,
    };
    if let Err(e) = written {
        tracing::warn!(error = %e.0.message, "cannot write the kubernetes Service's endpoints");
    }
}

/// `kube-system/kube-dns` on the tenth address of the service range (upstream's convention,
/// 10.96.0.10 for 10.96.0.0/12): every node serves the cluster DNS on its cluster IP. It has no
/// selector, since no pod serves it.
async fn bootstrap_dns_service(registry: &Registry, range: flotilla_api::Cidr) -> Result<(), Error> {
    let Some(ip) = range.hosts().nth(9) else { return Ok(()) };
    let services = resource::find("", "v1", "services").expect("services are served");
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
        "spec": {"clusterIP": ip.to_string(), "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
        ]},
    });
    match registry.create(services, Some("kube-system"), service, WriteOptions::default()).await {
        Ok(_) => tracing::info!(%ip, "created the cluster DNS Service"),
        Err(Error(e)) if e.reason == Reason::AlreadyExists => {}
        // Its address taken by a Service of the user's: DNS lives without its Service.
        Err(e) => tracing::warn!(error = %e.0.message, "cannot create kube-system/kube-dns"),
    }
    Ok(())
}

/// A RuntimeClass for each of Flotilla's node handlers (`wasm`, `oci`), whose
/// `scheduling.nodeSelector` is the label of the nodes that offer it, as a cluster's operator
/// would create them upstream. An operator may change or delete them; they are created once.
async fn bootstrap_runtime_classes(registry: &Registry) -> Result<(), Error> {
    let classes = resource::find("node.k8s.io", "v1", "runtimeclasses").expect("runtime classes are served");
    for handler in [flotilla_api::WASM_RUNTIME_CLASS, "oci"] {
        let mut object =
            serde_json::to_value(flotilla_api::runtime_class_for(handler)).expect("a RuntimeClass serialises");
        object["apiVersion"] = "node.k8s.io/v1".into();
        object["kind"] = "RuntimeClass".into();
        match registry.create(classes, None, object, WriteOptions::default()).await {
            Ok(_) => tracing::info!(handler, "created a runtime class"),
            Err(Error(e)) if e.reason == Reason::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn readyz(State(server): State<ApiServer>) -> Response {
    if server.inner.ready.load(Ordering::SeqCst) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// `/version`, indented as upstream writes it (`WriteRawJSON`).
async fn version() -> Response {
    let body = serde_json::to_vec_pretty(&discovery::version()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The cluster CA, open as upstream's `/version` is: it is public, and a joining agent checks
/// what it gets against the hash in its join token before it trusts it.
async fn cacerts(State(server): State<ApiServer>) -> Response {
    match &server.inner.authority {
        Some(authority) => {
            ([(header::CONTENT_TYPE, "application/x-pem-file")], authority.cert_pem().to_string()).into_response()
        }
        None => Error(request::not_served()).into_response(),
    }
}

async fn dispatch(
    State(server): State<ApiServer>,
    Extension(user): Extension<UserInfo>,
    method: Method,
    uri: Uri,
    mut headers: HeaderMap,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    // Everything past the open paths needs credentials, as with upstream's
    // `--anonymous-auth=false`.
    if user.is_anonymous() {
        return Error(ApiError::new(Reason::Unauthorized, "Unauthorized")).into_response();
    }
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            let err = ApiError::new(
                Reason::RequestEntityTooLarge,
                format!("Request entity too large: limit is {MAX_BODY_BYTES}"),
            );
            return Error(err).into_response();
        }
    };
    // Typed clients send built-in kinds as protobuf: from here on, everything is JSON.
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with(flotilla_api::protobuf::MEDIA_TYPE));
    let body = if protobuf {
        match flotilla_api::protobuf::decode(&body) {
            Ok(object) => {
                headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                axum::body::Bytes::from(serde_json::to_vec(&object).unwrap_or_default())
            }
            Err(e) => return Error(e).into_response(),
        }
    } else {
        body
    };
    // Every request at debug level, as upstream's httplog at -v=3: who asked what, and how it went.
    let started = std::time::Instant::now();
    let logged = tracing::enabled!(tracing::Level::DEBUG).then(|| {
        let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
        (method.clone(), agent.to_string())
    });
    // The OpenAPI documents are served as they are hashed (their ETag), as upstream serves
    // them: not negotiated, so never indented.
    let pretty = request::pretty(&uri, &headers) && !uri.path().starts_with("/openapi");
    let mut response = match route(&server, &user, method, &uri, headers, body, upgrade).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    if pretty {
        response = indented(response).await;
    }
    if let Some((verb, agent)) = logged {
        tracing::debug!(%verb, %uri, status = response.status().as_u16(), elapsed = ?started.elapsed(), %agent, "request");
    }
    response
}

/// A JSON body re-encoded indented, as Go's `MarshalIndent` writes it (two spaces, no trailing
/// newline). Streams (watches) and other media types pass unchanged, as upstream's do.
async fn indented(response: Response) -> Response {
    use axum::body::HttpBody as _;
    // Aggregated discovery's media type is JSON with parameters.
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| t == "application/json" || t.starts_with("application/json;"));
    if !json || response.body().size_hint().exact().is_none() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(compact) = axum::body::to_bytes(body, usize::MAX).await else {
        return Error(ApiError::internal("the response body could not be read")).into_response();
    };
    let mut pretty = Vec::with_capacity(compact.len() * 2);
    let mut from = serde_json::Deserializer::from_slice(&compact);
    if serde_transcode::transcode(&mut from, &mut serde_json::Serializer::pretty(&mut pretty)).is_err() {
        return Response::from_parts(parts, Body::from(compact));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(pretty))
}

async fn route(
    server: &ApiServer,
    user: &UserInfo,
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response, Error> {
    let path = uri.path();
    let query = Query::parse(uri.query());
    let route = authorize(server, user, &method, path, &query).await?;
    if let Some(rest) = path.strip_prefix("/openapi/v3") {
        return openapi_response(rest.trim_start_matches('/'), uri.query());
    }
    if path == "/openapi/v2" {
        return Ok(openapi_v2_response(&headers));
    }
    let Some(route) = route else { return Err(request::not_served().into()) };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).map(str::to_string);
    let aggregated = discovery::aggregated_version(accept.as_deref());
    let only_get = |method: &Method| {
        if *method == Method::GET {
            Ok(())
        } else {
            Err(Error(ApiError::new(Reason::MethodNotAllowed, "discovery is read-only")))
        }
    };
    match route {
        Route::CoreVersions => {
            only_get(&method)?;
            match aggregated {
                Some(v) => discovery_response(&discovery::aggregated_core(v), v),
                None => json_response(StatusCode::OK, &discovery::core_versions(), &[]),
            }
        }
        Route::Groups => {
            only_get(&method)?;
            match aggregated {
                Some(v) => discovery_response(&discovery::aggregated_groups(v), v),
                None => json_response(StatusCode::OK, &discovery::group_list(), &[]),
            }
        }
        Route::Group(name) => {
            only_get(&method)?;
            json_response(StatusCode::OK, &discovery::group(&name).ok_or_else(request::not_served)?, &[])
        }
        Route::Resources { group, .. } if group == custom_metrics::GROUP => {
            only_get(&method)?;
            json_response(StatusCode::OK, &custom_metrics::resource_list(), &[])
        }
        Route::Resources { group, version } => {
            only_get(&method)?;
            json_response(StatusCode::OK, &discovery::resource_list(&group, &version), &[])
        }
        Route::CustomMetric(request) => {
            let inner = &server.inner;
            let (registry, nodes, metrics) = (&inner.registry, &inner.nodes, &inner.metrics);
            custom_metrics::serve(&request, &method, &query, registry, nodes, metrics, &inner.holders).await
        }
        Route::Object(target) => {
            let request = handlers::Request {
                registry: &server.inner.registry,
                nodes: &server.inner.nodes,
                node: user.node_name().map(str::to_string),
                method,
                target,
                query,
                headers,
                body,
                upgrade: std::sync::Mutex::new(upgrade),
                view: None,
            };
            if request.target.resource.conversion.is_some() {
                conversion::handle(request).await
            } else if request.target.resource.stored() {
                handlers::handle(request).await
            } else {
                metrics::serve(&request, &server.inner.metrics).await
            }
        }
    }
}

/// Decides whether `user` may make the request, before anything else is done with it; the
/// resource route it names, if it names one (`None` for the OpenAPI documents, which are served
/// before resources are parsed).
async fn authorize(
    server: &ApiServer,
    user: &UserInfo,
    method: &Method,
    path: &str,
    query: &Query,
) -> Result<Option<Route>, Error> {
    let route = if path.starts_with("/api") { Some(parse_path(path)) } else { None };
    let fields = query.get("fieldSelector").and_then(|text| FieldSelector::parse(text, |_| true).ok());
    let target = match &route {
        Some(Ok(Route::Object(target))) => authz::Request::Resource {
            def: target.resource,
            subresource: target.subresource,
            namespace: target.namespace.as_deref(),
            name: target.name.as_deref(),
            fields: fields.as_ref(),
        },
        Some(Ok(Route::CustomMetric(metric))) => authz::Request::Metric(metric),
        _ => authz::Request::Path(path),
    };
    // A custom metric is got, of one object or of those a selector picks (`pods/*`).
    let named = matches!(&target, authz::Request::Resource { name: Some(_), .. } | authz::Request::Metric(_));
    let verb = match target {
        authz::Request::Path(_) => authz::verb(method, true, false),
        _ => authz::verb(method, named, query.flag("watch")),
    };
    // A stream into a pod opened with a WebSocket GET must also be allowed to `create` it, as
    // a POST is (upstream's `AuthorizePodWebsocketUpgradeCreatePermission`, on since 1.35):
    // reading a pod is no licence to run commands in it.
    let streams = matches!(
        target,
        authz::Request::Resource {
            subresource: Some(Subresource::Exec | Subresource::Attach | Subresource::PortForward),
            ..
        }
    );
    let mut attributes = authz::Attributes { user, verb, target };
    server.inner.authorizer.authorize(&attributes).await?;
    if streams && verb == "get" {
        attributes.verb = "create";
        server.inner.authorizer.authorize(&attributes).await?;
    }
    route.transpose()
}

fn discovery_response(document: &Value, version: &str) -> Result<Response, Error> {
    let mut response = json_response(StatusCode::OK, document, &[])?;
    if let Ok(content_type) = HeaderValue::from_str(&discovery::aggregated_content_type(version)) {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    }
    Ok(response)
}

fn openapi_response(path: &str, query: Option<&str>) -> Result<Response, Error> {
    if path.is_empty() {
        return json_response(StatusCode::OK, &openapi::root(), &[]);
    }
    let document = openapi::document_at(path).ok_or_else(request::not_served)?;
    let mut response =
        (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], document.json.clone()).into_response();
    // A request that names the current hash may be cached for good, as upstream allows.
    let cache = if Query::parse(query).get("hash") == Some(document.hash.as_str()) {
        "public, immutable"
    } else {
        "no-cache, private"
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", document.hash)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// `/openapi/v2`, as protobuf when the client asks for it (kubectl does), else as JSON.
fn openapi_v2_response(headers: &HeaderMap) -> Response {
    let document = openapi::v2::document();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let (content_type, body) = if openapi::v2::wants_protobuf(accept) {
        (openapi::v2::PROTOBUF, document.protobuf.clone())
    } else {
        ("application/json", document.json.clone())
    };
    let mut response =
        (StatusCode::OK, [(header::CONTENT_TYPE, content_type), (header::VARY, "Accept")], body).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", document.hash)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// The resource definitions, for callers that need names (the CLI, tests).
pub fn served_resources() -> &'static [ResourceDef] {
    resource::resources()
}

#[cfg(test)]
mod tests;
