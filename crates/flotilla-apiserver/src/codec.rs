//! Objects as the store holds them: their JSON without `metadata.resourceVersion`, after a
//! 4-byte header giving the offset just inside `"metadata":{`. A read splices the store's mod
//! revision in there, so serving a list or a watch event costs a copy, not a parse.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use flotilla_api::ApiError;

/// Set in the header when metadata has other fields, so the spliced field needs a comma.
const MORE_FIELDS: u32 = 1 << 31;

/// Encodes an object for the store. Its `metadata.resourceVersion`, if any, is dropped: the
/// store's revision is the only resource version.
pub(crate) fn encode(object: &Value) -> Result<Vec<u8>> {
    let map = object.as_object().ok_or_else(|| internal("an object must be a JSON object"))?;
    let mut out = vec![0u8; 4];
    out.push(b'{');
    let mut header = None;
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key).map_err(|e| internal(&e.to_string()))?;
        out.push(b':');
        if key != "metadata" {
            serde_json::to_writer(&mut out, value).map_err(|e| internal(&e.to_string()))?;
            continue;
        }
        let meta = value.as_object().ok_or_else(|| internal("metadata must be a JSON object"))?;
        out.push(b'{');
        let offset = (out.len() - 4) as u32;
        let mut first = true;
        for (field, value) in meta.iter().filter(|(k, _)| *k != "resourceVersion") {
            if !first {
                out.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut out, field).map_err(|e| internal(&e.to_string()))?;
            out.push(b':');
            serde_json::to_writer(&mut out, value).map_err(|e| internal(&e.to_string()))?;
        }
        out.push(b'}');
        header = Some(if first { offset } else { offset | MORE_FIELDS });
    }
    out.push(b'}');
    let header = header.ok_or_else(|| internal("an object must have metadata"))?;
    out[..4].copy_from_slice(&header.to_be_bytes());
    Ok(out)
}

/// Appends the object's JSON, with `resourceVersion` set to `revision`, to `out`.
pub(crate) fn render_into(stored: &[u8], revision: u64, out: &mut Vec<u8>) {
    let Some((header, json)) = stored.split_first_chunk::<4>() else { return };
    let header = u32::from_be_bytes(*header);
    let offset = ((header & !MORE_FIELDS) as usize).min(json.len());
    out.reserve(json.len() + 40);
    out.extend_from_slice(&json[..offset]);
    out.extend_from_slice(b"\"resourceVersion\":\"");
    out.extend_from_slice(revision.to_string().as_bytes());
    out.push(b'"');
    if header & MORE_FIELDS != 0 {
        out.push(b',');
    }
    out.extend_from_slice(&json[offset..]);
}

/// The object's JSON with its resource version.
pub(crate) fn render(stored: &[u8], revision: u64) -> Vec<u8> {
    let mut out = Vec::new();
    render_into(stored, revision, &mut out);
    out
}

/// The object as a JSON value, with its resource version.
pub(crate) fn parse(stored: &[u8], revision: u64) -> Result<Value> {
    let mut object: Value = serde_json::from_slice(json_of(stored)?).map_err(corrupt)?;
    let meta = object.get_mut("metadata").and_then(Value::as_object_mut).ok_or_else(|| corrupt("no metadata"))?;
    meta.insert("resourceVersion".into(), revision.to_string().into());
    Ok(object)
}

/// The JSON of a stored object, behind its header.
fn json_of(stored: &[u8]) -> Result<&[u8]> {
    stored.split_first_chunk::<4>().map(|(_, json)| json).ok_or_else(|| corrupt("no header"))
}

fn corrupt(why: impl std::fmt::Display) -> Error {
    tracing::error!(error = %why, "a stored object does not parse");
    internal("a stored object is corrupt")
}

/// The parts of an object a reader looks at (`/metadata/labels`, `/spec/nodeName`): parsing
/// through it builds only those, stepping over the rest of the JSON without allocating. A label
/// or field selector reads a few fields of each of thousands of objects, in every filtered list
/// and for every event of every filtered watch (each node's agent has one on all pods).
#[derive(Clone, Debug, Default)]
pub(crate) struct Projection {
    /// Fields kept below this one; none means all of it (below the root: the root with none
    /// keeps nothing).
    fields: BTreeMap<String, Projection>,
}

impl Projection {
    /// Also keeps what is at `pointer`, a JSON pointer of field names.
    pub(crate) fn keep(&mut self, pointer: &str) {
        let mut at = self;
        for name in pointer.split('/').filter(|n| !n.is_empty()) {
            let known = at.fields.contains_key(name);
            at = at.fields.entry(name.to_string()).or_default();
            if known && at.fields.is_empty() {
                return; // kept whole already
            }
        }
        // Whatever was kept below is now kept whole.
        at.fields.clear();
    }

    /// The stored object, with only the kept fields.
    pub(crate) fn parse(&self, stored: &[u8]) -> Result<Value> {
        let mut reader = serde_json::Deserializer::from_slice(json_of(stored)?);
        Kept { fields: &self.fields, root: true }.deserialize(&mut reader).map_err(corrupt)
    }
}

/// Parses one JSON value keeping `fields` of it (all of it, below the root, when empty).
struct Kept<'a> {
    fields: &'a BTreeMap<String, Projection>,
    root: bool,
}

impl<'de> DeserializeSeed<'de> for Kept<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> std::result::Result<Value, D::Error> {
        if self.fields.is_empty() && !self.root {
            return Value::deserialize(deserializer);
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Kept<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(field) = map.next_key_seed(FieldName(self.fields))? {
            match field {
                Some((name, below)) => {
                    kept.insert(name, map.next_value_seed(Kept { fields: &below.fields, root: false })?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(kept))
    }

    // A field expected to hold fields holds something else: kept as it is when simple, since a
    // selector compares it (and finds nothing below it); a list is not looked into.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
}

/// A field's name, and what to keep of its value if it is kept at all; read without
/// allocating for the fields that are not.
struct FieldName<'a>(&'a BTreeMap<String, Projection>);

impl<'de, 'a> DeserializeSeed<'de> for FieldName<'a> {
    type Value = Option<(String, &'a Projection)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> std::result::Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'a> Visitor<'_> for FieldName<'a> {
    type Value = Option<(String, &'a Projection)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, name: &str) -> std::result::Result<Self::Value, E> {
        Ok(self.0.get_key_value(name).map(|(name, below)| (name.clone(), below)))
    }
}

fn internal(message: &str) -> Error {
    Error(ApiError::internal(message))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_revision_is_spliced_into_metadata() {
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "7"}, "data": {"metadata": "{"}});
        let stored = encode(&object).unwrap();
        let read = parse(&stored, 42).unwrap();
        assert_eq!(read["metadata"], json!({"name": "c", "resourceVersion": "42"}));
        assert_eq!(read["data"], object["data"]);
        let rendered: Value = serde_json::from_slice(&render(&stored, 42)).unwrap();
        assert_eq!(rendered, read);
    }

    #[test]
    fn a_projection_keeps_only_the_fields_asked_for() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"app": "web", "tier": "front"}, "annotations": {"a": "b"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}], "hostNetwork": true},
            "status": {"phase": "Running", "conditions": [{"type": "Ready"}]},
            "source": "text, not fields",
        });
        let stored = encode(&pod).unwrap();
        let mut projection = Projection::default();
        assert_eq!(projection.parse(&stored).unwrap(), json!({}));
        for pointer in ["/metadata/labels", "/spec/nodeName", "/spec/hostNetwork", "/status/phase", "/source/component"]
        {
            projection.keep(pointer);
        }
        assert_eq!(
            projection.parse(&stored).unwrap(),
            json!({
                "metadata": {"labels": {"app": "web", "tier": "front"}},
                "spec": {"nodeName": "n1", "hostNetwork": true},
                "status": {"phase": "Running"},
                "source": "text, not fields",
            })
        );
        // Keeping a field keeps all of it, whatever was asked of it before.
        projection.keep("/status");
        projection.keep("/status/conditions");
        assert_eq!(projection.parse(&stored).unwrap()["status"], pod["status"]);
        assert!(projection.parse(&[0, 0, 0, 0, b'{']).is_err());
    }

    #[test]
    fn empty_metadata_takes_the_revision_alone() {
        let stored = encode(&json!({"metadata": {}, "kind": "X"})).unwrap();
        let expected = json!({"metadata": {"resourceVersion": "3"}, "kind": "X"});
        assert_eq!(parse(&stored, 3).unwrap(), expected);
        assert_eq!(serde_json::from_slice::<Value>(&render(&stored, 3)).unwrap(), expected);
    }
}
