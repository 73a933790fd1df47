//! Errors as Kubernetes `Status` responses. The only place that knows HTTP status codes; the
//! internal cause of a 500 goes to the log, not to the client.

use axum::response::{IntoResponse, Response};
use flotilla_api::{ApiError, CauseType, Reason};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

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

/// The `metav1.Status` of an error, whose fields serialize in the order of upstream's Go type
/// (`kind`, `apiVersion`, `metadata`, `status`, `message`, `reason`, `details`, `code`): clients'
/// users compare these bodies verbatim.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Status<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: Empty,
    status: &'static str,
    message: &'a str,
    reason: Reason,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
    code: u16,
}

/// `metadata: {}`: a ListMeta, which Go always writes.
#[derive(Debug, Serialize)]
struct Empty {}

/// `metav1.StatusDetails`, in its Go field order.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Details<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    group: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    causes: Vec<Cause<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<u32>,
}

/// `metav1.StatusCause`: `reason`, `message`, `field`.
#[derive(Debug, Serialize)]
struct Cause<'a> {
    reason: &'a CauseType,
    message: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    field: &'a str,
}

/// The `metav1.Status` of an error.
pub(crate) fn status(err: &ApiError) -> Status<'_> {
    let subject = err.subject.as_ref();
    let details = Details {
        name: subject.map_or("", |s| s.name.as_str()),
        group: subject.map_or("", |s| s.group.as_str()),
        kind: subject.map_or("", |s| s.kind.as_str()),
        causes: err
            .causes
            .iter()
            .map(|c| Cause { reason: &c.kind, message: c.message(), field: c.field.as_str() })
            .collect(),
        retry_after_seconds: err.retry_after_seconds,
    };
    let empty = subject.is_none() && details.causes.is_empty() && details.retry_after_seconds.is_none();
    Status {
        kind: "Status",
        api_version: "v1",
        metadata: Empty {},
        status: "Failure",
        message: &err.message,
        reason: err.reason,
        details: (!empty).then_some(details),
        code: code(err.reason).as_u16(),
    }
}

/// A `Status` as its JSON body: one line, ending with a newline as Go's json.Encoder ends it.
pub(crate) fn status_body(err: &ApiError) -> Vec<u8> {
    let mut body = serde_json::to_vec(&status(err)).unwrap_or_default();
    body.push(b'\n');
    body
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = code(self.0.reason);
        let body = status_body(&self.0);
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
    use serde_json::json;

    use super::*;

    #[test]
    fn invalid_objects_carry_their_causes() {
        let err = ApiError::invalid("", "Pod", "p", vec![FieldError::required("spec.containers[0].image", "")]);
        let s = serde_json::to_value(status(&err)).unwrap();
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
        let s = serde_json::to_value(status(&ApiError::not_found("apps", "deployments", "web"))).unwrap();
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"], json!({"name": "web", "group": "apps", "kind": "deployments"}));
    }

    /// The body the official Python client's users compare verbatim: upstream's field order,
    /// no spaces, a newline.
    #[test]
    fn bodies_are_upstreams_byte_for_byte() {
        let mut err = ApiError::new(Reason::AlreadyExists, r#"configmaps "a" already exists"#);
        err.subject = ApiError::not_found("", "configmaps", "a").subject;
        assert_eq!(
            String::from_utf8(status_body(&err)).unwrap(),
            concat!(
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","#,
                r#""message":"configmaps \"a\" already exists","reason":"AlreadyExists","#,
                r#""details":{"name":"a","kind":"configmaps"},"code":409}"#,
                "\n"
            )
        );
        let bare = String::from_utf8(status_body(&ApiError::bad_request("no"))).unwrap();
        assert_eq!(
            bare,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"no\",\"reason\":\"BadRequest\",\"code\":400}\n"
        );
    }
}
