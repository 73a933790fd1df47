//! Field selectors: `metadata.name=x`, `spec.nodeName!=y`, joined by commas. Each resource
//! supports `metadata.name`, `metadata.namespace` and a few fields of its own.

use crate::error::{ApiError, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub value: String,
    pub equal: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses a selector, refusing fields the resource does not support (as upstream does).
    pub fn parse(text: &str, supported: impl Fn(&str) -> bool) -> Result<Self> {
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{text}'; can't understand '{term}'")));
            };
            let field = field.trim();
            if !supported(field) {
                return Err(ApiError::bad_request(format!("field label not supported: {field}")));
            }
            requirements.push(FieldRequirement { field: field.to_string(), value: unescape(value.trim()), equal });
        }
        Ok(FieldSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether the object's fields, looked up by `value_of`, satisfy every requirement. A missing
    /// field reads as the empty string, as upstream's field sets do.
    pub fn matches(&self, value_of: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| {
            let value = value_of(&r.field).unwrap_or_default();
            (value == r.value) == r.equal
        })
    }

    /// The value `field` is required to equal, if the selector pins it (for `metadata.name=x`).
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.requirements.iter().find(|r| r.equal && r.field == field).map(|r| r.value.as_str())
    }
}

/// Splits on commas not escaped with a backslash.
fn split_terms(text: &str) -> Vec<String> {
    let mut terms = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        match c {
            '\\' if !escaped => {
                escaped = true;
                terms.last_mut().unwrap().push(c);
                continue;
            }
            ',' if !escaped => terms.push(String::new()),
            _ => terms.last_mut().unwrap().push(c),
        }
        escaped = false;
    }
    terms
}

fn unescape(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_fields(field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace" | "spec.nodeName" | "status.phase")
    }

    #[test]
    fn node_describe_selector_matches_as_upstream() {
        let s =
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Succeeded,status.phase!=Failed", pod_fields).unwrap();
        let running = |f: &str| match f {
            "spec.nodeName" => Some("n1".to_string()),
            "status.phase" => Some("Running".to_string()),
            _ => None,
        };
        assert!(s.matches(running));
        let done = |f: &str| match f {
            "spec.nodeName" => Some("n1".to_string()),
            "status.phase" => Some("Succeeded".to_string()),
            _ => None,
        };
        assert!(!s.matches(done));
        // An unset field is the empty string: `spec.nodeName=` selects unscheduled pods.
        let unscheduled = FieldSelector::parse("spec.nodeName=", pod_fields).unwrap();
        assert!(unscheduled.matches(|_| None));
    }

    #[test]
    fn unsupported_fields_and_garbage_are_refused() {
        let err = FieldSelector::parse("spec.foo=bar", pod_fields).unwrap_err();
        assert_eq!(err.message, "field label not supported: spec.foo");
        assert!(FieldSelector::parse("metadata.name", pod_fields).is_err());
    }

    #[test]
    fn escaped_commas_stay_in_values() {
        let s = FieldSelector::parse(r"metadata.name=a\,b", pod_fields).unwrap();
        assert_eq!(s.exact("metadata.name"), Some("a,b"));
    }
}
