//! The JSON schemas of the served kinds, generated from their k8s-openapi types, with what the
//! types do not carry: each field's patch strategy and merge key (upstream's `patchStrategy`
//! and `patchMergeKey` struct tags), and each kind's group, version and kind. Strategic merge
//! patch navigates objects with them; the OpenAPI documents publish them.

use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::resource::resources;

/// How a field merges under a strategic merge patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchMeta {
    /// `merge`, `retainKeys`, or `merge,retainKeys`.
    pub strategy: &'static str,
    /// The key that identifies a list element, for lists of objects that merge.
    pub merge_key: Option<&'static str>,
}

impl PatchMeta {
    pub fn merges(&self) -> bool {
        self.strategy.split(',').any(|s| s == "merge")
    }
}

const fn merge(key: &'static str) -> PatchMeta {
    PatchMeta { strategy: "merge", merge_key: Some(key) }
}

/// Upstream's patch strategies for the served types' fields (k8s.io/api, release 1.33).
const PATCH_STRATEGIES: &[(&str, &str, PatchMeta)] = &[
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers", PatchMeta { strategy: "merge", merge_key: None }),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences", merge("uid")),
    ("io.k8s.api.core.v1.PodSpec", "volumes", PatchMeta { strategy: "merge,retainKeys", merge_key: Some("name") }),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", merge("name")),
    ("io.k8s.api.core.v1.PodSpec", "containers", merge("name")),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", merge("name")),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", merge("name")),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", merge("ip")),
    ("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints", merge("topologyKey")),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        PatchMeta { strategy: "merge,retainKeys", merge_key: Some("name") },
    ),
    ("io.k8s.api.core.v1.PodSpec", "schedulingGates", merge("name")),
    ("io.k8s.api.core.v1.Container", "ports", merge("containerPort")),
    ("io.k8s.api.core.v1.Container", "env", merge("name")),
    ("io.k8s.api.core.v1.Container", "volumeMounts", merge("mountPath")),
    ("io.k8s.api.core.v1.Container", "volumeDevices", merge("devicePath")),
    ("io.k8s.api.core.v1.EphemeralContainer", "ports", merge("containerPort")),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", merge("name")),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeMounts", merge("mountPath")),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeDevices", merge("devicePath")),
    ("io.k8s.api.core.v1.PodStatus", "conditions", merge("type")),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", merge("ip")),
    ("io.k8s.api.core.v1.PodStatus", "hostIPs", merge("ip")),
    (
        "io.k8s.api.core.v1.PodStatus",
        "resourceClaimStatuses",
        PatchMeta { strategy: "merge,retainKeys", merge_key: Some("name") },
    ),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", merge("port")),
    ("io.k8s.api.core.v1.ServiceStatus", "conditions", merge("type")),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", PatchMeta { strategy: "merge", merge_key: None }),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", merge("type")),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", merge("type")),
    ("io.k8s.api.core.v1.NamespaceStatus", "conditions", merge("type")),
    ("io.k8s.api.core.v1.ServiceAccount", "secrets", merge("name")),
    ("io.k8s.api.apps.v1.DeploymentSpec", "strategy", PatchMeta { strategy: "retainKeys", merge_key: None }),
    ("io.k8s.api.apps.v1.DeploymentStatus", "conditions", merge("type")),
    ("io.k8s.api.apps.v1.ReplicaSetStatus", "conditions", merge("type")),
    ("io.k8s.api.core.v1.ReplicationControllerStatus", "conditions", merge("type")),
    ("io.k8s.api.apps.v1.DaemonSetStatus", "conditions", merge("type")),
    ("io.k8s.api.apps.v1.StatefulSetStatus", "conditions", merge("type")),
    ("io.k8s.api.batch.v1.JobStatus", "conditions", merge("type")),
];

/// How a list is merged and owned by server-side apply.
#[derive(Clone, Copy, Debug)]
enum ListType {
    Atomic,
    Set,
    Map(&'static [&'static str]),
}

/// Upstream's list types (k8s.io/api 1.33 `+listType`/`+listMapKey` markers) for the lists that
/// are not atomic, and for the atomic ones whose patch strategy would say otherwise. Server-side
/// apply walks lists by them; every other list is atomic, as upstream's.
const LIST_TYPES: &[(&str, &str, ListType)] = &[
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences", ListType::Map(&["uid"])),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers", ListType::Set),
    ("io.k8s.api.core.v1.PodSpec", "volumes", ListType::Map(&["name"])),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", ListType::Map(&["name"])),
    ("io.k8s.api.core.v1.PodSpec", "containers", ListType::Map(&["name"])),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", ListType::Map(&["name"])),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", ListType::Map(&["name"])),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", ListType::Map(&["ip"])),
    ("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints", ListType::Map(&["topologyKey", "whenUnsatisfiable"])),
    ("io.k8s.api.core.v1.PodSpec", "schedulingGates", ListType::Map(&["name"])),
    ("io.k8s.api.core.v1.PodSpec", "resourceClaims", ListType::Map(&["name"])),
    ("io.k8s.api.core.v1.Container", "ports", ListType::Map(&["containerPort", "protocol"])),
    ("io.k8s.api.core.v1.Container", "env", ListType::Map(&["name"])),
    ("io.k8s.api.core.v1.Container", "volumeMounts", ListType::Map(&["mountPath"])),
    ("io.k8s.api.core.v1.Container", "volumeDevices", ListType::Map(&["devicePath"])),
    ("io.k8s.api.core.v1.ResourceRequirements", "claims", ListType::Map(&["name"])),
    ("io.k8s.api.core.v1.EphemeralContainer", "ports", ListType::Map(&["containerPort", "protocol"])),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", ListType::Map(&["name"])),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeMounts", ListType::Map(&["mountPath"])),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeDevices", ListType::Map(&["devicePath"])),
    ("io.k8s.api.core.v1.PodStatus", "conditions", ListType::Map(&["type"])),
    ("io.k8s.api.core.v1.PodStatus", "hostIPs", ListType::Atomic),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", ListType::Map(&["ip"])),
    ("io.k8s.api.core.v1.PodStatus", "resourceClaimStatuses", ListType::Map(&["name"])),
    ("io.k8s.api.core.v1.ContainerStatus", "volumeMounts", ListType::Map(&["mountPath"])),
    ("io.k8s.api.core.v1.ContainerStatus", "allocatedResourcesStatus", ListType::Map(&["name"])),
    ("io.k8s.api.core.v1.ResourceStatus", "resources", ListType::Map(&["resourceID"])),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", ListType::Set),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", ListType::Map(&["type"])),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", ListType::Map(&["type"])),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", ListType::Map(&["port", "protocol"])),
    ("io.k8s.api.core.v1.ServiceStatus", "conditions", ListType::Map(&["type"])),
    ("io.k8s.api.core.v1.ServiceAccount", "secrets", ListType::Map(&["name"])),
    ("io.k8s.api.core.v1.NamespaceStatus", "conditions", ListType::Map(&["type"])),
    ("io.k8s.api.apps.v1.DeploymentStatus", "conditions", ListType::Map(&["type"])),
    ("io.k8s.api.apps.v1.ReplicaSetStatus", "conditions", ListType::Map(&["type"])),
    ("io.k8s.api.core.v1.ReplicationControllerStatus", "conditions", ListType::Map(&["type"])),
    ("io.k8s.api.apps.v1.DaemonSetStatus", "conditions", ListType::Map(&["type"])),
    ("io.k8s.api.core.v1.PersistentVolumeClaimStatus", "conditions", ListType::Map(&["type"])),
    ("io.k8s.api.apps.v1.StatefulSetStatus", "conditions", ListType::Map(&["type"])),
    ("io.k8s.api.batch.v1.PodFailurePolicyOnExitCodesRequirement", "values", ListType::Set),
    ("io.k8s.api.batch.v1.JobStatus", "conditions", ListType::Atomic),
    ("io.k8s.api.batch.v1.UncountedTerminatedPods", "succeeded", ListType::Set),
    ("io.k8s.api.batch.v1.UncountedTerminatedPods", "failed", ListType::Set),
    ("io.k8s.api.discovery.v1.Endpoint", "addresses", ListType::Set),
];

/// Maps owned as a whole (`+mapType=atomic`); every other map is granular.
const ATOMIC_MAPS: &[(&str, &str)] =
    &[("io.k8s.api.core.v1.PodSpec", "nodeSelector"), ("io.k8s.api.core.v1.ServiceSpec", "selector")];

/// Structs owned as a whole (`+structType=atomic`), published as `x-kubernetes-map-type: atomic`.
const ATOMIC_STRUCTS: &[&str] = &[
    "io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.ObjectFieldSelector",
    "io.k8s.api.core.v1.ResourceFieldSelector",
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "io.k8s.api.core.v1.TypedLocalObjectReference",
    "io.k8s.api.core.v1.ConfigMapKeySelector",
    "io.k8s.api.core.v1.SecretKeySelector",
    "io.k8s.api.core.v1.NodeSelector",
    "io.k8s.api.core.v1.NodeSelectorTerm",
    "io.k8s.api.core.v1.EndpointAddress",
    "io.k8s.api.core.v1.ObjectReference",
    "io.k8s.api.core.v1.EndpointPort",
    "io.k8s.api.discovery.v1.EndpointPort",
];

/// The defaults of list-map key fields, which server-side apply uses for an item that leaves
/// its key out (upstream publishes them as the field's OpenAPI `default`; JSON literals).
const KEY_DEFAULTS: &[(&str, &str, &str)] = &[
    ("io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference", "uid", r#""""#),
    ("io.k8s.api.core.v1.Volume", "name", r#""""#),
    ("io.k8s.api.core.v1.Container", "name", r#""""#),
    ("io.k8s.api.core.v1.EphemeralContainer", "name", r#""""#),
    ("io.k8s.api.core.v1.LocalObjectReference", "name", r#""""#),
    ("io.k8s.api.core.v1.HostAlias", "ip", r#""""#),
    ("io.k8s.api.core.v1.TopologySpreadConstraint", "topologyKey", r#""""#),
    ("io.k8s.api.core.v1.TopologySpreadConstraint", "whenUnsatisfiable", r#""""#),
    ("io.k8s.api.core.v1.PodSchedulingGate", "name", r#""""#),
    ("io.k8s.api.core.v1.PodResourceClaim", "name", r#""""#),
    ("io.k8s.api.core.v1.ContainerPort", "containerPort", "0"),
    ("io.k8s.api.core.v1.ContainerPort", "protocol", r#""TCP""#),
    ("io.k8s.api.core.v1.EnvVar", "name", r#""""#),
    ("io.k8s.api.core.v1.VolumeMount", "mountPath", r#""""#),
    ("io.k8s.api.core.v1.VolumeDevice", "devicePath", r#""""#),
    ("io.k8s.api.core.v1.ResourceClaim", "name", r#""""#),
    ("io.k8s.api.core.v1.PodCondition", "type", r#""""#),
    ("io.k8s.api.core.v1.PodIP", "ip", r#""""#),
    ("io.k8s.api.core.v1.PodResourceClaimStatus", "name", r#""""#),
    ("io.k8s.api.core.v1.VolumeMountStatus", "mountPath", r#""""#),
    ("io.k8s.api.core.v1.ResourceStatus", "name", r#""""#),
    ("io.k8s.api.core.v1.ResourceHealth", "resourceID", r#""""#),
    ("io.k8s.api.core.v1.NodeCondition", "type", r#""""#),
    ("io.k8s.api.core.v1.NodeAddress", "type", r#""""#),
    ("io.k8s.api.core.v1.ServicePort", "port", "0"),
    ("io.k8s.api.core.v1.ServicePort", "protocol", r#""TCP""#),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.Condition", "type", r#""""#),
    ("io.k8s.api.core.v1.NamespaceCondition", "type", r#""""#),
    ("io.k8s.api.apps.v1.DeploymentCondition", "type", r#""""#),
    ("io.k8s.api.apps.v1.ReplicaSetCondition", "type", r#""""#),
    ("io.k8s.api.core.v1.ReplicationControllerCondition", "type", r#""""#),
    ("io.k8s.api.apps.v1.DaemonSetCondition", "type", r#""""#),
    ("io.k8s.api.core.v1.PersistentVolumeClaimCondition", "type", r#""""#),
    ("io.k8s.api.apps.v1.StatefulSetCondition", "type", r#""""#),
];

/// The definition of a PATCH body.
pub const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";

/// Every served kind's schema and the schemas they refer to, keyed by definition name
/// (`io.k8s.api.core.v1.Pod`).
#[derive(Debug)]
pub struct Schemas {
    definitions: Map<String, Value>,
    /// The definition name of each served kind, in the order of [`resources`].
    kinds: Vec<String>,
}

static SCHEMAS: LazyLock<Schemas> = LazyLock::new(Schemas::generate);

/// The schemas of the served kinds, generated once.
pub fn schemas() -> &'static Schemas {
    &SCHEMAS
}

impl Schemas {
    fn generate() -> Schemas {
        let mut generator = SchemaSettings::openapi3().into_generator();
        let mut kinds = Vec::new();
        for resource in resources() {
            let reference = resource.ops.schema(&mut generator);
            kinds.push((definition_of(&reference), resource));
        }
        // What the API's operations take and answer besides the kinds themselves.
        generator.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>();
        generator.subschema_for::<k8s_openapi::api::core::v1::Binding>();
        generator.subschema_for::<k8s_openapi::api::policy::v1::Eviction>();
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta>();
        let mut definitions = generator.take_definitions(true);
        definitions.insert(
            PATCH.into(),
            json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object"}),
        );
        for (name, resource) in &kinds {
            let list = format!("{name}List");
            definitions.insert(
                list,
                json!({
                    "description": format!("{}List is a list of {}.", resource.kind, resource.kind),
                    "type": "object",
                    "required": ["items"],
                    "properties": {
                        "apiVersion": {"description": "APIVersion defines the versioned schema of this representation of an object.", "type": "string"},
                        "items": {"description": format!("List of {}.", resource.plural), "type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}},
                        "kind": {"description": "Kind is a string value representing the REST resource this object represents.", "type": "string"},
                        "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"}], "description": "Standard list metadata."},
                    },
                    "x-kubernetes-group-version-kind": [{"group": resource.group, "kind": format!("{}List", resource.kind), "version": resource.version}],
                }),
            );
        }
        for (name, resource) in &kinds {
            if let Some(Value::Object(schema)) = definitions.get_mut(name) {
                schema.insert(
                    "x-kubernetes-group-version-kind".into(),
                    json!([{"group": resource.group, "kind": resource.kind, "version": resource.version}]),
                );
            }
        }
        for (definition, field, meta) in PATCH_STRATEGIES {
            let property =
                definitions.get_mut(*definition).and_then(|d| d.pointer_mut(&format!("/properties/{field}")));
            if let Some(property) = property.and_then(Value::as_object_mut) {
                property.insert("x-kubernetes-patch-strategy".into(), meta.strategy.into());
                if let Some(key) = meta.merge_key {
                    property.insert("x-kubernetes-patch-merge-key".into(), key.into());
                }
            }
        }
        for (definition, field, list_type) in LIST_TYPES {
            if let Some(property) = property_mut(&mut definitions, definition, field) {
                let (name, keys) = match list_type {
                    ListType::Atomic => ("atomic", None),
                    ListType::Set => ("set", None),
                    ListType::Map(keys) => ("map", Some(*keys)),
                };
                property.insert("x-kubernetes-list-type".into(), name.into());
                if let Some(keys) = keys {
                    property.insert("x-kubernetes-list-map-keys".into(), json!(keys));
                }
            }
        }
        for (definition, field) in ATOMIC_MAPS {
            if let Some(property) = property_mut(&mut definitions, definition, field) {
                property.insert("x-kubernetes-map-type".into(), "atomic".into());
            }
        }
        for definition in ATOMIC_STRUCTS {
            if let Some(Value::Object(schema)) = definitions.get_mut(*definition) {
                schema.insert("x-kubernetes-map-type".into(), "atomic".into());
            }
        }
        for (definition, field, default) in KEY_DEFAULTS {
            if let Some(property) = property_mut(&mut definitions, definition, field) {
                property.insert("default".into(), serde_json::from_str(default).unwrap_or(Value::Null));
            }
        }
        Schemas { definitions, kinds: kinds.into_iter().map(|(name, _)| name).collect() }
    }

    pub fn definitions(&self) -> &Map<String, Value> {
        &self.definitions
    }

    pub fn get(&self, definition: &str) -> Option<&Value> {
        self.definitions.get(definition)
    }

    /// The definition name of a served kind.
    pub fn kind_definition(&self, resource: &crate::resource::ResourceDef) -> Option<&str> {
        let index = resources()
            .iter()
            .position(|r| r.group == resource.group && r.version == resource.version && r.kind == resource.kind)?;
        Some(&self.kinds[index])
    }

    /// What a strategic merge patch needs to know of `field` in `definition`: its strategy,
    /// and the definition of its value (of its elements, for a list), if it is an object.
    pub fn field(&self, definition: Option<&str>, field: &str) -> FieldInfo {
        let Some(definition) = definition else { return FieldInfo::default() };
        let meta = PATCH_STRATEGIES.iter().find(|(d, f, _)| *d == definition && *f == field).map(|(_, _, m)| *m);
        let property = self.definitions.get(definition).and_then(|d| d.pointer(&format!("/properties/{field}")));
        let element = property.and_then(|p| p.get("items")).or(property);
        FieldInfo { meta, definition: element.and_then(reference) }
    }
}

fn property_mut<'d>(
    definitions: &'d mut Map<String, Value>,
    definition: &str,
    field: &str,
) -> Option<&'d mut Map<String, Value>> {
    definitions.get_mut(definition)?.pointer_mut(&format!("/properties/{field}"))?.as_object_mut()
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldInfo {
    pub meta: Option<PatchMeta>,
    /// The definition of the field's value (or of its list's elements).
    pub definition: Option<String>,
}

/// The definition name a schema refers to, directly or through a single-element `allOf`.
fn reference(schema: &Value) -> Option<String> {
    let reference = schema.get("$ref").or_else(|| schema.pointer("/allOf/0/$ref"))?.as_str()?;
    reference.rsplit('/').next().map(str::to_string)
}

fn definition_of(reference: &schemars::Schema) -> String {
    self::reference(&reference.clone().to_value()).unwrap_or_default()
}

/// The definition name of a served kind (`io.k8s.api.apps.v1.Deployment`).
pub fn definition_name(api_version: &str, kind: &str) -> Option<&'static str> {
    schemas().kind_definition(crate::resource::find_kind(api_version, kind)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_carry_their_gvk_and_fields_their_strategies() {
        let schemas = schemas();
        let deployment = schemas.get("io.k8s.api.apps.v1.Deployment").expect("deployment schema");
        assert_eq!(deployment["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        let containers = schemas.get("io.k8s.api.core.v1.PodSpec").unwrap().pointer("/properties/containers").unwrap();
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        let tables = PATCH_STRATEGIES
            .iter()
            .map(|(d, f, _)| (*d, *f))
            .chain(LIST_TYPES.iter().map(|(d, f, _)| (*d, *f)))
            .chain(ATOMIC_MAPS.iter().copied())
            .chain(KEY_DEFAULTS.iter().map(|(d, f, _)| (*d, *f)));
        for (definition, field) in tables {
            let property = schemas.get(definition).and_then(|d| d.pointer(&format!("/properties/{field}")));
            assert!(property.is_some(), "{definition}.{field} is in a table but not in the schema");
        }
        for definition in ATOMIC_STRUCTS {
            assert!(schemas.get(definition).is_some(), "{definition} is in a table but not in the schema");
        }
        let ports = schemas.get("io.k8s.api.core.v1.Container").unwrap().pointer("/properties/ports").unwrap();
        assert_eq!(ports["x-kubernetes-list-map-keys"], json!(["containerPort", "protocol"]));
        let protocol =
            schemas.get("io.k8s.api.core.v1.ContainerPort").unwrap().pointer("/properties/protocol").unwrap();
        assert_eq!(protocol["default"], "TCP");
    }

    #[test]
    fn fields_lead_to_the_definitions_of_their_values() {
        let schemas = schemas();
        let spec = schemas.field(Some("io.k8s.api.apps.v1.Deployment"), "spec");
        assert_eq!(spec.definition.as_deref(), Some("io.k8s.api.apps.v1.DeploymentSpec"));
        let containers = schemas.field(Some("io.k8s.api.core.v1.PodSpec"), "containers");
        assert_eq!(containers.definition.as_deref(), Some("io.k8s.api.core.v1.Container"));
        assert_eq!(containers.meta.and_then(|m| m.merge_key), Some("name"));
        assert_eq!(definition_name("v1", "Pod"), Some("io.k8s.api.core.v1.Pod"));
    }
}
