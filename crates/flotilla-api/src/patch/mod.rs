//! The patch formats of `PATCH` requests: JSON patch (RFC 6902), JSON merge patch (RFC 7386),
//! and strategic merge patch, which is what client-side `kubectl apply` sends.

mod strategic;

use json_patch::{AddOperation, PatchOperation};
use serde_json::Value;

pub use strategic::strategic_merge;

use crate::error::{ApiError, Reason, Result};

/// A `PATCH` request's `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    /// Server-side apply.
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// Applies an RFC 6902 JSON patch. A patch that does not parse is a bad request; one that does
/// not apply (a failed `test`, a missing path) is unprocessable, as upstream answers.
pub fn json_patch(document: &mut Value, patch: &Value) -> Result<()> {
    let operations: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    // One operation at a time, on a copy: each may depend on what the ones before it did.
    let mut patched = document.clone();
    for (index, operation) in operations.0.into_iter().enumerate() {
        let operation = as_upstream_applies(&patched, operation);
        json_patch::patch(&mut patched, std::slice::from_ref(&operation)).map_err(|e| {
            ApiError::new(Reason::Invalid, format!("operation '/{index}' failed at path '{}': {}", e.path, e.kind))
        })?;
    }
    *document = patched;
    Ok(())
}

/// Upstream applies JSON patches with evanphx/json-patch v4, whose `replace` sets an object
/// member that is not there yet, where RFC 6902 says it must fail. Clients rely on it: an
/// optional field left out because it is empty (`spec.minReadySeconds`) is "replaced".
fn as_upstream_applies(document: &Value, operation: PatchOperation) -> PatchOperation {
    if let PatchOperation::Replace(replace) = &operation
        && document.pointer(replace.path.as_str()).is_none()
        && let Some((parent, _)) = replace.path.split_back()
        && document.pointer(parent.as_str()).is_some_and(Value::is_object)
    {
        return PatchOperation::Add(AddOperation { path: replace.path.clone(), value: replace.value.clone() });
    }
    operation
}

/// Applies an RFC 7386 JSON merge patch.
pub fn merge_patch(document: &mut Value, patch: &Value) -> Result<()> {
    if !patch.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    json_patch::merge(document, patch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_patch_replaces_a_missing_member_as_upstream_does() {
        let mut doc = json!({"spec": {"replicas": 1}, "list": [1]});
        let patch = json!([
            {"op": "replace", "path": "/spec/minReadySeconds", "value": 5},
            {"op": "test", "path": "/spec/minReadySeconds", "value": 5},
        ]);
        json_patch(&mut doc, &patch).unwrap();
        assert_eq!(doc["spec"], json!({"replicas": 1, "minReadySeconds": 5}));
        // Still refused: a missing parent, an index past the end, and a failed test, which
        // leaves the document as it was.
        for (patch, message) in [
            (json!([{"op": "replace", "path": "/status/phase", "value": "x"}]), "operation '/0' failed"),
            (json!([{"op": "replace", "path": "/list/3", "value": 2}]), "operation '/0' failed"),
            (
                json!([{"op": "add", "path": "/spec/paused", "value": true}, {"op": "test", "path": "/spec/replicas", "value": 2}]),
                "operation '/1' failed at path '/spec/replicas'",
            ),
        ] {
            let before = doc.clone();
            let err = json_patch(&mut doc, &patch).unwrap_err();
            assert!(err.message.starts_with(message), "{}", err.message);
            assert_eq!(doc, before);
        }
    }
}
