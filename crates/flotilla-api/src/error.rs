//! Errors in the Kubernetes vocabulary: a `reason` and, for invalid objects, the fields at fault.
//! The API server renders them as `metav1.Status`; only it knows HTTP status codes.

use serde::{Deserialize, Serialize};

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// `metav1.StatusReason`: what kind of failure this is. Clients (kubectl, client-go) branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    AlreadyExists,
    Conflict,
    Invalid,
    /// The requested resource version is no longer available (410).
    Expired,
    Gone,
    MethodNotAllowed,
    NotAcceptable,
    UnsupportedMediaType,
    RequestEntityTooLarge,
    TooManyRequests,
    Timeout,
    ServiceUnavailable,
    InternalError,
}

/// `metav1.CauseType` of one field error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CauseType {
    FieldValueRequired,
    FieldValueInvalid,
    FieldValueNotSupported,
    FieldValueForbidden,
    FieldValueDuplicate,
    FieldValueTooLong,
    FieldValueTypeInvalid,
    FieldValueNotFound,
    /// A strict-decoding failure (an unknown or duplicate field).
    FieldValueUnknown,
    /// A field a server-side apply would change that another manager owns.
    FieldManagerConflict,
    /// A read asked for a resource version the store has not reached (with a 504).
    ResourceVersionTooLarge,
}

/// One thing wrong with one field, as upstream's `field.Error` renders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub kind: CauseType,
    /// The field's path, e.g. `spec.containers[0].image`.
    pub field: String,
    /// The offending value, when there is one to show.
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError { kind: CauseType::FieldValueRequired, field: field.into(), value: None, detail: detail.into() }
    }

    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, detail: impl Into<String>) -> Self {
        FieldError {
            kind: CauseType::FieldValueInvalid,
            field: field.into(),
            value: Some(value.to_string()),
            detail: detail.into(),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: impl std::fmt::Display, supported: &[&str]) -> Self {
        let supported = supported.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        FieldError {
            kind: CauseType::FieldValueNotSupported,
            field: field.into(),
            value: Some(value.to_string()),
            detail: format!("supported values: {supported}"),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError { kind: CauseType::FieldValueForbidden, field: field.into(), value: None, detail: detail.into() }
    }

    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        FieldError {
            kind: CauseType::FieldValueDuplicate,
            field: field.into(),
            value: Some(value.to_string()),
            detail: String::new(),
        }
    }

    pub fn not_found(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        FieldError {
            kind: CauseType::FieldValueNotFound,
            field: field.into(),
            value: Some(value.to_string()),
            detail: String::new(),
        }
    }

    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        FieldError {
            kind: CauseType::FieldValueTooLong,
            field: field.into(),
            value: None,
            detail: format!("must have at most {max} bytes"),
        }
    }

    /// The message of the cause: `Required value`, `Invalid value: "x": detail`, …
    pub fn message(&self) -> String {
        let label = match self.kind {
            CauseType::FieldValueRequired => "Required value",
            CauseType::FieldValueInvalid => "Invalid value",
            CauseType::FieldValueNotSupported => "Unsupported value",
            CauseType::FieldValueForbidden => "Forbidden",
            CauseType::FieldValueDuplicate => "Duplicate value",
            CauseType::FieldValueTooLong => "Too long",
            CauseType::FieldValueTypeInvalid => "Invalid value",
            CauseType::FieldValueNotFound => "Not found",
            CauseType::FieldValueUnknown => "unknown field",
            CauseType::FieldManagerConflict | CauseType::ResourceVersionTooLarge => return self.detail.clone(),
        };
        let mut message = label.to_string();
        if let Some(value) = &self.value {
            message.push_str(&format!(": {value:?}"));
        }
        if !self.detail.is_empty() {
            message.push_str(": ");
            message.push_str(&self.detail);
        }
        message
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message())
    }
}

/// The object an error is about, for `Status.details`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub group: String,
    /// The resource's kind for validation errors, its plural for the others (as upstream).
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub reason: Reason,
    pub message: String,
    /// Boxed: most errors have none, and every `Result` in the API carries this type.
    pub subject: Option<Box<Subject>>,
    pub causes: Vec<FieldError>,
    /// Seconds after which the client may retry (for 429 and 503).
    pub retry_after_seconds: Option<u32>,
}

impl ApiError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        ApiError { reason, message: message.into(), subject: None, causes: Vec::new(), retry_after_seconds: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(Reason::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(Reason::InternalError, message)
    }

    /// `pods "web" not found`.
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        ApiError::new(Reason::NotFound, format!("{} {name:?} not found", qualified(group, plural)))
            .about(group, plural, name)
    }

    /// `pods "web" already exists`.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        ApiError::new(Reason::AlreadyExists, format!("{} {name:?} already exists", qualified(group, plural)))
            .about(group, plural, name)
    }

    /// `Operation cannot be fulfilled on pods "web": <why>`.
    pub fn conflict(group: &str, plural: &str, name: &str, why: impl std::fmt::Display) -> Self {
        ApiError::new(
            Reason::Conflict,
            format!("Operation cannot be fulfilled on {} {name:?}: {why}", qualified(group, plural)),
        )
        .about(group, plural, name)
    }

    /// `Pod "web" is invalid: [spec.containers[0].image: Required value, …]`.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<FieldError>) -> Self {
        let list = match causes.as_slice() {
            [one] => one.to_string(),
            many => format!("[{}]", many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
        };
        // `Deployment.apps "web" is invalid`, `Pod "web" is invalid`: the qualified kind.
        let qualified_kind = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        let mut err = ApiError::new(Reason::Invalid, format!("{qualified_kind} {name:?} is invalid: {list}"))
            .about(group, kind, name);
        err.causes = causes;
        err
    }

    /// `namespaces "kube-system" is forbidden: this namespace may not be deleted`.
    pub fn forbidden(group: &str, plural: &str, name: &str, why: impl std::fmt::Display) -> Self {
        ApiError::new(Reason::Forbidden, format!("{} {name:?} is forbidden: {why}", qualified(group, plural)))
            .about(group, plural, name)
    }

    /// A read at resource version `wanted` that the store did not reach in time (upstream's
    /// watch cache waits 3 s): 504 with a hint to retry in a second.
    pub fn too_large_resource_version(wanted: u64, current: u64) -> Self {
        let mut err = ApiError::new(
            Reason::Timeout,
            format!("Timeout: Too large resource version: {wanted}, current: {current}"),
        );
        err.causes = vec![FieldError {
            kind: CauseType::ResourceVersionTooLarge,
            field: String::new(),
            value: None,
            detail: "Too large resource version".into(),
        }];
        err.retry_after_seconds = Some(1);
        err
    }

    pub fn about(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.subject = Some(Box::new(Subject { group: group.into(), kind: kind.into(), name: name.into() }));
        self
    }
}

/// `deployments.apps` for grouped resources, `pods` for core ones, as upstream's messages say.
pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() { plural.to_string() } else { format!("{plural}.{group}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_like_upstream() {
        assert_eq!(ApiError::not_found("apps", "deployments", "web").message, "deployments.apps \"web\" not found");
        assert_eq!(ApiError::not_found("", "pods", "web").message, "pods \"web\" not found");
        let one = ApiError::invalid("", "Pod", "web", vec![FieldError::required("spec.containers[0].image", "")]);
        assert_eq!(one.message, "Pod \"web\" is invalid: spec.containers[0].image: Required value");
        let two = ApiError::invalid(
            "",
            "Pod",
            "Web",
            vec![
                FieldError::invalid(
                    "metadata.name",
                    "Web",
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters",
                ),
                FieldError::not_supported("spec.restartPolicy", "Sometimes", &["Always", "OnFailure", "Never"]),
            ],
        );
        assert_eq!(
            two.message,
            "Pod \"Web\" is invalid: [metadata.name: Invalid value: \"Web\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"]"
        );
        let conflict = ApiError::conflict(
            "",
            "pods",
            "web",
            "the object has been modified; please apply your changes to the latest version and try again",
        );
        assert!(
            conflict.message.starts_with("Operation cannot be fulfilled on pods \"web\": the object has been modified")
        );
    }
}
