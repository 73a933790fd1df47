//! Errors as Kubernetes `Status` responses. The only place that knows HTTP status codes; the
//! internal cause of a 500 goes to the log, not to the client.

use axum::response::{IntoResponse, Response};
use flotilla_api::{ApiError, Reason};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

/// The API server's error: an [`ApiError`] on its way to becoming a `Status`.
#[derive(Debug)]
pub struct Error(pub ApiError);

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl From<ApiError> for Error {
    fn from(err: ApiError) -> Self {
        Error(err)
    }
}

impl From<flotilla_store::Error> for Error {
    fn from(err: flotilla_store::Error) -> Self {
        use flotilla_store::Error as S;
        let api = match &err {
            S::Compacted { requested, compact_revision } => {
                ApiError::new(Reason::Expired, format!("too old resource version: {requested} ({compact_revision})"))
            }
            S::FutureRevision { requested, current } => {
                let mut e = ApiError::new(
                    Reason::Timeout,
                    format!("Too large resource version: {requested}, current: {current}"),
                );
                e.retry_after_seconds = Some(1);
                e
            }
            S::RequestTooLarge { .. } | S::TooManyOperations { .. } => {
                ApiError::new(Reason::RequestEntityTooLarge, err.to_string())
            }
            S::NoLeader(_) | S::Unreachable { .. } | S::Stopped => {
                tracing::warn!(error = %err, "store unavailable");
                let mut e = ApiError::new(Reason::ServiceUnavailable, "the store is unavailable; retry shortly");
                e.retry_after_seconds = Some(1);
                e
            }
            S::Timeout(_) => {
                let mut e =
                    ApiError::new(Reason::Timeout, "the store did not answer in time; the request may still complete");
                e.retry_after_seconds = Some(1);
                e
            }
            _ => {
                tracing::error!(error = %err, "store failure");
                ApiError::internal("an internal error occurred in the store")
            }
        };
        Error(api)
    }
}

/// The HTTP status of a reason, as upstream maps them.
pub(crate) fn code(reason: Reason) -> StatusCode {
    match reason {
        Reason::BadRequest => StatusCode::BAD_REQUEST,
        Reason::Unauthorized => StatusCode::UNAUTHORIZED,
        Reason::Forbidden => StatusCode::FORBIDDEN,
        Reason::NotFound => StatusCode::NOT_FOUND,
        Reason::AlreadyExists | Reason::Conflict => StatusCode::CONFLICT,
        Reason::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        Reason::Expired | Reason::Gone => StatusCode::GONE,
        Reason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Reason::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
        Reason::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Reason::RequestEntityTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Reason::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        Reason::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Reason::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        Reason::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The `metav1.Status` of an error.
pub(crate) fn status(err: &ApiError) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": err.message,
        "reason": err.reason,
        "code": code(err.reason).as_u16(),
    });
    let mut details = serde_json::Map::new();
    if let Some(subject) = &err.subject {
        if !subject.name.is_empty() {
            details.insert("name".into(), subject.name.clone().into());
        }
        if !subject.group.is_empty() {
            details.insert("group".into(), subject.group.clone().into());
        }
        details.insert("kind".into(), subject.kind.clone().into());
    }
    if !err.causes.is_empty() {
        let causes: Vec<Value> = err
            .causes
            .iter()
            .map(|c| {
                let mut cause = json!({"reason": c.kind, "message": c.message()});
                if !c.field.is_empty() {
                    cause["field"] = c.field.clone().into();
                }
                cause
            })
            .collect();
        details.insert("causes".into(), causes.into());
    }
    if let Some(seconds) = err.retry_after_seconds {
        details.insert("retryAfterSeconds".into(), seconds.into());
    }
    if !details.is_empty() {
        status["details"] = Value::Object(details);
    }
    status
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = code(self.0.reason);
        let body = serde_json::to_vec(&status(&self.0)).unwrap_or_default();
        let mut response = (code, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(seconds) = self.0.retry_after_seconds
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use flotilla_api::FieldError;

    use super::*;

    #[test]
    fn invalid_objects_carry_their_causes() {
        let err = ApiError::invalid("", "Pod", "p", vec![FieldError::required("spec.containers[0].image", "")]);
        let s = status(&err);
        assert_eq!(s["code"], 422);
        assert_eq!(s["reason"], "Invalid");
        assert_eq!(s["details"]["kind"], "Pod");
        assert_eq!(
            s["details"]["causes"][0],
            json!({"reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers[0].image"})
        );
    }

    #[test]
    fn not_found_names_the_resource() {
        let s = status(&ApiError::not_found("apps", "deployments", "web"));
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"], json!({"name": "web", "group": "apps", "kind": "deployments"}));
    }
}
