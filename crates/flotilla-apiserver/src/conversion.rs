//! Versions served over another version's storage (autoscaling/v1 HorizontalPodAutoscalers,
//! stored as v2), as upstream's API server converts through its internal version: a request's
//! body is turned into the stored version, the request is handled as one for that version, and
//! every object in the answer (an object, a list, a Table's rows, each event of a watch) is
//! turned back into the version asked for. A patch is applied to the object as the version asked
//! for shows it (`handlers::Request::view`). Server-side apply is refused: its field ownership
//! would be recorded against the other version's fields.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flotilla_api::ApiError;
use flotilla_api::resource::{Conversion, ResourceDef};
use futures::StreamExt;
use http::{HeaderValue, Method, header};
use serde_json::Value;

use crate::error::Result;
use crate::handlers::{self, Request};

/// Handles `req`, which names a version stored as another.
pub(crate) async fn handle(mut req: Request<'_>) -> Result<Response> {
    let shown = req.target.resource;
    let conversion = shown.conversion.expect("a converted resource");
    let stored = flotilla_api::resource::find(shown.group, conversion.stored_version, shown.plural)
        .expect("the version a converted resource is stored in is served");
    let mut warnings = Vec::new();
    if matches!(req.method, Method::POST | Method::PUT) && !req.body.is_empty() {
        // Decoded and checked as the version it was sent in: its unknown and duplicate fields
        // are found as `fieldValidation` asks, against that version's schema.
        let media = handlers::header(&req.headers, header::CONTENT_TYPE).unwrap_or_default();
        let parsed = flotilla_api::body::decode(media, &req.body)?;
        let sent = parsed.value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        if !sent.is_empty() && sent != shown.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({sent}) does not match the expected API version ({})",
                shown.api_version()
            ))
            .into());
        }
        let validation = req.query.field_validation()?;
        let admitted = shown.ops.admit(parsed.value, None, validation, &parsed.duplicates)?;
        warnings = admitted.warnings;
        // What the version asked for cannot express is kept from what is stored.
        let current = match (&req.method, &req.target.name) {
            (&Method::PUT, Some(name)) => {
                let namespace = req.target.namespace.as_deref();
                match req.registry.get(stored, namespace, name).await {
                    Ok(current) => Some(current.value()?),
                    Err(e) if e.0.reason == flotilla_api::Reason::NotFound => None,
                    Err(e) => return Err(e),
                }
            }
            _ => None,
        };
        let converted = (conversion.to_stored)(admitted.object, current.as_ref());
        req.body = serde_json::to_vec(&converted).unwrap_or_default().into();
        req.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let watch = req.method == Method::GET && req.query.flag("watch");
    req.target.resource = stored;
    req.view = Some(shown);
    let response = handlers::handle(req).await?;
    let from = Shown { stored, shown, conversion };
    let mut response = if watch { from.stream(response) } else { from.body(response).await };
    for warning in warnings {
        // As every write's warnings are sent (RFC 7234's 299).
        if let Ok(value) = HeaderValue::from_str(&format!("299 - {warning:?}")) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    Ok(response)
}

/// How answers about `stored` objects are shown as `shown`.
#[derive(Clone, Copy)]
struct Shown {
    stored: &'static ResourceDef,
    shown: &'static ResourceDef,
    conversion: &'static Conversion,
}

impl Shown {
    /// Turns every stored object in `value` into the version shown.
    fn convert(self, value: &mut Value) {
        let stored_version = self.stored.api_version();
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        if kind == self.stored.kind && value["apiVersion"] == stored_version.as_str() {
            *value = (self.conversion.from_stored)(value.take());
        } else if kind == format!("{}List", self.stored.kind) {
            value["apiVersion"] = self.shown.api_version().into();
            for item in value["items"].as_array_mut().into_iter().flatten() {
                self.convert(item);
            }
        } else if kind == "Table" {
            for row in value["rows"].as_array_mut().into_iter().flatten() {
                if let Some(object) = row.get_mut("object") {
                    self.convert(object);
                }
            }
        } else if let Some(object) = value.get_mut("object").filter(|_| kind.is_empty()) {
            // A watch event.
            self.convert(object);
        }
    }

    /// A JSON answer, converted; anything else as it was.
    async fn body(self, response: Response) -> Response {
        let (mut parts, body) = response.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
            return crate::error::Error(ApiError::internal("the answer could not be read")).into_response();
        };
        let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
            return Response::from_parts(parts, Body::from(bytes));
        };
        self.convert(&mut value);
        let mut converted = serde_json::to_vec(&value).unwrap_or_default();
        converted.push(b'\n');
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(parts, Body::from(converted))
    }

    /// A watch: each event (a line of JSON) converted as it passes.
    fn stream(self, response: Response) -> Response {
        let (mut parts, body) = response.into_parts();
        let mut pending: Vec<u8> = Vec::new();
        let events = body.into_data_stream().map(move |chunk| {
            let chunk = chunk?;
            pending.extend_from_slice(&chunk);
            let mut out = Vec::new();
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                match serde_json::from_slice::<Value>(&line) {
                    Ok(mut event) => {
                        self.convert(&mut event);
                        out.extend(serde_json::to_vec(&event).unwrap_or_default());
                        out.push(b'\n');
                    }
                    Err(_) => out.extend(line),
                }
            }
            Ok::<Bytes, axum::Error>(Bytes::from(out))
        });
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(parts, Body::from_stream(events))
    }
}
