//! The resource endpoints: every verb on collections, objects and their subresources.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use flotilla_api::managed::{self, FieldManager};
use flotilla_api::patch::{self, PatchType};
use flotilla_api::resource::{ResourceDef, Subresource};
use flotilla_api::selector::{FieldSelector, LabelSelector};
use flotilla_api::{ApiError, FieldError, Reason};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::{Value, json};

use crate::codec;
use crate::error::{Error, Result};
use crate::node_proxy::NodeProxy;
use crate::registry::{
    DeleteOptions, Deleted, ListOptions, ObjectRef, Registry, Stored, WriteOptions, Written, now,
    parse_resource_version,
};
use crate::request::{Query, Representation, Target, representation};
use crate::table::{IncludeObject, ListMeta, table};
use crate::watch::{WatchParams, watch};

/// Upstream's limit on request bodies: `MaxRequestBodyBytes`, 3 MiB.
pub(crate) const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub(crate) struct Request<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) nodes: &'a NodeProxy,
    /// The node making the request, when a node makes it: its writes go through NodeRestriction.
    pub(crate) node: Option<String>,
    pub(crate) method: Method,
    pub(crate) target: Target,
    pub(crate) query: Query,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The client's side of an upgrade it asked for (a stream into a pod), once the answer
    /// switches protocols: taken by whoever answers it.
    pub(crate) upgrade: std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>,
    /// The version the client asked in, when the target is another version it is stored as
    /// (`conversion.rs`): a patch applies to the object as this version shows it.
    pub(crate) view: Option<&'static ResourceDef>,
}

pub(crate) async fn handle(req: Request<'_>) -> Result<Response> {
    let def = req.target.resource;
    let namespace = req.target.namespace.clone();
    match (&req.method, req.target.name.clone(), req.target.subresource) {
        (&Method::GET, None, None) if req.query.flag("watch") => start_watch(&req),
        (&Method::GET, None, None) => list(&req).await,
        (&Method::POST, None, None) => {
            if def.namespaced && namespace.is_none() {
                return Err(method_not_allowed(&req.method));
            }
            create(&req).await
        }
        (&Method::DELETE, None, None) => delete_collection(&req).await,
        (&Method::GET, Some(name), None | Some(Subresource::Status)) => {
            if let Some(rv) = req.query.get("resourceVersion").filter(|rv| !rv.is_empty() && *rv != "0") {
                req.registry.wait_until_fresh(parse_resource_version(rv)?).await?;
            }
            let stored = req.registry.get(def, namespace.as_deref(), &name).await?;
            respond_object(&req, StatusCode::OK, &stored, &[])
        }
        (&Method::PUT, Some(name), sub @ (None | Some(Subresource::Status | Subresource::Finalize))) => {
            let (body, options) = object_body(&req)?;
            let written = req.registry.update(def, namespace.as_deref(), &name, sub, body, options).await?;
            let code = if written.created { StatusCode::CREATED } else { StatusCode::OK };
            respond_object(&req, code, &written.object, &written.warnings)
        }
        (&Method::PATCH, Some(name), sub @ (None | Some(Subresource::Status))) => patch_object(&req, &name, sub).await,
        (&Method::DELETE, Some(name), None) => delete(&req, &name).await,
        (method, Some(name), Some(Subresource::Scale)) => scale(&req, method.clone(), &name).await,
        (&Method::POST, Some(name), Some(Subresource::Binding)) => bind(&req, &name).await,
        (&Method::POST, Some(name), Some(Subresource::Eviction)) => evict(&req, &name).await,
        (&Method::GET, Some(name), Some(Subresource::Log)) => logs(&req, &name).await,
        (
            &Method::GET | &Method::POST,
            Some(name),
            Some(sub @ (Subresource::Exec | Subresource::Attach | Subresource::PortForward)),
        ) => stream(&req, &name, sub).await,
        (method, _, _) => Err(method_not_allowed(method)),
    }
}

pub(crate) fn method_not_allowed(method: &Method) -> Error {
    ApiError::new(
        Reason::MethodNotAllowed,
        format!("the server does not allow this method on the requested resource ({method})"),
    )
    .into()
}

fn parse_json(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")).into())
}

/// The object a create or update sends, by its media type (`flotilla_api::body`), with the
/// write's options (the fields the body gave twice among them).
fn object_body(req: &Request<'_>) -> Result<(Value, WriteOptions)> {
    let mut options = write_options(req)?;
    let media = header(&req.headers, header::CONTENT_TYPE).unwrap_or_default();
    let parsed = flotilla_api::body::decode(media, &req.body)?;
    options.duplicates = parsed.duplicates;
    Ok((parsed.value, options))
}

/// A write may not move its object: a name or namespace other than the URL's is refused (400)
/// and so is a uid other than the object's (422), as upstream refuses them in a patch.
fn check_identity(def: &ResourceDef, name: &str, namespace: Option<&str>, current: &Value, new: &Value) -> Result<()> {
    let given = |field: &str| new.pointer(&format!("/metadata/{field}")).and_then(Value::as_str);
    if given("name") != Some(name) {
        let given = given("name").unwrap_or_default();
        let why = format!("the name of the object ({given}) does not match the name on the URL ({name})");
        return Err(ApiError::bad_request(why).into());
    }
    if def.namespaced && given("namespace").is_some_and(|n| !n.is_empty() && Some(n) != namespace) {
        let why = "the namespace of the provided object does not match the namespace sent on the request";
        return Err(ApiError::bad_request(why).into());
    }
    let uid = current.pointer("/metadata/uid").and_then(Value::as_str);
    if let Some(given) = given("uid").filter(|given| Some(*given) != uid) {
        let cause = FieldError::invalid("metadata.uid", given, "field is immutable");
        return Err(ApiError::invalid(def.group, def.kind, name, vec![cause]).into());
    }
    Ok(())
}

fn write_options(req: &Request<'_>) -> Result<WriteOptions> {
    let manager = FieldManager::for_request(
        req.query.get("fieldManager"),
        header(&req.headers, header::USER_AGENT),
        req.target.subresource,
    )?;
    Ok(WriteOptions {
        dry_run: req.query.dry_run()?,
        field_validation: req.query.field_validation()?,
        skip_admission: false,
        manager: Some(manager),
        applied: false,
        duplicates: Vec::new(),
        node: req.node.clone(),
    })
}

fn selectors(def: &ResourceDef, query: &Query) -> Result<(LabelSelector, FieldSelector)> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), |f| def.selectable(f))?;
    Ok((labels, fields))
}

pub(crate) fn list_options(req: &Request<'_>) -> Result<ListOptions> {
    let (labels, fields) = selectors(req.target.resource, &req.query)?;
    let versions = Versions::of(&req.query, false)?;
    let limit = req.query.number("limit")?.filter(|l| *l > 0).map(|l| l as u64);
    Ok(ListOptions {
        labels,
        fields,
        limit,
        continue_token: req.query.get("continue").map(str::to_string),
        resource_version: req.query.get("resourceVersion").map(str::to_string),
        exact: versions.exact,
    })
}

/// What a list or a watch asks of the store's versions, beyond `resourceVersion` itself.
#[derive(Debug, Default, PartialEq)]
struct Versions {
    /// `resourceVersionMatch=Exact`: a list read at exactly that version, not the latest.
    exact: bool,
    /// A watch's `sendInitialEvents`: `Some(true)` is a streaming list (the current state as
    /// ADDED events, then a bookmark marking their end), `Some(false)` only the changes.
    initial_events: Option<bool>,
}

impl Versions {
    /// Reads them, refusing what makes no sense as upstream's `ValidateListOptions` does
    /// (its WatchList gate on, as it is by default since 1.34).
    fn of(query: &Query, watch: bool) -> Result<Versions> {
        let matching = query.get("resourceVersionMatch");
        let rv = query.get("resourceVersion").unwrap_or_default();
        let continues = query.get("continue").is_some();
        let initial_events = query.has("sendInitialEvents").then(|| query.flag("sendInitialEvents"));
        let field = "resourceVersionMatch";
        let mut causes = Vec::new();
        if watch {
            if initial_events.is_some() && matching != Some("NotOlderThan") {
                causes.push(FieldError::forbidden(
                    field,
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if let Some(wanted) = matching {
                if initial_events.is_none() {
                    causes.push(FieldError::forbidden(
                        field,
                        "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                    ));
                }
                if wanted != "NotOlderThan" {
                    causes.push(FieldError::not_supported(field, wanted, &["NotOlderThan"]));
                }
                if continues {
                    causes.push(FieldError::forbidden(
                        field,
                        "resourceVersionMatch is forbidden when continue is provided",
                    ));
                }
            }
        } else {
            if let Some(wanted) = matching {
                if rv.is_empty() {
                    causes.push(FieldError::forbidden(
                        field,
                        "resourceVersionMatch is forbidden unless resourceVersion is provided",
                    ));
                }
                if continues {
                    causes.push(FieldError::forbidden(
                        field,
                        "resourceVersionMatch is forbidden when continue is provided",
                    ));
                }
                match wanted {
                    "Exact" | "NotOlderThan" => {}
                    other => causes.push(FieldError::not_supported(field, other, &["Exact", "NotOlderThan", ""])),
                }
                if wanted == "Exact" && rv == "0" {
                    causes.push(FieldError::forbidden(
                        field,
                        "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                    ));
                }
            }
            if initial_events.is_some() {
                causes.push(FieldError::forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list"));
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", causes).into());
        }
        Ok(Versions { exact: matching == Some("Exact"), initial_events })
    }
}

async fn list(req: &Request<'_>) -> Result<Response> {
    let def = req.target.resource;
    let options = list_options(req)?;
    let listed = req.registry.list(def, req.target.namespace.as_deref(), &options).await?;
    let meta = ListMeta {
        resource_version: listed.revision.to_string(),
        continue_token: listed.continue_token,
        remaining: listed.remaining,
    };
    match representation(header(&req.headers, header::ACCEPT))? {
        Representation::Table(version) => {
            let include = IncludeObject::parse(req.query.get("includeObject"))?;
            json_response(StatusCode::OK, &table(def, &listed.items, version, include, meta)?, &[])
        }
        Representation::Metadata(version) => {
            let items: Vec<Value> = listed
                .items
                .iter()
                .map(|s| s.value().map(|o| json!({"kind": "PartialObjectMetadata", "apiVersion": format!("meta.k8s.io/{version}"), "metadata": o.get("metadata")})))
                .collect::<Result<_>>()?;
            let list = json!({"kind": "PartialObjectMetadataList", "apiVersion": format!("meta.k8s.io/{version}"), "metadata": list_meta(&meta), "items": items});
            json_response(StatusCode::OK, &list, &[])
        }
        Representation::Object => {
            // Assembled from the stored bytes: no object is parsed.
            let mut body = serde_json::to_vec(&json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(), "metadata": list_meta(&meta)}))
                .unwrap_or_default();
            body.pop();
            body.extend_from_slice(b",\"items\":[");
            for (i, item) in listed.items.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                codec::render_into(&item.bytes, item.revision, &mut body);
            }
            body.extend_from_slice(b"]}");
            Ok(bytes_response(StatusCode::OK, body, &[]))
        }
    }
}

fn list_meta(meta: &ListMeta) -> Value {
    let mut out = json!({"resourceVersion": meta.resource_version});
    if let Some(token) = &meta.continue_token {
        out["continue"] = token.clone().into();
    }
    if let Some(remaining) = meta.remaining {
        out["remainingItemCount"] = remaining.into();
    }
    out
}

fn start_watch(req: &Request<'_>) -> Result<Response> {
    let (labels, fields) = selectors(req.target.resource, &req.query)?;
    let versions = Versions::of(&req.query, true)?;
    let timeout = match req.query.number("timeoutSeconds")? {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds as u64),
        // Upstream's default: between the minimum request timeout (30 min) and twice that.
        _ => Duration::from_secs(1800 + u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 1800 / 255),
    };
    let params = WatchParams {
        labels,
        fields,
        resource_version: req.query.get("resourceVersion").map(str::to_string),
        bookmarks: req.query.flag("allowWatchBookmarks"),
        initial_events: versions.initial_events,
        timeout,
        representation: representation(header(&req.headers, header::ACCEPT))?,
        include: IncludeObject::parse(req.query.get("includeObject"))?,
    };
    if let Some(rv) = params.resource_version.as_deref().filter(|rv| *rv != "0") {
        parse_resource_version(rv)?;
    }
    Ok(watch(req.registry.clone(), req.target.resource, req.target.namespace.clone(), params))
}

async fn create(req: &Request<'_>) -> Result<Response> {
    let (body, options) = object_body(req)?;
    let written = req.registry.create(req.target.resource, req.target.namespace.as_deref(), body, options).await?;
    respond_object(req, StatusCode::CREATED, &written.object, &written.warnings)
}

async fn patch_object(req: &Request<'_>, name: &str, sub: Option<Subresource>) -> Result<Response> {
    let def = req.target.resource;
    let patch_type = content_type(req)?;
    if let Some(view) = req.view
        && patch_type == PatchType::Apply
    {
        return Err(ApiError::new(
            Reason::UnsupportedMediaType,
            format!(
                "server-side apply of {} is not supported in {}; apply it as {}",
                def.plural,
                view.api_version(),
                def.api_version()
            ),
        )
        .into());
    }
    if patch_type == PatchType::Apply {
        return apply(req, name, sub).await;
    }
    if req.query.has("force") {
        return Err(invalid_patch_options(FieldError::forbidden("force", "may not be specified for non-apply patch")));
    }
    let parsed = flotilla_api::json::parse(&req.body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    let patch = parsed.value;
    let shown = req.view.unwrap_or(def);
    let definition = flotilla_api::schema::definition_name(&shown.api_version(), shown.kind).unwrap_or_default();
    let mut options = write_options(req)?;
    if !parsed.duplicates.is_empty() && options.field_validation == flotilla_api::FieldValidation::Strict {
        // Upstream refuses a strict patch's duplicates as an invalid `patch` (422).
        let fields: Vec<String> = parsed.duplicates.iter().map(|f| format!("duplicate field {f:?}")).collect();
        let why = format!("strict decoding error: {}", fields.join(", "));
        let shown = String::from_utf8_lossy(&req.body);
        return Err(ApiError::invalid("", "", "", vec![FieldError::invalid("patch", shown, why)]).into());
    }
    options.duplicates = parsed.duplicates;
    let namespace = req.target.namespace.as_deref();
    let written = req
        .registry
        .guaranteed_update(
            ObjectRef { def, namespace, name },
            None,
            options,
            |current| {
                // Patched as the version asked for shows it, stored as the stored one.
                let patched = match shown.conversion {
                    Some(conversion) => {
                        let patched =
                            apply_patch(patch_type, (conversion.from_stored)(current.clone()), &patch, definition)?;
                        (conversion.to_stored)(patched, Some(current))
                    }
                    None => apply_patch(patch_type, current.clone(), &patch, definition)?,
                };
                check_identity(def, name, namespace, current, &patched)?;
                // A resource version in the patch is a precondition, as in an update.
                let wanted = patched.pointer("/metadata/resourceVersion").and_then(Value::as_str);
                let have = current.pointer("/metadata/resourceVersion").and_then(Value::as_str);
                if wanted.is_some() && wanted != have {
                    return Err(ApiError::conflict(
                        def.group,
                        def.plural,
                        name,
                        "the object has been modified; please apply your changes to the latest version and try again",
                    )
                    .into());
                }
                Ok(Some(patched))
            },
            sub,
        )
        .await?;
    respond_object(req, StatusCode::OK, &written.object, &written.warnings)
}

/// Server-side apply: the body is the manager's configuration of the object, merged in by
/// field ownership (`flotilla_api::managed`); creates the object if it does not exist.
async fn apply(req: &Request<'_>, name: &str, sub: Option<Subresource>) -> Result<Response> {
    let def = req.target.resource;
    let namespace = req.target.namespace.as_deref();
    let config = parse_apply_body(&req.body)?;
    check_applied_identity(def, name, &config)?;
    let Some(field_manager) = req.query.get("fieldManager") else {
        return Err(invalid_patch_options(FieldError::required("fieldManager", "is required for apply requests")));
    };
    let manager = FieldManager::for_request(Some(field_manager), None, sub)?;
    let force = req.query.flag("force");
    let options = WriteOptions { manager: Some(manager.clone()), applied: true, ..write_options(req)? };
    let updated = req
        .registry
        .guaranteed_update(
            ObjectRef { def, namespace, name },
            None,
            options.clone(),
            |current| {
                let applied = managed::apply(def, Some(current), &config, &manager, force, &now())?;
                check_identity(def, name, namespace, current, &applied)?;
                Ok(Some(applied))
            },
            sub,
        )
        .await;
    match updated {
        Ok(written) => respond_object(req, StatusCode::OK, &written.object, &written.warnings),
        Err(Error(e))
            if e.reason == Reason::NotFound && sub.is_none() && e.subject.as_ref().is_some_and(|s| s.name == name) =>
        {
            let object = managed::apply(def, None, &config, &manager, force, &now())?;
            let written = req.registry.create(def, namespace, object, options).await?;
            respond_object(req, StatusCode::CREATED, &written.object, &written.warnings)
        }
        Err(e) => Err(e),
    }
}

/// An apply body: JSON (what kubectl and client libraries send) or YAML.
fn parse_apply_body(body: &[u8]) -> Result<Value> {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        return Ok(value);
    }
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the apply configuration is not UTF-8"))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("the apply configuration is neither JSON nor YAML: {e}")).into())
}

/// An applied configuration names its kind and the object of the URL, as upstream requires.
fn check_applied_identity(def: &ResourceDef, name: &str, config: &Value) -> Result<()> {
    if !config.is_object() {
        return Err(ApiError::bad_request("the apply configuration must be an object").into());
    }
    let api_version = config.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = config.get("kind").and_then(Value::as_str).unwrap_or_default();
    if api_version.is_empty() || kind.is_empty() {
        return Err(ApiError::bad_request("apiVersion and kind must be set in an apply configuration").into());
    }
    if api_version != def.api_version() || kind != def.kind {
        return Err(ApiError::bad_request(format!(
            "the apply configuration is a {api_version} {kind}, but the request is for {} {}",
            def.api_version(),
            def.kind
        ))
        .into());
    }
    match config.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if n == name => Ok(()),
        Some(n) => Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        ))
        .into()),
        None => Err(ApiError::bad_request("metadata.name must be set in an apply configuration").into()),
    }
}

fn invalid_patch_options(cause: FieldError) -> Error {
    ApiError::invalid("meta.k8s.io", "PatchOptions", "", vec![cause]).into()
}

fn content_type(req: &Request<'_>) -> Result<PatchType> {
    let content_type = header(&req.headers, header::CONTENT_TYPE).unwrap_or("");
    PatchType::from_content_type(content_type).ok_or_else(|| {
        // What upstream's router answers for a built-in kind, before any handler runs.
        ApiError::new(Reason::UnsupportedMediaType, "415: Unsupported Media Type").into()
    })
}

fn apply_patch(patch_type: PatchType, mut object: Value, patch: &Value, definition: &str) -> Result<Value> {
    match patch_type {
        PatchType::Json => patch::json_patch(&mut object, patch)?,
        PatchType::Merge => patch::merge_patch(&mut object, patch)?,
        PatchType::Strategic => object = patch::strategic_merge(object, patch.clone(), definition)?,
        PatchType::Apply => unreachable!("server-side apply is handled by `apply`"),
    }
    Ok(object)
}

/// A delete's options: from its body when it has one, else from the query string, as upstream
/// reads them (a body makes it ignore the query). One deviation: `?dryRun=All` counts even
/// beside a body, because a client that sends both (the Python client's `dry_run=` with a
/// `body=`) means a dry run, and upstream deleting for real is a trap, not a contract.
fn delete_options(req: &Request<'_>) -> Result<DeleteOptions> {
    let query_dry_run = req.query.dry_run()?;
    if req.body.is_empty() {
        let options = DeleteOptions {
            grace_period_seconds: req.query.number("gracePeriodSeconds")?,
            propagation_policy: req.query.get("propagationPolicy").map(str::to_string),
            orphan_dependents: req.query.has("orphanDependents").then(|| req.query.flag("orphanDependents")),
            precondition_uid: None,
            precondition_resource_version: None,
            dry_run: query_dry_run,
            node: req.node.clone(),
        };
        options.check(Vec::new())?;
        return Ok(options);
    }
    let body = parse_json(&req.body)?;
    // Any other kind is no DeleteOptions (a Pod sent by mistake must not delete with defaults).
    if let Some(kind) = body.get("kind").and_then(Value::as_str).filter(|k| *k != "DeleteOptions") {
        let version = body.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let why =
            format!("no kind {kind:?} is registered for version {version:?}: the body of a delete is DeleteOptions");
        return Err(ApiError::bad_request(why).into());
    }
    let body: metav1::DeleteOptions = serde_json::from_value(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let dry_run = body.dry_run.unwrap_or_default();
    let mut causes = Vec::new();
    if let Some(other) = dry_run.iter().find(|v| *v != "All") {
        causes.push(FieldError::not_supported("dryRun", other, &["All"]));
    }
    let preconditions = body.preconditions.unwrap_or_default();
    let options = DeleteOptions {
        grace_period_seconds: body.grace_period_seconds,
        propagation_policy: body.propagation_policy,
        orphan_dependents: body.orphan_dependents,
        precondition_uid: preconditions.uid,
        precondition_resource_version: preconditions.resource_version,
        dry_run: !dry_run.is_empty() || query_dry_run,
        node: req.node.clone(),
    };
    options.check(causes)?;
    Ok(options)
}

async fn delete(req: &Request<'_>, name: &str) -> Result<Response> {
    let def = req.target.resource;
    let options = delete_options(req)?;
    match req.registry.delete(def, req.target.namespace.as_deref(), name, &options).await? {
        Deleted::Pending(stored) => respond_object(req, StatusCode::OK, &stored, &[]),
        Deleted::Gone(stored) if returns_deleted_object(def) => respond_object(req, StatusCode::OK, &stored, &[]),
        Deleted::Gone(stored) => {
            let uid = stored.value()?.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
            let mut details = json!({"name": name, "kind": def.plural, "uid": uid});
            if !def.group.is_empty() {
                details["group"] = def.group.into();
            }
            let status =
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details});
            json_response(StatusCode::OK, &status, &[])
        }
    }
}

/// Upstream returns the deleted object itself for these, a Status for the rest.
fn returns_deleted_object(def: &ResourceDef) -> bool {
    def.group.is_empty() && matches!(def.plural, "pods" | "services" | "namespaces" | "nodes")
}

async fn delete_collection(req: &Request<'_>) -> Result<Response> {
    let def = req.target.resource;
    if def.namespaced && req.target.namespace.is_none() {
        return Err(method_not_allowed(&req.method));
    }
    let options = delete_options(req)?;
    let list_options = ListOptions { continue_token: None, limit: None, ..list_options(req)? };
    let listed = req.registry.list(def, req.target.namespace.as_deref(), &list_options).await?;
    let mut deleted = Vec::new();
    for item in &listed.items {
        let name = item.value()?.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        match req.registry.delete(def, req.target.namespace.as_deref(), &name, &options).await {
            Ok(Deleted::Gone(stored) | Deleted::Pending(stored)) => deleted.push(stored.value()?),
            Err(Error(e)) if e.reason == Reason::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(), "metadata": {"resourceVersion": listed.revision.to_string()}, "items": deleted});
    json_response(StatusCode::OK, &list, &[])
}

/// `…/scale`: an `autoscaling/v1` Scale view of `spec.replicas`.
async fn scale(req: &Request<'_>, method: Method, name: &str) -> Result<Response> {
    let def = req.target.resource;
    let namespace = req.target.namespace.as_deref();
    let written = match method {
        Method::GET => req.registry.get(def, namespace, name).await?,
        Method::PUT | Method::PATCH => {
            let body = parse_json(&req.body)?;
            let patch_type = if method == Method::PATCH { Some(content_type(req)?) } else { None };
            let options = write_options(req)?;
            let Written { object, .. } = req
                .registry
                .guaranteed_update(ObjectRef { def, namespace, name }, None, WriteOptions { field_validation: flotilla_api::FieldValidation::Ignore, ..options }, |current| {
                    let scale = scale_of(def, current);
                    let wanted = match patch_type {
                        None => body.clone(),
                        Some(PatchType::Apply) => return Err(ApiError::new(Reason::UnsupportedMediaType, "server-side apply of scale is not supported yet").into()),
                        Some(kind) => apply_patch(kind, scale, &body, "io.k8s.api.autoscaling.v1.Scale")?,
                    };
                    if let Some(rv) = wanted.pointer("/metadata/resourceVersion").and_then(Value::as_str)
                        && Some(rv) != current.pointer("/metadata/resourceVersion").and_then(Value::as_str)
                    {
                        return Err(ApiError::conflict(def.group, def.plural, name, "the object has been modified; please apply your changes to the latest version and try again").into());
                    }
                    let replicas = wanted.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
                    if replicas < 0 {
                        return Err(ApiError::invalid("autoscaling", "Scale", name, vec![flotilla_api::FieldError::invalid("spec.replicas", replicas, "must be greater than or equal to 0")]).into());
                    }
                    let mut updated = current.clone();
                    updated["spec"]["replicas"] = replicas.into();
                    Ok(Some(updated))
                }, None)
                .await?;
            object
        }
        other => return Err(method_not_allowed(&other)),
    };
    json_response(StatusCode::OK, &scale_of(def, &written.value()?), &[])
}

fn scale_of(def: &ResourceDef, object: &Value) -> Value {
    let meta = &object["metadata"];
    let selector = object.pointer("/spec/selector").cloned().unwrap_or_default();
    // A ReplicationController's selector is a plain map of labels, the others' a LabelSelector.
    let selector = if def.kind == "ReplicationController" {
        serde_json::from_value(selector)
            .map(|labels| metav1::LabelSelector { match_labels: labels, ..Default::default() })
    } else {
        serde_json::from_value(selector)
    };
    let selector = selector.ok().and_then(|s| flotilla_api::selector::LabelSelector::from_api(&s).ok());
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector.map(|s| s.to_string()).unwrap_or_default(),
        },
    })
}

/// `pods/binding`: assigns an unscheduled pod to a node (what the scheduler does).
async fn bind(req: &Request<'_>, name: &str) -> Result<Response> {
    let def = req.target.resource;
    let binding = parse_json(&req.body)?;
    let node = binding.pointer("/target/name").and_then(Value::as_str).filter(|n| !n.is_empty()).ok_or_else(|| {
        ApiError::invalid("", "Binding", name, vec![flotilla_api::FieldError::required("target.name", "")])
    })?;
    // Upstream's binding writes the pod straight to storage, past admission and the field
    // manager: the scheduler owns no fields of the pods it places.
    let options = WriteOptions { skip_admission: true, manager: None, ..write_options(req)? };
    req.registry
        .guaranteed_update(
            ObjectRef { def, namespace: req.target.namespace.as_deref(), name },
            None,
            options,
            |current| {
                if let Some(assigned) =
                    current.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())
                {
                    return Err(ApiError::conflict(
                        "",
                        "pods",
                        name,
                        format!("pod {name} is already assigned to node {assigned:?}"),
                    )
                    .into());
                }
                if current.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
                    return Err(ApiError::conflict(
                        "",
                        "pods",
                        name,
                        "pod is being deleted, cannot be assigned to a host",
                    )
                    .into());
                }
                let mut bound = current.clone();
                bound["spec"]["nodeName"] = node.into();
                // As upstream's binding registry: the pod is now scheduled.
                let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
                let scheduled =
                    json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
                let status =
                    bound.as_object_mut().expect("a pod is an object").entry("status").or_insert_with(|| json!({}));
                let conditions = status
                    .as_object_mut()
                    .and_then(|s| s.entry("conditions").or_insert_with(|| json!([])).as_array_mut());
                if let Some(conditions) = conditions {
                    conditions.retain(|c| c["type"] != "PodScheduled");
                    conditions.push(scheduled);
                }
                Ok(Some(bound))
            },
            None,
        )
        .await?;
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    json_response(StatusCode::CREATED, &status, &[])
}

/// `pods/eviction`: deletes the pod (no disruption budgets are served, so none can refuse).
async fn evict(req: &Request<'_>, name: &str) -> Result<Response> {
    let eviction = parse_json(&req.body)?;
    let grace = eviction.pointer("/deleteOptions/gracePeriodSeconds").and_then(Value::as_i64);
    let options = DeleteOptions { grace_period_seconds: grace, node: req.node.clone(), ..Default::default() };
    req.registry.delete(req.target.resource, req.target.namespace.as_deref(), name, &options).await?;
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    json_response(StatusCode::CREATED, &status, &[])
}

/// The pod `name` and the container a `pods/log`, `exec` or `attach` request means: the one named
/// by `?container=`, else the pod's only one; refused with upstream's messages otherwise.
async fn pod_container(req: &Request<'_>, name: &str) -> Result<(Value, String)> {
    let pod = req.registry.get(req.target.resource, req.target.namespace.as_deref(), name).await?.value()?;
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let (containers, init) = (names("containers"), names("initContainers"));
    let container = match req.query.get("container").filter(|c| !c.is_empty()) {
        Some(container) => {
            if !containers.iter().chain(&init).any(|c| c == container) {
                return Err(ApiError::bad_request(format!("container {container} is not valid for pod {name}")).into());
            }
            container.to_string()
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            let mut message =
                format!("a container name must be specified for pod {name}, choose one of: [{}]", containers.join(" "));
            if !init.is_empty() {
                message.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
            }
            return Err(ApiError::bad_request(message).into());
        }
    };
    Ok((pod, container))
}

/// `pods/exec`, `pods/attach` and `pods/portforward`: checked as upstream checks them (the pod,
/// the container, a node assigned, an upgrade asked for). An `exec` into a running Linux
/// container is carried to its node over the client's WebSocket (`NodeProxy::upgrade`); the
/// rest is refused with a Status that says why (a wasm container has no commands to run and no
/// terminal). Both of kubectl's attempts (a WebSocket GET, then, when that is refused, a SPDY
/// POST) get the same refusal, which kubectl prints as `Error from server (BadRequest): …`.
async fn stream(req: &Request<'_>, name: &str, sub: Subresource) -> Result<Response> {
    let what = sub.name();
    let (pod, container) = if sub == Subresource::PortForward {
        let pod = req.registry.get(req.target.resource, req.target.namespace.as_deref(), name).await?.value()?;
        (pod, String::new())
    } else {
        pod_container(req, name).await?
    };
    if pod.pointer("/spec/nodeName").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")).into());
    }
    let upgrade = header(&req.headers, header::CONNECTION).is_some_and(|c| c.to_ascii_lowercase().contains("upgrade"));
    if !upgrade {
        return Err(ApiError::bad_request("Upgrade request required").into());
    }
    let whose =
        if container.is_empty() { format!("pod {name}") } else { format!("container {container} of pod {name}") };
    // A Linux container (its id `oci://…`) has processes; what it lacks is the stream.
    let statuses = ["/status/containerStatuses", "/status/initContainerStatuses"];
    let linux = statuses.iter().filter_map(|p| pod.pointer(p)?.as_array()).flatten().any(|status| {
        status.get("name").and_then(Value::as_str) == Some(container.as_str())
            && status.get("containerID").and_then(Value::as_str).is_some_and(|id| id.starts_with("oci://"))
    });
    if linux && sub == Subresource::Exec {
        return exec(req, &pod, name, &container).await;
    }
    let message = match sub {
        _ if linux => {
            format!("{what} is not supported yet for {whose}: its node streams only exec into Linux containers")
        }
        Subresource::PortForward => format!(
            "{what} is not supported for {whose}: its node runs WebAssembly containers, whose sockets are the runtime's, not a network namespace's"
        ),
        _ => format!(
            "{what} is not supported for {whose}: its node runs WebAssembly containers, which run one module and have no commands or terminal"
        ),
    };
    Err(ApiError::bad_request(message).into())
}

/// `pods/exec` into the running Linux container `container` of `pod`, carried to its node.
async fn exec(req: &Request<'_>, pod: &Value, name: &str, container: &str) -> Result<Response> {
    let statuses = ["/status/containerStatuses", "/status/initContainerStatuses"];
    let running = statuses.iter().filter_map(|p| pod.pointer(p)?.as_array()).flatten().any(|status| {
        status.get("name").and_then(Value::as_str) == Some(container) && status.pointer("/state/running").is_some()
    });
    if !running {
        let message = format!("unable to upgrade connection: container not found ({container:?})");
        return Err(ApiError::bad_request(message).into());
    }
    let websocket = header(&req.headers, header::UPGRADE).is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let offered = header(&req.headers, header::SEC_WEBSOCKET_PROTOCOL).unwrap_or_default();
    let speaks = offered.split(',').any(|p| flotilla_api::STREAM_PROTOCOLS.contains(&p.trim()));
    if !websocket || !speaks {
        return Err(ApiError::bad_request(format!(
            "exec streams are served over a WebSocket in {} (kubectl 1.30 and newer, the Python client): this client asked for {}",
            flotilla_api::STREAM_PROTOCOLS.join(" or "),
            if websocket { format!("{offered:?}") } else { "SPDY".to_string() }
        ))
        .into());
    }
    let Some(upgrade) = req.upgrade.lock().expect("upgrade lock").take() else {
        return Err(ApiError::bad_request("Upgrade request required").into());
    };
    let node_name = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
    let nodes = flotilla_api::resource::find("", "v1", "nodes").expect("nodes are served");
    let node = req.registry.get(nodes, None, node_name).await?.value()?;
    let namespace = req.target.namespace.as_deref().unwrap_or_default();
    let mut query: Vec<String> =
        req.query.all("command").iter().map(|part| format!("command={}", encode_query(part))).collect();
    query.extend(
        ["stdin", "stdout", "stderr", "tty"]
            .into_iter()
            .filter(|key| req.query.flag(key))
            .map(|key| format!("{key}=true")),
    );
    let path = format!("/exec/{namespace}/{name}/{container}?{}", query.join("&"));
    req.nodes.upgrade(&node, &path, &req.headers, upgrade).await
}

/// `pods/log`: served by the node that runs the pod, through the API server as upstream does.
/// A pod not yet on a node has no log: the answer is empty, as upstream's is.
async fn logs(req: &Request<'_>, name: &str) -> Result<Response> {
    let (pod, container) = pod_container(req, name).await?;
    for field in ["tailLines", "limitBytes", "sinceSeconds"] {
        req.query.number(field)?;
    }
    if req.query.get("sinceSeconds").is_some() && req.query.get("sinceTime").is_some() {
        let cause =
            FieldError::invalid("sinceSeconds", "", "at most one of `sinceTime` or `sinceSeconds` may be specified");
        return Err(ApiError::invalid("", "PodLogOptions", "", vec![cause]).into());
    }
    let Some(node_name) = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
        return Ok(([(header::CONTENT_TYPE, "text/plain")], Body::empty()).into_response());
    };
    let nodes = flotilla_api::resource::find("", "v1", "nodes").expect("nodes are served");
    let node = req.registry.get(nodes, None, node_name).await?.value()?;
    let namespace = req.target.namespace.as_deref().unwrap_or_default();
    let mut path = format!("/containerLogs/{namespace}/{name}/{container}");
    // Booleans go on as `true` however the client spelled them (`follow=True`), false ones not at all.
    let flags = ["follow", "previous", "timestamps"]
        .into_iter()
        .filter(|key| req.query.flag(key))
        .map(|key| format!("{key}=true"));
    let values = ["tailLines", "sinceSeconds", "sinceTime", "limitBytes"]
        .into_iter()
        .filter_map(|key| req.query.get(key).map(|value| format!("{key}={}", encode_query(value))));
    let forwarded: Vec<String> = flags.chain(values).collect();
    if !forwarded.is_empty() {
        path.push('?');
        path.push_str(&forwarded.join("&"));
    }
    req.nodes.get(&node, &path).await
}

/// A query value, percent-encoded.
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// An object in the representation the client asked for.
fn respond_object(req: &Request<'_>, code: StatusCode, stored: &Stored, warnings: &[String]) -> Result<Response> {
    let def = req.target.resource;
    match representation(header(&req.headers, header::ACCEPT))? {
        Representation::Table(version) if req.method == Method::GET => {
            let include = IncludeObject::parse(req.query.get("includeObject"))?;
            let meta = ListMeta { resource_version: stored.revision.to_string(), ..Default::default() };
            json_response(code, &table(def, std::slice::from_ref(stored), version, include, meta)?, warnings)
        }
        Representation::Metadata(version) if req.method == Method::GET => {
            let object = stored.value()?;
            let partial = json!({"kind": "PartialObjectMetadata", "apiVersion": format!("meta.k8s.io/{version}"), "metadata": object.get("metadata")});
            json_response(code, &partial, warnings)
        }
        _ => Ok(bytes_response(code, stored.json(), warnings)),
    }
}

pub(crate) fn json_response(code: StatusCode, value: &Value, warnings: &[String]) -> Result<Response> {
    Ok(bytes_response(code, serde_json::to_vec(value).unwrap_or_default(), warnings))
}

fn bytes_response(code: StatusCode, mut body: Vec<u8>, warnings: &[String]) -> Response {
    // Every JSON body ends with a newline, as Go's json.Encoder writes it upstream.
    body.push(b'\n');
    let mut response = (code, [(header::CONTENT_TYPE, "application/json")], Body::from(body)).into_response();
    for warning in warnings {
        // RFC 7234 warning code 299 ("miscellaneous persistent warning"), as upstream sends them.
        if let Ok(value) = HeaderValue::from_str(&format!("299 - {warning:?}")) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

pub(crate) fn header(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
