//! Per-kind behaviour: upstream's defaults, validation and table columns for every served kind,
//! behind the object-safe [`KindOps`] that the API server drives with JSON.

mod apps;
mod autoscaling;
mod batch;
mod coordination;
mod core;
mod discovery;
pub mod metrics;
mod node;
mod pod;
mod service;

pub use autoscaling::scaled_from_zero;
pub use core::{NAMESPACE_NAME_LABEL, SERVING_CERT_ANNOTATION};
pub use node::runtime_class_for;
pub use pod::{WASM_RUNTIME_CLASS, runtime_class, runtime_label};

use std::fmt;
use std::marker::PhantomData;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, ReplicationController, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, FieldError, Result};
use crate::resource::{ResourceDef, Subresource};
use crate::table::Column;
use crate::validation::{self, Check};

/// What to do with fields the schema does not know (`?fieldValidation=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Refuse the request.
    Strict,
    /// Drop them and say so in a `Warning` header (the default since Kubernetes 1.23).
    #[default]
    Warn,
    /// Drop them silently.
    Ignore,
}

impl FieldValidation {
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "Strict" => Ok(FieldValidation::Strict),
            "Warn" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other:?}, valid values are: \"Ignore\", \"Warn\", \"Strict\""
            ))),
        }
    }
}

/// An object ready to store, and the warnings to send with the answer.
#[derive(Debug)]
pub struct Admitted {
    pub object: Value,
    pub warnings: Vec<String>,
}

/// A kind's behaviour, over JSON, so that the API server can hold every kind in one table.
pub trait KindOps: Send + Sync + fmt::Debug {
    /// Decodes `object`, fills in upstream's defaults, and validates it (and, for an update,
    /// the change from `old`). `duplicates` are the fields the body gave twice
    /// ([`crate::json::parse`]), refused or warned of with the unknown ones.
    fn admit(
        &self,
        object: Value,
        old: Option<&Value>,
        validation: FieldValidation,
        duplicates: &[String],
    ) -> Result<Admitted>;

    /// The kind's Table columns, in order (those with `priority` 1 only under `-o wide`).
    fn columns(&self) -> Vec<Column>;

    /// One object's Table cells, one per column.
    fn cells(&self, object: &Value, now: Timestamp) -> Result<Vec<Value>>;

    /// The kind's JSON schema, generated from its type.
    fn schema(&self, generator: &mut SchemaGenerator) -> Schema;
}

/// Sets a struct-valued field that k8s-openapi holds as an `Option` but upstream's Go type holds
/// by value, so that it is written even when empty, as Go writes it (`"status": {}`, with the
/// status's own non-`omitempty` fields: `replicas: 0`, …). Clients rely on it: the official
/// Python client reads `deployment.status.ready_replicas` straight after a create.
pub(crate) fn always_written<T: Default>(field: &mut Option<T>) {
    field.get_or_insert_with(T::default);
}

/// What a kind adds to the generic behaviour. Implemented for the k8s-openapi types.
pub trait Kind:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + JsonSchema
    + Send
    + Sync
    + 'static
{
    /// Upstream's rule for this kind's names.
    fn name_check(name: &str) -> Check {
        validation::dns1123_subdomain(name)
    }

    fn set_defaults(&mut self) {}

    fn validate(&self, _errors: &mut Vec<FieldError>) {}

    fn validate_update(&self, _old: &Self, _errors: &mut Vec<FieldError>) {}

    fn columns() -> Vec<Column>;

    fn cells(&self, now: Timestamp) -> Vec<Value>;
}

/// Empty lists and maps in metadata are left out, as upstream's `omitempty` leaves them out: a
/// patch that takes the last finalizer off leaves no `finalizers: []` behind.
fn omit_empty(meta: &mut ObjectMeta) {
    if meta.finalizers.as_ref().is_some_and(Vec::is_empty) {
        meta.finalizers = None;
    }
    if meta.owner_references.as_ref().is_some_and(Vec::is_empty) {
        meta.owner_references = None;
    }
    if meta.labels.as_ref().is_some_and(|l| l.is_empty()) {
        meta.labels = None;
    }
    if meta.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        meta.annotations = None;
    }
}

/// The [`KindOps`] of a typed kind.
pub struct Typed<T>(PhantomData<fn() -> T>);

impl<T> Typed<T> {
    pub const OPS: Typed<T> = Typed(PhantomData);
}

impl<T: Kind> fmt::Debug for Typed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Typed<{}>", T::KIND)
    }
}

impl<T: Kind> KindOps for Typed<T> {
    fn admit(
        &self,
        object: Value,
        old: Option<&Value>,
        validation: FieldValidation,
        duplicates: &[String],
    ) -> Result<Admitted> {
        let (mut new, unknown) = decode::<T>(object, true)?;
        let problems = || {
            let duplicates = duplicates.iter().map(|f| format!("duplicate field {f:?}"));
            duplicates.chain(unknown.iter().map(|f| format!("unknown field {f:?}"))).collect::<Vec<_>>()
        };
        let warnings = match validation {
            FieldValidation::Strict if !unknown.is_empty() || !duplicates.is_empty() => {
                return Err(cannot_handle::<T>(format!("strict decoding error: {}", problems().join(", "))));
            }
            FieldValidation::Warn => problems(),
            _ => Vec::new(),
        };
        new.set_defaults();
        omit_empty(new.metadata_mut());
        let mut errors = Vec::new();
        validation::object_meta(new.metadata(), T::name_check, &mut errors);
        new.validate(&mut errors);
        if let Some(old) = old {
            new.validate_update(&decode_stored::<T>(old)?, &mut errors);
        }
        if !errors.is_empty() {
            let name = new.metadata().name.clone().unwrap_or_default();
            return Err(ApiError::invalid(T::GROUP, T::KIND, &name, errors));
        }
        let object = serde_json::to_value(&new).map_err(|e| ApiError::internal(format!("encode {}: {e}", T::KIND)))?;
        Ok(Admitted { object, warnings })
    }

    fn columns(&self) -> Vec<Column> {
        T::columns()
    }

    fn cells(&self, object: &Value, now: Timestamp) -> Result<Vec<Value>> {
        Ok(decode_stored::<T>(object)?.cells(now))
    }

    fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        generator.subschema_for::<T>()
    }
}

/// Decodes a JSON object into a kind, returning the paths of fields the kind does not know.
/// `apiVersion` and `kind` are filled in when missing, as upstream decodes into the URL's kind.
pub fn decode<T: k8s_openapi::Resource + DeserializeOwned>(
    mut object: Value,
    track_unknown: bool,
) -> Result<(T, Vec<String>)> {
    if let Some(map) = object.as_object_mut() {
        map.entry("apiVersion").or_insert_with(|| Value::String(T::API_VERSION.to_string()));
        map.entry("kind").or_insert_with(|| Value::String(T::KIND.to_string()));
    }
    let mut unknown = Vec::new();
    let decoded = if track_unknown {
        serde_ignored::deserialize(object, |path| unknown.push(field_path(&path)))
    } else {
        T::deserialize(object)
    };
    decoded.map(|t| (t, unknown)).map_err(|e| cannot_handle::<T>(e.to_string()))
}

/// Decodes an object the server wrote (so it names its `apiVersion` and `kind`) without copying
/// it first: every update does this with the object it replaces, every table row with its object.
fn decode_stored<T: k8s_openapi::Resource + DeserializeOwned>(object: &Value) -> Result<T> {
    let typed = object.get("apiVersion").is_some() && object.get("kind").is_some();
    if !typed {
        return decode::<T>(object.clone(), false).map(|(t, _)| t);
    }
    T::deserialize(object).map_err(|e| cannot_handle::<T>(e.to_string()))
}

fn cannot_handle<T: k8s_openapi::Resource>(why: String) -> ApiError {
    ApiError::bad_request(format!("{} in version {:?} cannot be handled as a {}: {why}", T::KIND, T::VERSION, T::KIND))
}

/// `spec.containers[0].foo`, as upstream names fields.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

const ALL: &[&str] = &["all"];
use Subresource::{Attach, Binding, Eviction, Exec, Finalize, Log, PortForward, Scale, Status};

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

macro_rules! resource {
    ($ty:ty, $plural:literal, $singular:literal, namespaced: $ns:literal, short: $short:expr, categories: $cat:expr, sub: $sub:expr, generation: $gen:literal, fields: $fields:expr) => {
        ResourceDef {
            group: <$ty as k8s_openapi::Resource>::GROUP,
            version: <$ty as k8s_openapi::Resource>::VERSION,
            kind: <$ty as k8s_openapi::Resource>::KIND,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            subresources: $sub,
            generation: $gen,
            field_selectors: $fields,
            verbs: crate::resource::VERBS,
            conversion: None,
            ops: &Typed::<$ty>::OPS,
        }
    };
}

/// Every served resource, in the order discovery lists them.
pub(crate) static RESOURCES: &[ResourceDef] = &[
    resource!(ConfigMap, "configmaps", "configmap", namespaced: true, short: &["cm"], categories: &[], sub: &[], generation: false, fields: &[]),
    resource!(Endpoints, "endpoints", "endpoints", namespaced: true, short: &["ep"], categories: &[], sub: &[], generation: false, fields: &[]),
    resource!(Event, "events", "event", namespaced: true, short: &["ev"], categories: &[], sub: &[], generation: false, fields: EVENT_FIELDS),
    resource!(Namespace, "namespaces", "namespace", namespaced: false, short: &["ns"], categories: &[], sub: &[Status, Finalize], generation: false, fields: &["status.phase"]),
    resource!(Node, "nodes", "node", namespaced: false, short: &["no"], categories: &[], sub: &[Status], generation: false, fields: &["spec.unschedulable"]),
    resource!(Pod, "pods", "pod", namespaced: true, short: &["po"], categories: ALL, sub: &[Attach, Binding, Eviction, Exec, Log, PortForward, Status], generation: false, fields: POD_FIELDS),
    resource!(ReplicationController, "replicationcontrollers", "replicationcontroller", namespaced: true, short: &["rc"], categories: ALL, sub: &[Scale, Status], generation: true, fields: &["status.replicas"]),
    resource!(Secret, "secrets", "secret", namespaced: true, short: &[], categories: &[], sub: &[], generation: false, fields: &["type"]),
    resource!(ServiceAccount, "serviceaccounts", "serviceaccount", namespaced: true, short: &["sa"], categories: &[], sub: &[], generation: false, fields: &[]),
    resource!(Service, "services", "service", namespaced: true, short: &["svc"], categories: ALL, sub: &[Status], generation: false, fields: &[]),
    resource!(ControllerRevision, "controllerrevisions", "controllerrevision", namespaced: true, short: &[], categories: &[], sub: &[], generation: false, fields: &[]),
    resource!(DaemonSet, "daemonsets", "daemonset", namespaced: true, short: &["ds"], categories: ALL, sub: &[Status], generation: true, fields: &[]),
    resource!(Deployment, "deployments", "deployment", namespaced: true, short: &["deploy"], categories: ALL, sub: &[Scale, Status], generation: true, fields: &[]),
    resource!(ReplicaSet, "replicasets", "replicaset", namespaced: true, short: &["rs"], categories: ALL, sub: &[Scale, Status], generation: true, fields: &["status.replicas"]),
    resource!(StatefulSet, "statefulsets", "statefulset", namespaced: true, short: &["sts"], categories: ALL, sub: &[Scale, Status], generation: true, fields: &[]),
    resource!(HorizontalPodAutoscaler, "horizontalpodautoscalers", "horizontalpodautoscaler", namespaced: true, short: &["hpa"], categories: ALL, sub: &[Status], generation: true, fields: &[]),
    // kubectl before 1.33 creates these in v1 (`kubectl autoscale`); they are stored as v2.
    ResourceDef {
        conversion: Some(&autoscaling::V1),
        ..resource!(k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler, "horizontalpodautoscalers", "horizontalpodautoscaler", namespaced: true, short: &["hpa"], categories: ALL, sub: &[Status], generation: true, fields: &[])
    },
    resource!(Job, "jobs", "job", namespaced: true, short: &[], categories: ALL, sub: &[Status], generation: true, fields: &["status.successful"]),
    resource!(Lease, "leases", "lease", namespaced: true, short: &[], categories: &[], sub: &[], generation: false, fields: &[]),
    resource!(EndpointSlice, "endpointslices", "endpointslice", namespaced: true, short: &[], categories: &[], sub: &[], generation: false, fields: &[]),
    resource!(RuntimeClass, "runtimeclasses", "runtimeclass", namespaced: false, short: &[], categories: &[], sub: &[], generation: false, fields: &[]),
    // Computed, not stored: `get` and `list` alone.
    ResourceDef {
        verbs: metrics::VERBS,
        ..resource!(metrics::NodeMetrics, "nodes", "", namespaced: false, short: &[], categories: &[], sub: &[], generation: false, fields: &[])
    },
    ResourceDef {
        verbs: metrics::VERBS,
        ..resource!(metrics::PodMetrics, "pods", "", namespaced: true, short: &[], categories: &[], sub: &[], generation: false, fields: &[])
    },
];

/// Where a selectable field is in its object, as a JSON pointer.
pub fn field_pointer(field: &str) -> String {
    match field {
        // An event's `source` selects on its component.
        "source" => "/source/component".to_string(),
        _ => format!("/{}", field.replace('.', "/")),
    }
}

/// The value of a field-selector field in a JSON object, as upstream's field sets render it.
pub fn field_value(object: &Value, field: &str) -> Option<String> {
    match object.pointer(&field_pointer(field)) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Null) | None => match field {
            // Booleans upstream defaults to false, and counts to 0, render even when unset.
            "spec.hostNetwork" | "spec.unschedulable" => Some("false".into()),
            "status.replicas" | "status.successful" => Some("0".into()),
            _ => None,
        },
        Some(other) => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::find;

    #[test]
    fn unknown_fields_are_named_as_upstream_names_them() {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "bogus": 1},
            "spec": {"containers": [{"name": "c", "image": "i", "colour": "red"}]}
        });
        let pods = find("", "v1", "pods").unwrap();
        let err = pods.ops.admit(pod.clone(), None, FieldValidation::Strict, &[]).unwrap_err();
        assert_eq!(
            err.message,
            "Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown field \"metadata.bogus\", unknown field \"spec.containers[0].colour\""
        );
        let admitted = pods.ops.admit(pod.clone(), None, FieldValidation::Warn, &[]).unwrap();
        assert_eq!(
            admitted.warnings,
            vec!["unknown field \"metadata.bogus\"", "unknown field \"spec.containers[0].colour\""]
        );
        // Duplicates, from the parse, come first.
        let duplicates = ["metadata.name".to_string()];
        let err = pods.ops.admit(pod.clone(), None, FieldValidation::Strict, &duplicates).unwrap_err();
        assert!(err.message.ends_with("strict decoding error: duplicate field \"metadata.name\", unknown field \"metadata.bogus\", unknown field \"spec.containers[0].colour\""), "{}", err.message);
        let admitted = pods.ops.admit(pod.clone(), None, FieldValidation::Ignore, &duplicates).unwrap();
        assert!(admitted.warnings.is_empty());
        assert!(admitted.object.pointer("/spec/containers/0/colour").is_none(), "unknown fields are dropped");
    }

    #[test]
    fn a_body_of_another_kind_is_refused() {
        let pods = find("", "v1", "pods").unwrap();
        let svc = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}});
        let err = pods.ops.admit(svc, None, FieldValidation::Strict, &[]).unwrap_err();
        assert!(err.message.starts_with("Pod in version \"v1\" cannot be handled as a Pod"), "{}", err.message);
    }

    #[test]
    fn fields_go_always_writes_are_written_when_empty() {
        let admitted = |plural: &str, kind: &str, body: serde_json::Value| {
            let def = RESOURCES.iter().find(|r| r.plural == plural).unwrap();
            let mut object =
                serde_json::json!({"apiVersion": def.api_version(), "kind": kind, "metadata": {"name": "x"}});
            object.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
            def.ops.admit(object, None, FieldValidation::Strict, &[]).unwrap().object
        };
        let node = admitted("nodes", "Node", serde_json::json!({}));
        assert_eq!(node["spec"], serde_json::json!({}));
        assert_eq!(node["status"]["daemonEndpoints"], serde_json::json!({"kubeletEndpoint": {"Port": 0}}));
        let info = node["status"]["nodeInfo"].as_object().unwrap();
        assert_eq!(info.len(), 10, "{info:?}");
        assert!(info.values().all(|v| v == ""), "{info:?}");
        let service = admitted("services", "Service", serde_json::json!({"spec": {"ports": [{"port": 80}]}}));
        assert_eq!(service["status"], serde_json::json!({"loadBalancer": {}}));
        let template = serde_json::json!({"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let rc = admitted(
            "replicationcontrollers",
            "ReplicationController",
            serde_json::json!({"spec": {"template": template}}),
        );
        assert_eq!(rc["status"], serde_json::json!({"replicas": 0}));
        assert_eq!(
            (&rc["spec"]["selector"], &rc["metadata"]["labels"]),
            (&template["metadata"]["labels"], &template["metadata"]["labels"])
        );
    }

    #[test]
    fn controllers_that_keep_pods_running_refuse_a_deadline() {
        let template = serde_json::json!({"metadata": {"labels": {"a": "b"}}, "spec": {"activeDeadlineSeconds": 5, "containers": [{"name": "c", "image": "i"}]}});
        for (plural, kind, api_version, keeper) in [
            ("deployments", "Deployment", "apps/v1", "ReplicaSet"),
            ("daemonsets", "DaemonSet", "apps/v1", "DaemonSet"),
            ("replicationcontrollers", "ReplicationController", "v1", "ReplicationController"),
        ] {
            let def = RESOURCES.iter().find(|r| r.plural == plural).unwrap();
            let object = serde_json::json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"},
                "spec": {"selector": if kind == "ReplicationController" { serde_json::json!({"a": "b"}) } else { serde_json::json!({"matchLabels": {"a": "b"}}) }, "template": template}});
            let err = def.ops.admit(object, None, FieldValidation::Strict, &[]).unwrap_err();
            assert!(
                err.message.contains(&format!("activeDeadlineSeconds in {keeper} is not Supported")),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn endpoint_slices_name_real_endpoints_only() {
        let def = RESOURCES.iter().find(|r| r.plural == "endpointslices").unwrap();
        let slice = |address: &str, port: i64| {
            serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "s"},
                "addressType": "IPv4", "endpoints": [{"addresses": [address]}], "ports": [{"port": port}]})
        };
        // A single host's pods are loopback addresses: those pass.
        assert!(def.ops.admit(slice("127.77.0.5", 8080), None, FieldValidation::Strict, &[]).is_ok());
        for (address, port, why) in [
            ("0.0.0.0", 80, "may not be unspecified"),
            ("169.254.169.254", 80, "link-local"),
            ("10.0.0.1", 67916, "must be between 1 and 65535"),
            ("not-an-ip", 80, "must be a valid IPv4 address"),
        ] {
            let err = def.ops.admit(slice(address, port), None, FieldValidation::Strict, &[]).unwrap_err();
            assert!(err.message.contains(why), "{address}:{port}: {}", err.message);
        }
    }

    #[test]
    fn every_resource_is_found_by_its_names() {
        for r in RESOURCES {
            assert_eq!(find(r.group, r.version, r.plural).map(|f| f.kind), Some(r.kind));
            assert_eq!(crate::resource::find_kind(&r.api_version(), r.kind).map(|f| f.plural), Some(r.plural));
        }
    }
}
