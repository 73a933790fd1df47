//! The resources the API serves: their names, scope, subresources, and the behaviour behind them.

use crate::kinds::{self, KindOps};

/// One served resource, as discovery describes it.
#[derive(Debug)]
pub struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// `all` for the kinds `kubectl get all` shows.
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Whether `metadata.generation` counts spec changes (for controllers' `observedGeneration`).
    pub generation: bool,
    /// Fields a field selector may name besides `metadata.name` and `metadata.namespace`.
    pub field_selectors: &'static [&'static str],
    /// What the resource answers: [`VERBS`] for the stored kinds; `get` and `list` for those
    /// the server computes (the resource metrics).
    pub verbs: &'static [&'static str],
    /// For a version served but stored as another (autoscaling/v1 HPAs, stored as v2): how
    /// objects are turned from one to the other. `None`: stored as served.
    pub conversion: Option<&'static Conversion>,
    pub ops: &'static dyn KindOps,
}

/// How a version served over another one's storage is converted, as upstream's API server
/// converts through its internal version.
#[derive(Debug)]
pub struct Conversion {
    /// The version the objects are stored in, in the same group.
    pub stored_version: &'static str,
    /// A stored object as this version shows it.
    pub from_stored: fn(serde_json::Value) -> serde_json::Value,
    /// An object of this version as stored; `stored` is what is stored now, whose fields this
    /// version cannot express are kept.
    pub to_stored: fn(serde_json::Value, Option<&serde_json::Value>) -> serde_json::Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    /// `…/status`: get, update and patch the status alone.
    Status,
    /// `…/scale`: an `autoscaling/v1` Scale view of `spec.replicas`.
    Scale,
    /// `pods/log`: the containers' logs.
    Log,
    /// `pods/binding`: assign a pod to a node.
    Binding,
    /// `pods/eviction`: delete a pod, respecting disruption budgets.
    Eviction,
    /// `namespaces/finalize`: the namespace controller's way to clear `spec.finalizers`.
    Finalize,
    /// `pods/exec`, `pods/attach`, `pods/portforward`: streams into a running container, which
    /// upstream opens with an upgraded connection.
    Exec,
    Attach,
    PortForward,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Log => "log",
            Subresource::Binding => "binding",
            Subresource::Eviction => "eviction",
            Subresource::Finalize => "finalize",
            Subresource::Exec => "exec",
            Subresource::Attach => "attach",
            Subresource::PortForward => "portforward",
        }
    }

    /// The group, version and kind of what the subresource reads or writes; `None` means the
    /// parent's own kind.
    pub fn kind(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Subresource::Status | Subresource::Log | Subresource::Finalize => None,
            Subresource::Scale => Some(("autoscaling", "v1", "Scale")),
            Subresource::Binding => Some(("", "v1", "Binding")),
            Subresource::Eviction => Some(("policy", "v1", "Eviction")),
            Subresource::Exec => Some(("", "v1", "PodExecOptions")),
            Subresource::Attach => Some(("", "v1", "PodAttachOptions")),
            Subresource::PortForward => Some(("", "v1", "PodPortForwardOptions")),
        }
    }

    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Subresource::Status | Subresource::Scale => &["get", "patch", "update"],
            Subresource::Log => &["get"],
            Subresource::Binding | Subresource::Eviction => &["create"],
            Subresource::Finalize => &["update"],
            Subresource::Exec | Subresource::Attach | Subresource::PortForward => &["create", "get"],
        }
    }
}

/// What a stored kind supports: every verb.
pub const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

impl ResourceDef {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    /// Whether its objects are kept in the store, rather than computed when asked for.
    pub fn stored(&self) -> bool {
        self.verbs.contains(&"create")
    }

    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// Whether a field selector may name `field`.
    pub fn selectable(&self, field: &str) -> bool {
        field == "metadata.name"
            || (self.namespaced && field == "metadata.namespace")
            || self.field_selectors.contains(&field)
    }

    /// The key prefix of this resource's objects in the store: `/registry/<plural>/`, the layout
    /// kube-apiserver uses in etcd.
    pub fn key_prefix(&self) -> String {
        format!("/registry/{}/", self.plural)
    }
}

/// Every served resource, in discovery order.
pub fn resources() -> &'static [ResourceDef] {
    kinds::RESOURCES
}

/// The resource served at `group`/`version` under `plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    resources().iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of a kind, for objects that name their `apiVersion` and `kind`.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static ResourceDef> {
    resources().iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The served group/versions, in discovery order: `("", "v1")` first, then the named groups.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in resources() {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}
