//! What a node may do, as upstream's Node authorizer and NodeRestriction admission let it
//! (with `AuthorizeNodeWithSelectors`, on by default since 1.32). A node identity
//! (`system:node:<name>` in `system:nodes`, a certificate issued when it joined) reads the Nodes
//! (it is also the cluster's kube-proxy and pod network agent), the pods bound to it and only the Secrets and ConfigMaps those pods use; writes its
//! own Node and Lease, the status of its own pods, and Events; and nothing else. A stolen edge
//! node therefore gives up what its own pods could see, not the cluster.
//!
//! The authorizer ([`authorize`]) decides by the request alone and, for Secrets, ConfigMaps and
//! pods, by the [`NodeGraph`]; the admission ([`admit`]) checks what only the objects show (which
//! node a pod is bound to, which Node a write names).

use flotilla_api::ApiError;
use flotilla_api::resource::Subresource;
use serde_json::Value;

use super::graph::{NodeGraph, Ref, RefKind};
use super::{Attributes, Decision, Request};

fn no(reason: impl Into<String>) -> Decision {
    Decision::NoOpinion(reason.into())
}

/// The Node authorizer: an opinion on node identities only.
pub(crate) async fn authorize(graph: &NodeGraph, attrs: &Attributes<'_>) -> Decision {
    let Some(node) = attrs.user.node_name() else { return no("") };
    if node.is_empty() {
        return no(format!("unknown node for user {:?}", attrs.user.name));
    }
    let Request::Resource { def, subresource, namespace, name, fields } = &attrs.target else { return no("") };
    // A node whose registration was deleted is revoked, its certificate with it.
    if !graph.registered(node).await {
        let registration = crate::credentials::registration(node);
        return no(format!("node '{node}' is not registered: its registration kube-system/{registration} is gone"));
    }
    let verb = attrs.verb;
    match (def.group, def.plural) {
        ("", "secrets" | "configmaps") => {
            if !matches!(verb, "get" | "list" | "watch") {
                return no("can only read resources of this type");
            }
            if subresource.is_some() {
                return no("cannot read subresource");
            }
            let (Some(namespace), Some(name)) = (namespace, name.or(fields.and_then(|f| f.exact("metadata.name"))))
            else {
                return no("No Object name found");
            };
            let kind = if def.plural == "secrets" { RefKind::Secret } else { RefKind::ConfigMap };
            let wanted = Ref { kind, namespace: namespace.to_string(), name: name.to_string() };
            if graph.related(node, &wanted).await {
                Decision::Allow
            } else {
                no(format!("no relationship found between node '{node}' and this object"))
            }
        }
        ("coordination.k8s.io", "leases") => {
            if !matches!(verb, "get" | "create" | "update" | "patch" | "delete") {
                return no("can only get, create, update, patch, or delete a node lease");
            }
            if *namespace != Some("kube-node-lease") {
                return no("can only access leases in the \"kube-node-lease\" system namespace");
            }
            // A create names its lease in the body: the admission checks it.
            if verb != "create" && *name != Some(node) {
                return no("can only access node lease with the same name as the requesting node");
            }
            Decision::Allow
        }
        ("", "nodes") => match (verb, subresource) {
            ("create" | "update" | "patch", None) | ("update" | "patch", Some(Subresource::Status)) => Decision::Allow,
            // Every Node, as upstream's `system:node-proxier` (kube-proxy) and a CNI's agent
            // (flannel's ClusterRole) read them: the node routes to the others' pod ranges.
            // (The kubelet's own `system:node` rule narrows to its own Node since 1.32; this
            // node is both.)
            ("get" | "list" | "watch", None) => Decision::Allow,
            _ => no(""),
        },
        ("", "pods") => match (verb, subresource) {
            ("get", None) => match (namespace, name) {
                (Some(namespace), Some(name)) if graph.pod_on(node, namespace, name).await => Decision::Allow,
                _ => no(format!("no relationship found between node '{node}' and this object")),
            },
            ("list" | "watch", None) => {
                if fields.and_then(|f| f.exact("spec.nodeName")) == Some(node) {
                    Decision::Allow
                } else {
                    no("can only list/watch pods with spec.nodeName field selector")
                }
            }
            // What the admission then narrows to the node's own pods.
            ("create" | "delete", None)
            | ("update" | "patch", Some(Subresource::Status))
            | ("create", Some(Subresource::Eviction)) => Decision::Allow,
            _ => no(""),
        },
        // The rest of upstream's `system:node` rules: Events, and reading Services and
        // Endpoints. Flotilla's node also proxies Services (kube-proxy's
        // `system:node-proxier`), so it reads EndpointSlices too.
        ("", "events") if matches!(verb, "create" | "update" | "patch") => Decision::Allow,
        ("events.k8s.io", "events") if matches!(verb, "create" | "update" | "patch") => Decision::Allow,
        ("", "services") | ("discovery.k8s.io", "endpointslices") if matches!(verb, "get" | "list" | "watch") => {
            Decision::Allow
        }
        ("", "endpoints") if verb == "get" => Decision::Allow,
        // Its activator holds connections to the Services that HPAs scale from zero.
        ("autoscaling", "horizontalpodautoscalers") if matches!(verb, "get" | "list" | "watch") => Decision::Allow,
        _ => no(""),
    }
}

/// The operation an admission sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Create,
    Update,
    Delete,
}

/// NodeRestriction: what the objects of a node's write must say. `old` is the object before
/// (update, delete), `new` after (create, update).
pub(crate) fn admit(
    node: &str,
    operation: Operation,
    def: &flotilla_api::resource::ResourceDef,
    subresource: Option<Subresource>,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<(), ApiError> {
    let object = new.or(old);
    let name = object.and_then(|o| o.pointer("/metadata/name")).and_then(Value::as_str).unwrap_or("Unknown");
    let refuse = |why: String| Err(ApiError::forbidden(def.group, def.plural, name, why));
    fn bound_to(pod: Option<&Value>) -> Option<&str> {
        pod.and_then(|p| p.pointer("/spec/nodeName")).and_then(Value::as_str)
    }
    match (def.group, def.plural) {
        ("", "pods") => match (operation, subresource) {
            (Operation::Create, None) => {
                let mirror =
                    object.and_then(|o| o.pointer("/metadata/annotations/kubernetes.io~1config.mirror")).is_some();
                if !mirror {
                    return refuse(format!(
                        "pod does not have \"kubernetes.io/config.mirror\" annotation, node {node:?} can only create mirror pods"
                    ));
                }
                refuse(format!("node {node:?} can not create mirror pods: this cluster runs no static pods"))
            }
            (Operation::Delete, None) if bound_to(old) != Some(node) => {
                refuse(format!("node {node:?} can only delete pods with spec.nodeName set to itself"))
            }
            (Operation::Update, Some(Subresource::Status)) => {
                if bound_to(old) != Some(node) {
                    return refuse(format!(
                        "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
                    ));
                }
                if old.and_then(|o| o.pointer("/metadata/labels")) != new.and_then(|o| o.pointer("/metadata/labels")) {
                    return refuse(format!("node {node:?} cannot update labels through pod status"));
                }
                Ok(())
            }
            (Operation::Create, Some(Subresource::Eviction)) if bound_to(old) != Some(node) => {
                refuse(format!("node {node} can only evict pods with spec.nodeName set to itself"))
            }
            _ => Ok(()),
        },
        ("", "nodes") => {
            if name != node {
                return refuse(format!("node {node:?} is not allowed to modify node {name:?}"));
            }
            let labels =
                |o: Option<&Value>| o.and_then(|o| o.pointer("/metadata/labels")).and_then(Value::as_object).cloned();
            let (before, after) = (labels(old).unwrap_or_default(), labels(new).unwrap_or_default());
            let mut forbidden: Vec<&str> = after
                .iter()
                .filter(|(key, value)| before.get(*key) != Some(*value))
                .map(|(key, _)| key.as_str())
                .chain(before.keys().filter(|key| !after.contains_key(*key)).map(String::as_str))
                .filter(|key| !node_may_set_label(key))
                .collect();
            forbidden.sort_unstable();
            forbidden.dedup();
            if !forbidden.is_empty() {
                let labels = forbidden.join(", ");
                return refuse(match operation {
                    Operation::Create => format!("node {node:?} is not allowed to set the following labels: {labels}"),
                    _ => format!("is not allowed to modify labels: {labels}"),
                });
            }
            let taints = |o: Option<&Value>| o.and_then(|o| o.pointer("/spec/taints")).cloned();
            if operation == Operation::Update && taints(old) != taints(new) {
                return refuse(format!("node {node:?} is not allowed to modify taints"));
            }
            Ok(())
        }
        ("coordination.k8s.io", "leases") => {
            let namespace = object.and_then(|o| o.pointer("/metadata/namespace")).and_then(Value::as_str);
            if namespace != Some("kube-node-lease") {
                return refuse("can only access leases in the \"kube-node-lease\" system namespace".into());
            }
            if name != node {
                return refuse("can only access node lease with the same name as the requesting node".into());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Upstream's `IsKubeletLabel`, negated: labels in the `kubernetes.io` and `k8s.io` namespaces are
/// the cluster's to set, but for the few a kubelet sets itself; `node-restriction.kubernetes.io`
/// never.
fn node_may_set_label(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else { return true };
    let under = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
    if under("node-restriction.kubernetes.io") {
        return false;
    }
    if !under("kubernetes.io") && !under("k8s.io") {
        return true;
    }
    const KUBELET_LABELS: [&str; 11] = [
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    KUBELET_LABELS.contains(&key) || under("kubelet.kubernetes.io") || under("node.kubernetes.io")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn def(group: &str, plural: &str) -> &'static flotilla_api::resource::ResourceDef {
        flotilla_api::resource::find(group, "v1", plural).unwrap()
    }

    #[test]
    fn a_node_writes_only_its_own_node_pods_and_lease() {
        let nodes = def("", "nodes");
        let n1 = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}}});
        assert!(admit("n1", Operation::Create, nodes, None, None, Some(&n1)).is_ok());
        let err = admit("n2", Operation::Update, nodes, None, Some(&n1), Some(&n1)).unwrap_err();
        assert_eq!(err.message, "nodes \"n1\" is forbidden: node \"n2\" is not allowed to modify node \"n1\"");
        let promoted = json!({"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}}});
        let err = admit("n1", Operation::Update, nodes, None, Some(&n1), Some(&promoted)).unwrap_err();
        assert_eq!(
            err.message,
            "nodes \"n1\" is forbidden: is not allowed to modify labels: node-role.kubernetes.io/control-plane"
        );
        let own_label = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "runtime.flotilla.dev/wasm": "true"}}});
        assert!(admit("n1", Operation::Update, nodes, None, Some(&n1), Some(&own_label)).is_ok());
        let tainted =
            json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}}, "spec": {"taints": []}});
        assert!(admit("n1", Operation::Update, nodes, None, Some(&n1), Some(&tainted)).is_err());

        let pods = def("", "pods");
        let mine = json!({"metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"nodeName": "n1"}});
        let theirs = json!({"metadata": {"name": "q"}, "spec": {"nodeName": "n2"}});
        assert!(admit("n1", Operation::Update, pods, Some(Subresource::Status), Some(&mine), Some(&mine)).is_ok());
        let err = admit("n1", Operation::Update, pods, Some(Subresource::Status), Some(&theirs), Some(&theirs));
        assert!(
            err.unwrap_err().message.contains("can only update pod status for pods with spec.nodeName set to itself")
        );
        let relabelled = json!({"metadata": {"name": "p", "labels": {"a": "c"}}, "spec": {"nodeName": "n1"}});
        assert!(
            admit("n1", Operation::Update, pods, Some(Subresource::Status), Some(&mine), Some(&relabelled)).is_err()
        );
        assert!(admit("n1", Operation::Delete, pods, None, Some(&mine), None).is_ok());
        assert!(admit("n1", Operation::Delete, pods, None, Some(&theirs), None).is_err());
        let err = admit("n1", Operation::Create, pods, None, None, Some(&mine)).unwrap_err();
        assert!(err.message.contains("can only create mirror pods"), "{}", err.message);

        let leases = def("coordination.k8s.io", "leases");
        let lease = |ns: &str, name: &str| json!({"metadata": {"namespace": ns, "name": name}});
        assert!(admit("n1", Operation::Create, leases, None, None, Some(&lease("kube-node-lease", "n1"))).is_ok());
        assert!(admit("n1", Operation::Create, leases, None, None, Some(&lease("kube-node-lease", "n2"))).is_err());
        assert!(admit("n1", Operation::Create, leases, None, None, Some(&lease("default", "n1"))).is_err());
        // Events and the rest are the authorizer's to decide.
        assert!(admit("n1", Operation::Create, def("", "events"), None, None, Some(&json!({}))).is_ok());
    }

    #[test]
    fn kubelet_labels_are_the_only_kubernetes_io_labels_a_node_sets() {
        for ok in [
            "kubernetes.io/hostname",
            "node.kubernetes.io/instance-type",
            "x.kubelet.kubernetes.io/a",
            "app",
            "example.com/x",
        ] {
            assert!(node_may_set_label(ok), "{ok}");
        }
        for refused in
            ["node-role.kubernetes.io/master", "kubernetes.io/role", "a.node-restriction.kubernetes.io/b", "k8s.io/x"]
        {
            assert!(!node_may_set_label(refused), "{refused}");
        }
    }
}
