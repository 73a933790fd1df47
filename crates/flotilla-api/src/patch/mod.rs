//! The patch formats of `PATCH` requests: JSON patch (RFC 6902), JSON merge patch (RFC 7386),
//! and strategic merge patch, which is what client-side `kubectl apply` sends.

mod strategic;

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
    json_patch::patch(document, &operations).map_err(|e| ApiError::new(Reason::Invalid, e.to_string()))
}

/// Applies an RFC 7386 JSON merge patch.
pub fn merge_patch(document: &mut Value, patch: &Value) -> Result<()> {
    if !patch.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    json_patch::merge(document, patch);
    Ok(())
}
