//! Authorization: what an authenticated identity may do, decided before a request reaches its
//! handler, as upstream's authorizer chain decides it. The chain is a list of authorizers each
//! of which allows a request or has no opinion (with a reason); a request none allows is
//! refused with upstream's 403 message, the reasons appended. RBAC joins the chain as one more
//! authorizer.
//!
//! Today's chain:
//! 1. `system:masters` may do anything (the admin's certificate and token).
//! 2. The control plane's own loops (`system:kube-scheduler`, `system:kube-controller-manager`)
//!    may do anything: until RBAC, there is nothing finer to give them.
//! 3. Every authenticated identity may read discovery, OpenAPI, health and version;
//!    `system:monitoring` (the metrics token) may read `/metrics` too.
//! 4. Nodes get what upstream's Node authorizer gives them ([`node`]): their own Node and
//!    Lease, the pods bound to them, and only the Secrets and ConfigMaps those pods use.
//! 5. Holders of the join token may ask for a node's credentials, nothing more (and a node for
//!    its own again, to renew them).
//! 6. Nodes may ask who a bearer token names (a `TokenReview`), as upstream's `system:node`
//!    role lets them, to authenticate those who call them.

pub(crate) mod graph;
pub(crate) mod node;

use flotilla_api::resource::{ResourceDef, Subresource};
use flotilla_api::selector::FieldSelector;
use flotilla_api::{ApiError, Reason};
use flotilla_auth::UserInfo;
use flotilla_auth::identity::{BOOTSTRAPPERS, CONTROLLER_MANAGER, MASTERS, MONITORING, SCHEDULER};

pub(crate) use self::graph::NodeGraph;

/// The path joining nodes ask for their credentials at.
pub(crate) const NODE_CREDENTIALS_PATH: &str = "/flotilla/v1/node-credentials";

/// What a request asks to do, as upstream's `authorizer.Attributes` has it.
#[derive(Debug)]
pub(crate) struct Attributes<'a> {
    pub(crate) user: &'a UserInfo,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub(crate) verb: &'static str,
    pub(crate) target: Request<'a>,
}

#[derive(Debug)]
pub(crate) enum Request<'a> {
    Resource {
        def: &'static ResourceDef,
        subresource: Option<Subresource>,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
        /// The request's field selector, for list and watch.
        fields: Option<&'a FieldSelector>,
    },
    /// A custom metric of objects (`custom.metrics.k8s.io`, an aggregated API upstream).
    Metric(&'a crate::custom_metrics::MetricRequest),
    /// A path that names no resource (discovery, OpenAPI, health).
    Path(&'a str),
}

/// One authorizer's answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow,
    /// Neither allowed nor denied: the next authorizer decides. The reason (maybe empty) is
    /// told to the client if no one allows the request.
    NoOpinion(String),
}

/// The chain.
#[derive(Clone, Debug)]
pub(crate) struct Authorizer {
    graph: NodeGraph,
}

impl Authorizer {
    pub(crate) fn new(graph: NodeGraph) -> Authorizer {
        Authorizer { graph }
    }

    /// The server's own node: registered whatever its registration Secret says.
    pub(crate) fn reserve_node(&self, name: &str) {
        self.graph.reserve(name);
    }

    pub(crate) async fn authorize(&self, attrs: &Attributes<'_>) -> Result<(), ApiError> {
        let mut reasons = Vec::new();
        for decision in
            [privileged(attrs), discovery(attrs), node::authorize(&self.graph, attrs).await, bootstrap(attrs)]
        {
            match decision {
                Decision::Allow => return Ok(()),
                Decision::NoOpinion(reason) if !reason.is_empty() => reasons.push(reason),
                Decision::NoOpinion(_) => {}
            }
        }
        Err(forbidden(attrs, &reasons.join("\n")))
    }
}

fn privileged(attrs: &Attributes<'_>) -> Decision {
    let user = attrs.user;
    if user.in_group(MASTERS) || user.name == SCHEDULER || user.name == CONTROLLER_MANAGER {
        Decision::Allow
    } else {
        Decision::NoOpinion(String::new())
    }
}

/// Upstream's `system:discovery` and `system:public-info-viewer` roles: any authenticated
/// identity may read what the API serves and whether it is well; and its `system:monitoring`
/// role: that group may read the metrics.
fn discovery(attrs: &Attributes<'_>) -> Decision {
    let Request::Path(path) = attrs.target else { return Decision::NoOpinion(String::new()) };
    let under = |prefix: &str| path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
    let readable = ["/api", "/apis", "/openapi", "/version", "/healthz", "/livez", "/readyz"].into_iter().any(under)
        || (under(crate::prometheus::PATH) && attrs.user.in_group(MONITORING));
    if readable && attrs.verb == "get" && !attrs.user.is_anonymous() {
        Decision::Allow
    } else {
        Decision::NoOpinion(String::new())
    }
}

/// The join token's holders may ask for a node's credentials, and a node for its own again;
/// a node may review tokens.
fn bootstrap(attrs: &Attributes<'_>) -> Decision {
    let user = attrs.user;
    match attrs.target {
        Request::Path(NODE_CREDENTIALS_PATH)
            if attrs.verb == "create" && (user.in_group(BOOTSTRAPPERS) || user.node_name().is_some()) =>
        {
            Decision::Allow
        }
        Request::Path(flotilla_api::TOKEN_REVIEWS_PATH) if attrs.verb == "create" && user.node_name().is_some() => {
            Decision::Allow
        }
        _ => Decision::NoOpinion(String::new()),
    }
}

/// Upstream's 403: `secrets "s1" is forbidden: User "system:node:n1" cannot get resource
/// "secrets" in API group "" in the namespace "default": <reason>`.
pub(crate) fn forbidden(attrs: &Attributes<'_>, reason: &str) -> ApiError {
    let user = &attrs.user.name;
    let verb = attrs.verb;
    let (mut message, group, plural, name) = match &attrs.target {
        Request::Path(path) => {
            (format!("User {user:?} cannot {verb} path {path:?}"), String::new(), String::new(), String::new())
        }
        Request::Resource { def, subresource, namespace, name, .. } => {
            let resource = match subresource {
                Some(sub) => format!("{}/{}", def.plural, sub.name()),
                None => def.plural.to_string(),
            };
            let scope = match namespace {
                Some(ns) => format!("in the namespace {ns:?}"),
                None => "at the cluster scope".into(),
            };
            let message =
                format!("User {user:?} cannot {verb} resource {resource:?} in API group {:?} {scope}", def.group);
            (message, def.group.to_string(), def.plural.to_string(), name.unwrap_or_default().to_string())
        }
        Request::Metric(metric) => {
            let scope = match &metric.namespace {
                Some(ns) => format!("in the namespace {ns:?}"),
                None => "at the cluster scope".into(),
            };
            let (group, resource) = (crate::custom_metrics::GROUP, format!("{}/{}", metric.resource, metric.metric));
            let message = format!("User {user:?} cannot {verb} resource {resource:?} in API group {group:?} {scope}");
            (message, group.to_string(), metric.resource.clone(), metric.name.clone())
        }
    };
    if !reason.is_empty() {
        message = format!("{message}: {reason}");
    }
    let qualified = flotilla_api::error::qualified(&group, &plural);
    let full = match (plural.is_empty(), name.is_empty()) {
        (true, _) => format!("forbidden: {message}"),
        (false, true) => format!("{qualified} is forbidden: {message}"),
        (false, false) => format!("{qualified} {name:?} is forbidden: {message}"),
    };
    let err = ApiError::new(Reason::Forbidden, full);
    if plural.is_empty() { err } else { err.about(&group, &plural, &name) }
}

/// The verb of a request, as upstream's `RequestInfo` names it.
pub(crate) fn verb(method: &http::Method, named: bool, watch: bool) -> &'static str {
    match *method {
        http::Method::GET | http::Method::HEAD if named => "get",
        http::Method::GET | http::Method::HEAD if watch => "watch",
        http::Method::GET | http::Method::HEAD => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_upstreams() {
        let user = UserInfo::node("n1");
        let secrets = flotilla_api::resource::find("", "v1", "secrets").unwrap();
        let get = Attributes {
            user: &user,
            verb: "get",
            target: Request::Resource {
                def: secrets,
                subresource: None,
                namespace: Some("default"),
                name: Some("s1"),
                fields: None,
            },
        };
        let err = forbidden(&get, "no relationship found between node 'n1' and this object");
        assert_eq!(
            err.message,
            "secrets \"s1\" is forbidden: User \"system:node:n1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'n1' and this object"
        );
        let nodes = flotilla_api::resource::find("", "v1", "nodes").unwrap();
        let list = Attributes {
            user: &user,
            verb: "list",
            target: Request::Resource { def: nodes, subresource: None, namespace: None, name: None, fields: None },
        };
        assert_eq!(
            forbidden(&list, "").message,
            "nodes is forbidden: User \"system:node:n1\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        );
        let anonymous = UserInfo::anonymous();
        let path = Attributes { user: &anonymous, verb: "get", target: Request::Path("/api") };
        assert_eq!(forbidden(&path, "").message, "forbidden: User \"system:anonymous\" cannot get path \"/api\"");
    }
}
