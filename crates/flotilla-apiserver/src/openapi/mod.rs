//! OpenAPI v3: `/openapi/v3` lists one document per group-version, each with the paths of its
//! resources and the schemas they reach. kubectl reads them to decide that the server validates
//! fields (the `fieldValidation` parameter on each kind's PATCH), for `kubectl explain`, and to
//! compute strategic merge patches. Older kubectl reads the same from `/openapi/v2` ([`v2`]).

pub(crate) mod v2;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use flotilla_api::resource::{self, ResourceDef, Subresource};
use flotilla_api::schema::{PATCH, schemas};
use serde_json::{Map, Value, json};

/// One group-version's document, serialized, with the hash clients cache it by.
#[derive(Debug)]
pub(crate) struct Document {
    pub(crate) json: Vec<u8>,
    pub(crate) hash: String,
}

static DOCUMENTS: LazyLock<BTreeMap<String, Document>> = LazyLock::new(|| {
    resource::group_versions()
        .into_iter()
        .map(|(group, version)| {
            let path = if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") };
            let json = serde_json::to_vec(&document(group, version)).unwrap_or_default();
            let hash = format!("{:016X}", fnv1a(&json));
            (path, Document { json, hash })
        })
        .collect()
});

/// The document at `path` (`api/v1`, `apis/apps/v1`).
pub(crate) fn document_at(path: &str) -> Option<&'static Document> {
    DOCUMENTS.get(path)
}

/// `/openapi/v3`: where each group-version's document is.
pub(crate) fn root() -> Value {
    let paths: Map<String, Value> = DOCUMENTS
        .iter()
        .map(|(path, doc)| {
            (path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", doc.hash)}))
        })
        .collect();
    json!({ "paths": paths })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

fn document(group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    for def in resource::resources().iter().filter(|r| r.group == group && r.version == version) {
        add_paths(def, &mut paths);
    }
    let reached = reachable(&Value::Object(paths.clone()));
    let schemas: Map<String, Value> =
        reached.into_iter().filter_map(|name| schemas().get(&name).map(|s| (name, s.clone()))).collect();
    let (major, minor) = flotilla_api::KUBERNETES_VERSION;
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{major}.{minor}.0")},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// Every definition `value` refers to, directly or through other definitions.
fn reachable(value: &Value) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut queue = Vec::new();
    collect_refs(value, &mut queue);
    while let Some(name) = queue.pop() {
        if found.insert(name.clone())
            && let Some(schema) = schemas().get(&name)
        {
            collect_refs(schema, &mut queue);
        }
    }
    found
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref")
                && let Some(name) = reference.strip_prefix("#/components/schemas/")
            {
                out.push(name.to_string());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(list) => list.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

fn reference(definition: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{definition}")})
}

fn query(name: &str, kind: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": kind, "uniqueItems": true}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "description": description, "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn answer(definition: &str) -> Value {
    json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference(definition)}}}, "401": {"description": "Unauthorized"}})
}

fn operation(id: String, action: &str, gvk: &Value, response: &str, parameters: Vec<Value>) -> Value {
    json!({
        "operationId": id,
        "parameters": parameters,
        "responses": answer(response),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
    })
}

fn write_parameters(with_force: bool) -> Vec<Value> {
    let mut params = vec![
        query(
            "dryRun",
            "string",
            "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed",
        ),
        query(
            "fieldManager",
            "string",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        query(
            "fieldValidation",
            "string",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: - Ignore - Warn (the default) - Strict",
        ),
    ];
    if with_force {
        params.push(query("force", "boolean", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people."));
    }
    params
}

fn body(definition: &str) -> Value {
    json!({"content": {"application/json": {"schema": reference(definition)}}, "required": true})
}

fn patch_body() -> Value {
    let schema = json!({"schema": reference(PATCH)});
    json!({"content": {
        "application/apply-patch+yaml": schema,
        "application/json-patch+json": schema,
        "application/merge-patch+json": schema,
        "application/strategic-merge-patch+json": schema,
    }, "required": true})
}

fn add_paths(def: &ResourceDef, paths: &mut Map<String, Value>) {
    // The computed kinds (the resource metrics) are read-only: not described here yet.
    if !def.stored() {
        return;
    }
    let Some(definition) = schemas().kind_definition(def).map(str::to_string) else { return };
    let list = format!("{definition}List");
    let gvk = json!({"group": def.group, "version": def.version, "kind": def.kind});
    let base = if def.group.is_empty() {
        format!("/api/{}", def.version)
    } else {
        format!("/apis/{}/{}", def.group, def.version)
    };
    let gv = format!(
        "{}{}",
        camel(if def.group.is_empty() { "core" } else { def.group.split('.').next().unwrap_or(def.group) }),
        camel(def.version)
    );
    let scope = if def.namespaced { "Namespaced" } else { "" };
    let collection = if def.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", def.plural)
    } else {
        format!("{base}/{}", def.plural)
    };
    let mut common = vec![];
    if def.namespaced {
        common.push(path_param("namespace", "object name and auth scope, such as for teams and projects"));
    }
    let list_params = || {
        ["labelSelector", "fieldSelector", "continue", "resourceVersion", "resourceVersionMatch"]
            .iter()
            .map(|p| query(p, "string", ""))
            .chain(["limit", "timeoutSeconds"].iter().map(|p| query(p, "integer", "")))
            .chain(["watch", "allowWatchBookmarks", "sendInitialEvents"].iter().map(|p| query(p, "boolean", "")))
            .collect::<Vec<_>>()
    };
    let mut post =
        operation(format!("create{gv}{scope}{}", def.kind), "post", &gvk, &definition, write_parameters(false));
    post["requestBody"] = body(&definition);
    paths.insert(
        collection.clone(),
        json!({
            "parameters": common,
            "get": operation(format!("list{gv}{scope}{}", def.kind), "list", &gvk, &list, list_params()),
            "post": post,
            "delete": operation(format!("deletecollection{gv}{scope}{}", def.kind), "deletecollection", &gvk, "io.k8s.apimachinery.pkg.apis.meta.v1.Status", list_params()),
        }),
    );
    if def.namespaced {
        paths.insert(format!("{base}/{}", def.plural), json!({"get": operation(format!("list{gv}{}ForAllNamespaces", def.kind), "list", &gvk, &list, list_params())}));
    }
    let mut item_params = common.clone();
    item_params.insert(0, path_param("name", &format!("name of the {}", def.kind)));
    let item = |suffix: &str, response: &str, gvk: &Value| {
        let mut put =
            operation(format!("replace{gv}{scope}{}{suffix}", def.kind), "put", gvk, response, write_parameters(false));
        put["requestBody"] = body(response);
        let mut patch =
            operation(format!("patch{gv}{scope}{}{suffix}", def.kind), "patch", gvk, response, write_parameters(true));
        patch["requestBody"] = patch_body();
        json!({
            "parameters": item_params,
            "get": operation(format!("read{gv}{scope}{}{suffix}", def.kind), "get", gvk, response, vec![]),
            "put": put,
            "patch": patch,
        })
    };
    let mut object = item("", &definition, &gvk);
    object["delete"] = operation(
        format!("delete{gv}{scope}{}", def.kind),
        "delete",
        &gvk,
        &definition,
        vec![query("gracePeriodSeconds", "integer", ""), query("propagationPolicy", "string", "")],
    );
    paths.insert(format!("{collection}/{{name}}"), object);
    for sub in def.subresources {
        match sub {
            Subresource::Status => {
                paths.insert(format!("{collection}/{{name}}/status"), item("Status", &definition, &gvk));
            }
            Subresource::Scale => {
                let scale_gvk = json!({"group": "autoscaling", "version": "v1", "kind": "Scale"});
                paths.insert(
                    format!("{collection}/{{name}}/scale"),
                    item("Scale", "io.k8s.api.autoscaling.v1.Scale", &scale_gvk),
                );
            }
            Subresource::Log
            | Subresource::Binding
            | Subresource::Eviction
            | Subresource::Finalize
            | Subresource::Exec
            | Subresource::Attach
            | Subresource::PortForward => {}
        }
    }
}

fn camel(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|c| c.to_uppercase().collect::<String>() + chars.as_str()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What cli-runtime's `supportsQueryParamV3` looks for before it trusts server-side validation.
    fn supports_field_validation(doc: &Value, group: &str, version: &str, kind: &str) -> bool {
        doc["paths"].as_object().unwrap().values().any(|path| {
            let Some(patch) = path.get("patch") else { return false };
            let gvk = &patch["x-kubernetes-group-version-kind"];
            gvk["group"] == group
                && gvk["version"] == version
                && gvk["kind"] == kind
                && patch["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        })
    }

    #[test]
    fn every_stored_kind_patches_with_field_validation() {
        for r in resource::resources().iter().filter(|r| r.stored()) {
            let path = if r.group.is_empty() {
                format!("api/{}", r.version)
            } else {
                format!("apis/{}/{}", r.group, r.version)
            };
            let doc: Value = serde_json::from_slice(&document_at(&path).unwrap().json).unwrap();
            assert!(supports_field_validation(&doc, r.group, r.version, r.kind), "{}", r.kind);
        }
    }

    #[test]
    fn documents_carry_the_schemas_they_reach() {
        let doc: Value = serde_json::from_slice(&document_at("apis/apps/v1").unwrap().json).unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "io.k8s.api.apps.v1.Deployment",
            "io.k8s.api.apps.v1.DeploymentList",
            "io.k8s.api.core.v1.PodSpec",
            "io.k8s.api.autoscaling.v1.Scale",
            PATCH,
        ] {
            assert!(schemas.contains_key(name), "{name}");
        }
        assert!(!schemas.contains_key("io.k8s.api.core.v1.Service"), "only what apps/v1 reaches");
        assert!(
            root()["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
    }
}
