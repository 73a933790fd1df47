//! Watches over HTTP: newline-delimited JSON events on a chunked response.
//!
//! With no `resourceVersion` (or "0"), or with `sendInitialEvents=true`, the watch starts with a
//! synthetic ADDED event per existing object, then (bookmarks allowed) a bookmark annotated
//! `k8s.io/initial-events-end`: the streaming list that client-go's and kube-rs's WatchList
//! use instead of a list. Otherwise it replays from just after the given version. Objects entering or leaving a label or
//! field selector are ADDED or DELETED, as upstream's watch cache reports them. A store watch that
//! was cancelled (it fell behind) is resumed where it stopped; a compacted version ends the watch
//! with an ERROR event carrying 410 Expired, as client-go's reflector expects.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use flotilla_api::resource::ResourceDef;
use flotilla_api::selector::{FieldSelector, LabelSelector};
use flotilla_api::{ApiError, Reason};
use flotilla_store::{EventKind, KeyRange, Revision, WatchRequest, WatchResponse};
use http::header;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::codec;
use crate::error::{self, Result};
use crate::registry::{ListOptions, Registry, Selection, Stored, parse_resource_version};
use crate::request::Representation;
use crate::table::{IncludeObject, ListMeta, table};

#[derive(Clone, Debug)]
pub(crate) struct WatchParams {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
    pub(crate) resource_version: Option<String>,
    pub(crate) bookmarks: bool,
    /// `sendInitialEvents`; absent, the state is sent first when no version (or "0") is given.
    pub(crate) initial_events: Option<bool>,
    pub(crate) timeout: Duration,
    pub(crate) representation: Representation,
    pub(crate) include: IncludeObject,
}

/// The annotation on the bookmark after a watch's initial events (upstream's
/// `metav1.InitialEventsAnnotationKey`).
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// Events buffered between the store and a slow client; past it the client is simply slow and
/// the store watch queues (and, past its own bound, is cancelled and resumed).
const SEND_BUFFER: usize = 128;

pub(crate) fn watch(
    registry: Registry,
    def: &'static ResourceDef,
    namespace: Option<String>,
    params: WatchParams,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(SEND_BUFFER);
    tokio::spawn(async move { Stream { registry, def, namespace, params, tx }.run().await });
    let body =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx)) },
        );
    ([(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response()
}

struct Stream {
    registry: Registry,
    def: &'static ResourceDef,
    namespace: Option<String>,
    params: WatchParams,
    tx: mpsc::Sender<Bytes>,
}

/// The client went away.
struct Gone;

impl Stream {
    /// Streams until the timeout, the client leaving, or an error (sent as an ERROR event:
    /// the response has started, so a status code can no longer say it).
    async fn run(self) {
        let deadline = tokio::time::Instant::now() + self.params.timeout;
        if let Ok(Err(e)) = tokio::time::timeout_at(deadline, self.events()).await {
            tracing::debug!(error = %e.0, "watch ended with an error");
            let _ = self.send("ERROR", &error::status(&e.0)).await;
        }
    }

    async fn events(&self) -> Result<()> {
        let resource_version = self.params.resource_version.as_deref();
        let initial_events = self.params.initial_events.unwrap_or(matches!(resource_version, None | Some("0")));
        let mut next = if initial_events {
            // The state at the given version or newer (so at the latest), as ADDED events.
            let options = ListOptions {
                labels: self.params.labels.clone(),
                fields: self.params.fields.clone(),
                resource_version: self.params.resource_version.clone(),
                ..Default::default()
            };
            let listed = self.registry.list(self.def, self.namespace.as_deref(), &options).await?;
            for item in &listed.items {
                if self.send_object("ADDED", item).await.is_err() {
                    return Ok(());
                }
            }
            // Upstream defaults a watch without a version to `sendInitialEvents=true`, whose
            // state ends with this bookmark when bookmarks are allowed: a streaming list's
            // client knows from it that it has the whole state.
            if self.params.bookmarks && self.bookmark(listed.revision, true).await.is_err() {
                return Ok(());
            }
            listed.revision + 1
        } else {
            match resource_version {
                None | Some("0") => self.registry.store().revision() + 1,
                Some(rv) => parse_resource_version(rv)? + 1,
            }
        };
        let prefix = Registry::prefix(self.def, self.namespace.as_deref());
        let selection = Selection::new(&self.params.labels, &self.params.fields);
        loop {
            let mut request = WatchRequest::new(KeyRange::prefix(prefix.clone())).from_revision(next).with_prev_kv();
            if self.params.bookmarks {
                request = request.with_progress_notify();
            }
            let mut watch = match self.registry.store().watch(request) {
                Ok(watch) => watch,
                Err(flotilla_store::Error::Compacted { requested, compact_revision }) => {
                    return Err(expired(requested.saturating_sub(1), compact_revision));
                }
                Err(e) => return Err(e.into()),
            };
            loop {
                match watch.next().await {
                    Some(Ok(WatchResponse::Events(events))) => {
                        for event in events {
                            next = event.kv.mod_revision + 1;
                            if self.deliver(event, &selection).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Some(Ok(WatchResponse::Progress { revision })) => {
                        next = next.max(revision + 1);
                        if self.params.bookmarks && self.bookmark(revision, false).await.is_err() {
                            return Ok(());
                        }
                    }
                    Some(Err(flotilla_store::Error::WatchCancelled { resume_from, .. })) => {
                        next = resume_from;
                        break;
                    }
                    Some(Err(flotilla_store::Error::Compacted { requested, compact_revision })) => {
                        return Err(expired(requested.saturating_sub(1), compact_revision));
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Ok(()),
                }
            }
        }
    }

    async fn deliver(&self, event: flotilla_store::Event, selection: &Selection<'_>) -> Result<(), Gone> {
        let filtered = !selection.is_everything();
        let revision = event.kv.mod_revision;
        let opened = |kv: flotilla_store::KeyValue| self.registry.open(self.def, &kv.key, kv.value, kv.mod_revision);
        let previous = match event.prev_kv.map(opened).transpose() {
            Ok(previous) => previous,
            Err(e) => return self.send("ERROR", &error::status(&e.0)).await,
        };
        match event.kind {
            EventKind::Put => {
                let current = match opened(event.kv) {
                    Ok(current) => current,
                    Err(e) => return self.send("ERROR", &error::status(&e.0)).await,
                };
                if !filtered {
                    let kind = if previous.is_some() { "MODIFIED" } else { "ADDED" };
                    return self.send_object(kind, &current).await;
                }
                let now = selection.matches(&current);
                let before = previous.as_ref().map(|p| selection.matches(p));
                match (before, now) {
                    (None | Some(false), true) => self.send_object("ADDED", &current).await,
                    (Some(true), true) => self.send_object("MODIFIED", &current).await,
                    (Some(true), false) => self.send_object("DELETED", &current).await,
                    _ => Ok(()),
                }
            }
            EventKind::Delete => match previous {
                // A deleted object is reported as it was, at the revision that deleted it.
                Some(previous) if !filtered || selection.matches(&previous) => {
                    self.send_object("DELETED", &Stored { revision, ..previous }).await
                }
                _ => Ok(()),
            },
        }
    }

    async fn send_object(&self, kind: &str, stored: &Stored) -> Result<(), Gone> {
        self.send_as(kind, stored, self.params.include).await
    }

    /// `stored` in the watch's representation; a Table's row carries `include` of it.
    async fn send_as(&self, kind: &str, stored: &Stored, include: IncludeObject) -> Result<(), Gone> {
        match self.params.representation {
            Representation::Object => {
                let mut line = format!("{{\"type\":\"{kind}\",\"object\":").into_bytes();
                codec::render_into(&stored.bytes, stored.revision, &mut line);
                line.extend_from_slice(b"}\n");
                self.tx.send(Bytes::from(line)).await.map_err(|_| Gone)
            }
            Representation::Table(version) => {
                let meta = ListMeta { resource_version: stored.revision.to_string(), ..Default::default() };
                match table(self.def, std::slice::from_ref(stored), version, include, meta) {
                    Ok(table) => self.send(kind, &table).await,
                    Err(e) => self.send("ERROR", &error::status(&e.0)).await,
                }
            }
            Representation::Metadata(version) => {
                let object = stored.value().unwrap_or_default();
                let partial = json!({"kind": "PartialObjectMetadata", "apiVersion": format!("meta.k8s.io/{version}"), "metadata": object.get("metadata")});
                self.send(kind, &partial).await
            }
        }
    }

    /// A bookmark at `revision`, in the watch's representation as upstream converts it (a
    /// metadata watch's client cannot decode the kind itself); the one that ends a watch's
    /// initial events is annotated so.
    async fn bookmark(&self, revision: Revision, ends_initial_events: bool) -> Result<(), Gone> {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if ends_initial_events {
            metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
        }
        let object = json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": metadata});
        match codec::encode(&object) {
            // Its Table row carries its metadata, whatever the watch asked rows to carry.
            Ok(bytes) => {
                self.send_as("BOOKMARK", &Stored { bytes, revision, stale: false }, IncludeObject::Metadata).await
            }
            Err(e) => self.send("ERROR", &error::status(&e.0)).await,
        }
    }

    async fn send(&self, kind: &str, object: &impl Serialize) -> Result<(), Gone> {
        /// A watch event in upstream's field order.
        #[derive(Serialize)]
        struct Event<'a, T> {
            #[serde(rename = "type")]
            kind: &'a str,
            object: &'a T,
        }
        let mut line = serde_json::to_vec(&Event { kind, object }).unwrap_or_default();
        line.push(b'\n');
        self.tx.send(Bytes::from(line)).await.map_err(|_| Gone)
    }
}

fn expired(requested: Revision, compacted: Revision) -> crate::error::Error {
    ApiError::new(Reason::Expired, format!("too old resource version: {requested} ({compacted})")).into()
}
