//! Objects as the store holds them: their JSON without `metadata.resourceVersion`, after a
//! 4-byte header giving the offset just inside `"metadata":{`. A read splices the store's mod
//! revision in there, so serving a list or a watch event costs a copy, not a parse.

use serde_json::Value;

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
    serde_json::from_slice(&render(stored, revision)).map_err(|e| {
        tracing::error!(error = %e, "a stored object does not parse");
        internal("a stored object is corrupt")
    })
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
    }

    #[test]
    fn empty_metadata_takes_the_revision_alone() {
        let stored = encode(&json!({"metadata": {}, "kind": "X"})).unwrap();
        assert_eq!(parse(&stored, 3).unwrap(), json!({"metadata": {"resourceVersion": "3"}, "kind": "X"}));
    }
}
