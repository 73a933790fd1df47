//! OpenAPI v2 (Swagger 2.0): `/openapi/v2`, one document for the whole API. kubectl before 1.29
//! reads it, not v3, on every `apply` (to decide that the server validates fields and to find
//! patch strategies) and for `explain`; it asks for gnostic protobuf and gives up on anything
//! else. The document is the v3 documents rewritten in v2's shapes, served as JSON or protobuf.

use std::sync::LazyLock;

use flotilla_api::resource;
use flotilla_api::schema::schemas;
use serde_json::{Map, Value, json};

/// gnostic's `openapi_v2.Document` in protobuf. kubectl asks for it as `…spec.v2@v1.0+protobuf`,
/// but `@` is not allowed in a media type and Go's parser refuses it in a Content-Type, so the
/// answer names it with a dot, as upstream does.
pub(crate) const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Whether `accept` asks for the protobuf document, in either spelling.
pub(crate) fn wants_protobuf(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let media = media.split(';').next().unwrap_or_default().trim();
        media.starts_with("application/com.github.proto-openapi.spec.v2") && media.ends_with("+protobuf")
    })
}

/// The document, serialized both ways, with the hash clients cache it by.
#[derive(Debug)]
pub(crate) struct Document {
    pub(crate) json: Vec<u8>,
    pub(crate) protobuf: Vec<u8>,
    pub(crate) hash: String,
}

static DOCUMENT: LazyLock<Document> = LazyLock::new(|| {
    let swagger = swagger();
    let json = serde_json::to_vec(&swagger).unwrap_or_default();
    let protobuf = gnostic::document(&swagger);
    let hash = format!("{:016X}", super::fnv1a(&json));
    Document { json, protobuf, hash }
});

pub(crate) fn document() -> &'static Document {
    &DOCUMENT
}

/// The Swagger 2.0 document: every group-version's paths, every definition.
fn swagger() -> Value {
    let mut paths = Map::new();
    for (group, version) in resource::group_versions() {
        if let Value::Object(gv_paths) = super::document(group, version)["paths"].take() {
            paths.extend(gv_paths.into_iter().map(|(path, item)| (path, path_item(item))));
        }
    }
    let definitions: Map<String, Value> =
        schemas().definitions().iter().map(|(name, schema)| (name.clone(), definition(schema.clone()))).collect();
    let (major, minor) = flotilla_api::KUBERNETES_VERSION;
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v{major}.{minor}.0")},
        "paths": paths,
        "definitions": definitions,
    })
}

fn path_item(mut item: Value) -> Value {
    let Value::Object(map) = &mut item else { return item };
    for (key, value) in map.iter_mut() {
        if key == "parameters" {
            convert_parameters(value);
        } else {
            *value = operation(value.take());
        }
    }
    item
}

fn convert_parameters(parameters: &mut Value) {
    for parameter in parameters.as_array_mut().into_iter().flatten() {
        // v3 wraps a parameter's type in a schema; v2 has it inline.
        if let Some(Value::Object(schema)) = parameter.as_object_mut().and_then(|p| p.remove("schema"))
            && let Value::Object(parameter) = parameter
        {
            parameter.extend(schema);
        }
    }
}

fn operation(mut op: Value) -> Value {
    let Value::Object(map) = &mut op else { return op };
    if let Some(parameters) = map.get_mut("parameters") {
        convert_parameters(parameters);
    }
    // v3's request body is v2's body parameter; its media types are what the operation consumes.
    if let Some(body) = map.remove("requestBody") {
        let content = body["content"].as_object().cloned().unwrap_or_default();
        let schema = content.values().next().map(|c| schema(c["schema"].clone())).unwrap_or(Value::Null);
        map.insert("consumes".into(), content.keys().cloned().collect());
        let parameter = json!({"name": "body", "in": "body", "required": true, "schema": schema});
        if let Some(parameters) = map.entry("parameters").or_insert_with(|| json!([])).as_array_mut() {
            parameters.insert(0, parameter);
        }
    }
    if let Some(Value::Object(responses)) = map.get_mut("responses") {
        for response in responses.values_mut() {
            if let Some(found) = response.pointer("/content/application~1json/schema").cloned() {
                response["schema"] = schema(found);
            }
            if let Some(response) = response.as_object_mut() {
                response.remove("content");
            }
        }
    }
    map.insert(
        "produces".into(),
        json!(["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"]),
    );
    map.insert("schemes".into(), json!(["https"]));
    op
}

/// A definition in v2's shape. Quantity and IntOrString, which v3 leaves untyped, are strings
/// as upstream's v2 document has them (kubectl's client-side validation needs a type).
fn definition(schema_value: Value) -> Value {
    let mut converted = schema(schema_value);
    if let Value::Object(map) = &mut converted
        && map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        && !map.contains_key("type")
    {
        map.insert("type".into(), "string".into());
        map.insert("format".into(), "int-or-string".into());
    }
    converted
}

/// A schema in v2's shape: references point into `#/definitions/`, and a reference that v3
/// wraps in a one-element `allOf` (to give it a description) is a plain `$ref`.
fn schema(mut value: Value) -> Value {
    match &mut value {
        Value::Object(map) => {
            if let Some(Value::Array(all_of)) = map.get("allOf")
                && let [only] = all_of.as_slice()
                && let Some(reference) = only.get("$ref").cloned()
            {
                map.remove("allOf");
                map.insert("$ref".into(), reference);
            }
            for (key, child) in map.iter_mut() {
                match (key.as_str(), child) {
                    ("$ref", Value::String(reference)) => {
                        if let Some(name) = reference.strip_prefix("#/components/schemas/") {
                            *reference = format!("#/definitions/{name}");
                        }
                    }
                    ("properties", Value::Object(properties)) => {
                        properties.values_mut().for_each(|p| *p = schema(p.take()));
                    }
                    ("items" | "additionalProperties", child) => *child = schema(child.take()),
                    ("allOf", Value::Array(all)) => all.iter_mut().for_each(|s| *s = schema(s.take())),
                    _ => {}
                }
            }
        }
        _ => return value,
    }
    value
}

/// gnostic's `openapi_v2` protobuf messages (github.com/google/gnostic-models, OpenAPIv2.proto),
/// written from the Swagger JSON. Only what the document above holds is written; anything else
/// in it would be a bug here, so it is left out rather than guessed at.
mod gnostic {
    use serde_json::Value;

    use flotilla_api::protobuf::Writer;

    pub(super) fn document(doc: &Value) -> Vec<u8> {
        let mut w = Writer::default();
        w.string(1, str_at(doc, "swagger"));
        w.message(2, |w| {
            w.string(1, str_at(&doc["info"], "title"));
            w.string(2, str_at(&doc["info"], "version"));
        });
        w.message(8, |w| {
            for (name, item) in doc["paths"].as_object().into_iter().flatten() {
                w.message(2, |w| {
                    w.string(1, name);
                    w.message(2, |w| path_item(w, item));
                });
            }
        });
        w.message(9, |w| {
            for (name, schema_value) in doc["definitions"].as_object().into_iter().flatten() {
                w.message(1, |w| named_schema(w, name, schema_value));
            }
        });
        w.into_bytes()
    }

    fn str_at<'a>(value: &'a Value, key: &str) -> &'a str {
        value.get(key).and_then(Value::as_str).unwrap_or_default()
    }

    fn strings<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a str> {
        value.get(key).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
    }

    fn path_item(w: &mut Writer, item: &Value) {
        for (method, field) in [("get", 2), ("put", 3), ("post", 4), ("delete", 5), ("patch", 8)] {
            if let Some(op) = item.get(method) {
                w.message(field, |w| operation(w, op));
            }
        }
        for parameter in item["parameters"].as_array().into_iter().flatten() {
            w.message(9, |w| parameters_item(w, parameter));
        }
    }

    fn operation(w: &mut Writer, op: &Value) {
        w.string(3, str_at(op, "description"));
        w.string(5, str_at(op, "operationId"));
        strings(op, "produces").for_each(|p| w.string(6, p));
        strings(op, "consumes").for_each(|c| w.string(7, c));
        for parameter in op["parameters"].as_array().into_iter().flatten() {
            w.message(8, |w| parameters_item(w, parameter));
        }
        w.message(9, |w| {
            for (code, response) in op["responses"].as_object().into_iter().flatten() {
                w.message(1, |w| {
                    w.string(1, code);
                    // ResponseValue.response → Response { description, schema: SchemaItem.schema }
                    w.message(2, |w| {
                        w.message(1, |w| {
                            w.string(1, str_at(response, "description"));
                            if let Some(s) = response.get("schema") {
                                w.message(2, |w| w.message(1, |w| schema(w, s)));
                            }
                        })
                    });
                });
            }
        });
        strings(op, "schemes").for_each(|s| w.string(10, s));
        vendor_extensions(w, 13, op);
    }

    /// ParametersItem.parameter → Parameter.{body_parameter | non_body_parameter}.
    fn parameters_item(w: &mut Writer, parameter: &Value) {
        w.message(1, |w| match str_at(parameter, "in") {
            "body" => w.message(1, |w| {
                w.string(1, str_at(parameter, "description"));
                w.string(2, str_at(parameter, "name"));
                w.string(3, "body");
                w.bool(4, parameter["required"] == true);
                if let Some(s) = parameter.get("schema") {
                    w.message(5, |w| schema(w, s));
                }
            }),
            // NonBodyParameter.query_parameter_sub_schema: the type is field 6, after
            // allow_empty_value; in the path sub-schema, which has no such field, it is 5.
            "query" => w.message(2, |w| w.message(3, |w| non_body(w, parameter, 6, 20))),
            _ => w.message(2, |w| w.message(4, |w| non_body(w, parameter, 5, 19))),
        });
    }

    fn non_body(w: &mut Writer, parameter: &Value, type_field: u32, unique_items_field: u32) {
        w.bool(1, parameter["required"] == true);
        w.string(2, str_at(parameter, "in"));
        w.string(3, str_at(parameter, "description"));
        w.string(4, str_at(parameter, "name"));
        w.string(type_field, str_at(parameter, "type"));
        w.bool(unique_items_field, parameter["uniqueItems"] == true);
    }

    fn named_schema(w: &mut Writer, name: &str, value: &Value) {
        w.string(1, name);
        w.message(2, |w| schema(w, value));
    }

    fn schema(w: &mut Writer, s: &Value) {
        w.string(1, str_at(s, "$ref"));
        w.string(2, str_at(s, "format"));
        w.string(4, str_at(s, "description"));
        strings(s, "required").for_each(|r| w.string(19, r));
        if let Some(additional) = s.get("additionalProperties") {
            w.message(21, |w| match additional {
                Value::Bool(allowed) => w.bool(2, *allowed),
                other => w.message(1, |w| schema(w, other)),
            });
        }
        if let Some(ty) = s.get("type").and_then(Value::as_str) {
            w.message(22, |w| w.string(1, ty));
        }
        if let Some(items) = s.get("items") {
            w.message(23, |w| w.message(1, |w| schema(w, items)));
        }
        for part in s["allOf"].as_array().into_iter().flatten() {
            w.message(24, |w| schema(w, part));
        }
        if let Some(properties) = s.get("properties").and_then(Value::as_object) {
            w.message(25, |w| {
                for (name, property) in properties {
                    w.message(1, |w| named_schema(w, name, property));
                }
            });
        }
        vendor_extensions(w, 31, s);
    }

    /// `x-` keys as NamedAny { name, Any { yaml } }. JSON is YAML, so the value is written as JSON.
    fn vendor_extensions(w: &mut Writer, field: u32, value: &Value) {
        for (name, extension) in value.as_object().into_iter().flatten().filter(|(k, _)| k.starts_with("x-")) {
            w.message(field, |w| {
                w.string(1, name);
                w.message(2, |w| w.string(2, &extension.to_string()));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_point_into_definitions_and_all_resolve() {
        let doc = swagger();
        let definitions = doc["definitions"].as_object().unwrap();
        let mut refs = Vec::new();
        fn collect(value: &Value, out: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        out.push(r.clone());
                    }
                    assert!(!map.contains_key("allOf") || map["allOf"].as_array().unwrap().len() > 1);
                    map.values().for_each(|v| collect(v, out));
                }
                Value::Array(list) => list.iter().for_each(|v| collect(v, out)),
                _ => {}
            }
        }
        collect(&doc, &mut refs);
        assert!(refs.len() > 100);
        for r in refs {
            let name = r.strip_prefix("#/definitions/").unwrap_or_else(|| panic!("{r} is not a v2 reference"));
            assert!(definitions.contains_key(name), "{name} is referenced but not defined");
        }
    }

    #[test]
    fn patch_operations_carry_their_kind_and_field_validation() {
        let doc = swagger();
        let item = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        let patch = &item["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "apps", "version": "v1", "kind": "Deployment"})
        );
        let parameters = patch["parameters"].as_array().unwrap();
        assert_eq!(parameters[0]["in"], "body");
        let validation = parameters.iter().find(|p| p["name"] == "fieldValidation").unwrap();
        assert_eq!((&validation["in"], &validation["type"]), (&json!("query"), &json!("string")));
        assert_eq!(
            item["parameters"][0],
            json!({"name": "name", "in": "path", "description": "name of the Deployment", "required": true, "type": "string", "uniqueItems": true})
        );
        assert_eq!(patch["responses"]["200"]["schema"]["$ref"], "#/definitions/io.k8s.api.apps.v1.Deployment");
    }

    #[test]
    fn int_or_string_is_a_string_in_v2() {
        let doc = swagger();
        let int_or_string = &doc["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"];
        assert_eq!((&int_or_string["type"], &int_or_string["format"]), (&json!("string"), &json!("int-or-string")));
    }

    /// A message's fields, by number: varints as numbers, everything else as bytes.
    fn fields(mut bytes: &[u8]) -> Vec<(u32, &[u8])> {
        fn varint(bytes: &mut &[u8]) -> u64 {
            let mut value = 0;
            for shift in (0..64).step_by(7) {
                let byte = bytes[0];
                *bytes = &bytes[1..];
                value |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            value
        }
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let tag = varint(&mut bytes);
            let len = if tag & 7 == 2 { varint(&mut bytes) as usize } else { 0 };
            out.push(((tag >> 3) as u32, &bytes[..len]));
            bytes = &bytes[len..];
        }
        out
    }

    fn field(bytes: &[u8], number: u32) -> &[u8] {
        fields(bytes).into_iter().find(|(n, _)| *n == number).map(|(_, v)| v).unwrap_or_default()
    }

    fn text(bytes: &[u8], number: u32) -> &str {
        std::str::from_utf8(field(bytes, number)).unwrap()
    }

    /// The walk cli-runtime's `supportsQueryParam` makes through the protobuf: Document.paths →
    /// NamedPathItem → PathItem.patch → vendor extension and ParametersItem → Parameter →
    /// NonBodyParameter → QueryParameterSubSchema.name.
    #[test]
    fn protobuf_carries_what_kubectl_127_looks_for() {
        let doc = &document().protobuf;
        assert_eq!(text(doc, 1), "2.0");
        let item = fields(field(doc, 8))
            .into_iter()
            .filter(|(n, _)| *n == 2)
            .find(|(_, named)| text(named, 1) == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
            .map(|(_, named)| field(named, 2))
            .expect("the deployment's path");
        let patch = field(item, 8);
        let gvk = fields(patch)
            .into_iter()
            .filter(|(n, _)| *n == 13)
            .map(|(_, named)| (text(named, 1), text(field(named, 2), 2)));
        assert!(gvk.into_iter().any(
            |e| e == ("x-kubernetes-group-version-kind", r#"{"group":"apps","kind":"Deployment","version":"v1"}"#)
        ));
        let queries: Vec<&str> = fields(patch)
            .into_iter()
            .filter(|(n, _)| *n == 8)
            .map(|(_, item)| field(field(field(item, 1), 2), 3))
            .filter(|query| !query.is_empty())
            .map(|query| text(query, 4))
            .collect();
        assert!(queries.contains(&"fieldValidation"), "{queries:?}");
        let definitions = fields(field(doc, 9));
        assert!(definitions.len() > 100);
        assert!(definitions.iter().any(|(_, named)| text(named, 1) == "io.k8s.api.core.v1.PodSpec"));
    }
}
