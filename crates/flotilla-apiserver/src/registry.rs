//! Objects in the store, with Kubernetes' semantics: system metadata (uid, timestamps,
//! generation), optimistic concurrency on `resourceVersion`, status kept apart from the rest,
//! deletion through finalizers and grace periods, and consistent paginated lists.

use std::time::Duration;

use flotilla_api::managed::{self, FieldManager};
use flotilla_api::resource::{self, ResourceDef, Subresource};
use flotilla_api::selector::{FieldSelector, LabelSelector};
use flotilla_api::{ApiError, FieldError, FieldValidation, Reason};
use flotilla_store::{Compare, Consistency, KeyRange, Op, RangeRequest, Revision, Store, TxnRequest};
use jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::authz::node::{self, Operation};
use crate::codec;
use crate::encryption::Encryption;
use crate::error::{Error, Result};
use crate::services::Allocator;

/// How many times an update without a resource version retries after losing a race.
const UPDATE_ATTEMPTS: usize = 16;

/// One object in its stored form (decrypted, if it was stored encrypted), and the revision it
/// was last written at.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) bytes: Vec<u8>,
    pub(crate) revision: Revision,
    /// It is stored otherwise than the encryption configuration would store it now: a write
    /// of it unchanged still writes it (key rotation by rewriting).
    pub(crate) stale: bool,
}

impl Stored {
    pub(crate) fn json(&self) -> Vec<u8> {
        codec::render(&self.bytes, self.revision)
    }

    pub(crate) fn value(&self) -> Result<Value> {
        codec::parse(&self.bytes, self.revision)
    }
}

/// Which object a write is about.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjectRef<'a> {
    pub(crate) def: &'static ResourceDef,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) name: &'a str,
}

/// Options every write takes.
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteOptions {
    pub(crate) dry_run: bool,
    pub(crate) field_validation: FieldValidation,
    /// For the server's own writes that update validation would refuse by design (a pod's
    /// binding sets the node a client may not change).
    pub(crate) skip_admission: bool,
    /// Who writes: what they change is recorded as theirs in `metadata.managedFields`. `None`
    /// for the server's own bookkeeping.
    pub(crate) manager: Option<FieldManager>,
    /// The change is a server-side apply, which has recorded its managed fields already.
    pub(crate) applied: bool,
    /// Fields the request's body gave twice, for `fieldValidation` to refuse or warn of.
    pub(crate) duplicates: Vec<String>,
    /// The node that writes, if a node does: NodeRestriction checks what it writes.
    pub(crate) node: Option<String>,
}

/// The result of a write: the object as written, and warnings for the client.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) object: Stored,
    pub(crate) warnings: Vec<String>,
    pub(crate) created: bool,
}

/// What a delete did.
#[derive(Debug)]
pub(crate) enum Deleted {
    /// The object is gone; this is how it was.
    Gone(Stored),
    /// The object stays until its finalizers are removed or its grace period ends.
    Pending(Stored),
}

/// `metav1.DeleteOptions`, from the query or the body.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeleteOptions {
    pub(crate) grace_period_seconds: Option<i64>,
    pub(crate) propagation_policy: Option<String>,
    pub(crate) orphan_dependents: Option<bool>,
    pub(crate) precondition_uid: Option<String>,
    pub(crate) precondition_resource_version: Option<String>,
    pub(crate) dry_run: bool,
    /// The node that deletes, if a node does: NodeRestriction checks what it deletes.
    pub(crate) node: Option<String>,
}

impl DeleteOptions {
    /// Refuses what upstream's `ValidateDeleteOptions` refuses, with every cause (`causes`
    /// found already among them), before anything is read.
    pub(crate) fn check(&self, mut causes: Vec<FieldError>) -> Result<()> {
        let field = "propagationPolicy";
        if let Some(policy) = self.propagation_policy.as_deref() {
            if self.orphan_dependents.is_some() {
                causes.push(FieldError::invalid(
                    field,
                    policy,
                    "orphanDependents and deletionPropagation cannot be both set",
                ));
            }
            if !matches!(policy, "Foreground" | "Background" | "Orphan") {
                causes.push(FieldError::not_supported(field, policy, &["Foreground", "Background", "Orphan", "nil"]));
            }
        }
        if causes.is_empty() {
            return Ok(());
        }
        Err(ApiError::invalid("meta.k8s.io", "DeleteOptions", "", causes).into())
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Registry {
    store: Store,
    services: Allocator,
    /// How long new pods tolerate an unreachable or not-ready node (DefaultTolerationSeconds).
    default_toleration_seconds: i64,
    /// How objects are encrypted at rest.
    encryption: Encryption,
}

impl Registry {
    pub(crate) fn new(
        store: Store,
        services: Allocator,
        default_toleration_seconds: i64,
        encryption: Encryption,
    ) -> Self {
        Registry { store, services, default_toleration_seconds, encryption }
    }

    /// An object as the store holds it at `key`, decrypted.
    pub(crate) fn open(&self, def: &ResourceDef, key: &[u8], value: Vec<u8>, revision: Revision) -> Result<Stored> {
        let opened = self.encryption.open(def, key, value)?;
        Ok(Stored { bytes: opened.bytes, revision, stale: opened.stale })
    }

    /// What to store for the stored form `plain` of the object at `key`.
    fn seal(&self, def: &ResourceDef, key: &str, plain: Vec<u8>) -> Vec<u8> {
        self.encryption.seal(def, key, plain)
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn key(def: &ResourceDef, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if def.namespaced => format!("{}{ns}/{name}", def.key_prefix()),
            _ => format!("{}{name}", def.key_prefix()),
        }
    }

    pub(crate) fn prefix(def: &ResourceDef, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if def.namespaced => format!("{}{ns}/", def.key_prefix()),
            _ => def.key_prefix(),
        }
    }

    /// Waits until the store has reached revision `wanted`, as upstream's watch cache waits for a
    /// resource version it has not seen, for at most [`FRESHNESS_WAIT`]: a read at a version
    /// from the future is neither served an older state nor held open in silence.
    pub(crate) async fn wait_until_fresh(&self, wanted: Revision) -> Result<()> {
        let deadline = tokio::time::Instant::now() + FRESHNESS_WAIT;
        loop {
            if self.store.revision() >= wanted {
                return Ok(());
            }
            // A linearizable read brings this member up to what the group has committed.
            let probe = RangeRequest::new(KeyRange::key(b"/registry/".to_vec())).count_only();
            let current = self.store.range(probe).await?.revision;
            if current >= wanted {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::too_large_resource_version(wanted, current).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The current object (linearizable).
    pub(crate) async fn get(&self, def: &ResourceDef, namespace: Option<&str>, name: &str) -> Result<Stored> {
        self.read(def, namespace, name, Consistency::Linearizable)
            .await?
            .ok_or_else(|| ApiError::not_found(def.group, def.plural, name).into())
    }

    async fn read(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        consistency: Consistency,
    ) -> Result<Option<Stored>> {
        let mut req = RangeRequest::new(KeyRange::key(Self::key(def, namespace, name)));
        req.consistency = consistency;
        let response = self.store.range(req).await?;
        response.kvs.into_iter().next().map(|kv| self.open(def, &kv.key, kv.value, kv.mod_revision)).transpose()
    }

    /// Creates an object, filling in system metadata and running admission.
    pub(crate) async fn create(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        body: Value,
        options: WriteOptions,
    ) -> Result<Written> {
        // A Service's address that a concurrent create took first is seen taken on the next
        // try, so that creating many Services at once never fails for it (upstream's allocator
        // retries the same way).
        if def.kind == "Service" && def.group.is_empty() {
            for _ in 1..ALLOCATION_ATTEMPTS {
                match self.create_once(def, namespace, body.clone(), options.clone()).await {
                    Err(Error(e)) if e.reason == Reason::Conflict && e.message == ALLOCATION_RACE => continue,
                    done => return done,
                }
            }
        }
        self.create_once(def, namespace, body, options).await
    }

    async fn create_once(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        body: Value,
        options: WriteOptions,
    ) -> Result<Written> {
        let mut object = expect_object(body)?;
        let meta = object.entry("metadata").or_insert_with(|| json!({}));
        let meta = meta.as_object_mut().ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        check_namespace(def, namespace, meta)?;
        if let Some(ns) = namespace.filter(|_| def.namespaced) {
            meta.insert("namespace".into(), ns.into());
            self.check_namespace_accepts_content(ns).await?;
        } else {
            meta.remove("namespace");
        }
        let name = match meta.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            Some(name) => name.to_string(),
            None => match meta.get("generateName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                Some(prefix) => format!("{prefix}{}", random_suffix()),
                None => {
                    return Err(ApiError::invalid(
                        def.group,
                        def.kind,
                        "",
                        vec![FieldError::required("metadata.name", "name or generateName is required")],
                    )
                    .into());
                }
            },
        };
        meta.insert("name".into(), name.clone().into());
        meta.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
        meta.insert("creationTimestamp".into(), now().into());
        for field in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
            meta.remove(field);
        }
        if !options.applied {
            meta.remove("managedFields");
        }
        if def.generation {
            meta.insert("generation".into(), 1.into());
        } else {
            meta.remove("generation");
        }
        let admitted = def.ops.admit(Value::Object(object), None, options.field_validation, &options.duplicates)?;
        let mut object = admitted.object;
        if let Some(node) = &options.node {
            node::admit(node, Operation::Create, def, None, None, Some(&object))?;
        }
        if def.kind == "Pod" {
            self.admit_runtime_class(&mut object, &name).await?;
            add_default_tolerations(&mut object, self.default_toleration_seconds);
        }
        if let Some(manager) = options.manager.as_ref().filter(|_| !options.applied) {
            managed::track_update(def, None, &mut object, manager, &now());
        }
        let key = Self::key(def, namespace, &name);
        let mut extra = Vec::new();
        if def.kind == "Service" && def.group.is_empty() {
            extra = self.services.allocate(&mut object, None).await?.taken;
        }
        let stored = codec::encode(&object)?;
        if options.dry_run {
            return Ok(Written {
                object: Stored { bytes: stored, revision: self.store.revision(), stale: false },
                warnings: admitted.warnings,
                created: true,
            });
        }
        let mut compares = vec![Compare::absent(key.clone())];
        let mut ops = vec![Op::put(key.clone(), self.seal(def, &key, stored.clone()))];
        for allocation in extra {
            compares.push(Compare::absent(allocation.clone()));
            ops.push(Op::put(allocation, name.clone()));
        }
        let response = self.store.txn(TxnRequest::when(compares).then(ops)).await?;
        if !response.succeeded {
            return Err(match self.read(def, namespace, &name, Consistency::Linearizable).await? {
                Some(_) => ApiError::already_exists(def.group, def.plural, &name),
                None => ApiError::new(Reason::Conflict, ALLOCATION_RACE),
            }
            .into());
        }
        Ok(Written {
            object: Stored { bytes: stored, revision: response.revision, stale: false },
            warnings: admitted.warnings,
            created: true,
        })
    }

    /// Replaces an object (or its status), as a PUT does.
    pub(crate) async fn update(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        name: &str,
        sub: Option<Subresource>,
        body: Value,
        options: WriteOptions,
    ) -> Result<Written> {
        let body = expect_object(body)?;
        let meta = body.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        check_namespace(def, namespace, &meta)?;
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                ))
                .into());
            }
            _ => {}
        }
        let precondition =
            meta.get("resourceVersion").and_then(Value::as_str).map(parse_resource_version).transpose()?;
        let current = self.read(def, namespace, name, Consistency::Linearizable).await?;
        if current.is_none() && sub.is_none() && allows_create_on_update(def) {
            return self.create(def, namespace, Value::Object(body), options).await;
        }
        // A uid in the body is a precondition, as upstream's update takes it.
        if let (Some(given), Some(current)) = (meta.get("uid").and_then(Value::as_str), &current) {
            let value = current.value()?;
            let uid = value.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
            if given != uid {
                let why = format!("Precondition failed: UID in precondition: {given}, UID in object meta: {uid}");
                return Err(ApiError::conflict(def.group, def.plural, name, why).into());
            }
        }
        self.guaranteed_update(
            ObjectRef { def, namespace, name },
            precondition,
            options,
            |_| Ok(Some(Value::Object(body.clone()))),
            sub,
        )
        .await
    }

    /// Reads the object, computes its replacement with `change`, and writes it if the object did
    /// not change meanwhile; retried when it did, unless the caller named the version to replace.
    pub(crate) async fn guaranteed_update(
        &self,
        at: ObjectRef<'_>,
        precondition: Option<Revision>,
        options: WriteOptions,
        mut change: impl FnMut(&Value) -> Result<Option<Value>>,
        sub: Option<Subresource>,
    ) -> Result<Written> {
        let ObjectRef { def, namespace, name } = at;
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.get(def, namespace, name).await?;
            if let Some(expected) = precondition
                && expected != current.revision
            {
                return Err(stale(def, name).into());
            }
            let old = current.value()?;
            let Some(new) = change(&old)? else {
                return Ok(Written { object: current, warnings: Vec::new(), created: false });
            };
            let merged = merge_update(def, &old, new, sub)?;
            let admitted = if options.skip_admission {
                flotilla_api::Admitted { object: merged, warnings: Vec::new() }
            } else {
                def.ops.admit(merged, Some(&old), options.field_validation, &options.duplicates)?
            };
            let mut object = admitted.object;
            if let Some(node) = &options.node {
                node::admit(node, Operation::Update, def, sub, Some(&old), Some(&object))?;
            }
            // A Service's addresses follow its spec: kept, taken anew or freed with the write.
            let mut allocation = crate::services::Allocation::default();
            if def.kind == "Service" && def.group.is_empty() && sub.is_none() && !is_deleting(&object) {
                allocation = self.services.allocate(&mut object, Some(&old)).await?;
            }
            set_generation(def, &old, &mut object);
            if let Some(manager) = options.manager.as_ref().filter(|_| !options.applied) {
                managed::track_update(def, Some(&old), &mut object, manager, &now());
            }
            let stored = codec::encode(&object)?;
            if stored == current.bytes && !current.stale {
                return Ok(Written { object: current, warnings: admitted.warnings, created: false });
            }
            if options.dry_run {
                return Ok(Written {
                    object: Stored { bytes: stored, revision: current.revision, stale: false },
                    warnings: admitted.warnings,
                    created: false,
                });
            }
            let key = Self::key(def, namespace, name);
            // An object whose deletion only waited on finalizers goes once the last one is removed.
            let finished = is_deleting(&object)
                && finalizers(&object).is_empty()
                && grace_of(&object) == 0
                && !awaits_namespace_finalizers(def, &object);
            let op = if finished {
                Op::delete(key.clone())
            } else {
                Op::put(key.clone(), self.seal(def, &key, stored.clone()))
            };
            let mut ops = vec![op];
            let mut compares = vec![Compare::mod_revision(key, current.revision)];
            if finished {
                ops.extend(self.services.release(def, &object).into_iter().map(Op::delete));
            } else {
                for taken in allocation.taken {
                    compares.push(Compare::absent(taken.clone()));
                    ops.push(Op::put(taken, name.to_string()));
                }
                ops.extend(allocation.freed.into_iter().map(Op::delete));
            }
            let response = self.store.txn(TxnRequest::when(compares).then(ops)).await?;
            if response.succeeded {
                return Ok(Written {
                    object: Stored { bytes: stored, revision: response.revision, stale: false },
                    warnings: admitted.warnings,
                    created: false,
                });
            }
            if precondition.is_some() {
                return Err(stale(def, name).into());
            }
        }
        Err(ApiError::conflict(def.group, def.plural, name, "the object is being modified too often; please retry")
            .into())
    }

    /// Deletes an object: at once, or by marking it (finalizers, a pod's grace period).
    pub(crate) async fn delete(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Deleted> {
        // Upstream's NamespaceLifecycle admission keeps these for good.
        if def.group.is_empty() && def.plural == "namespaces" && IMMORTAL_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(def.group, def.plural, name, "this namespace may not be deleted").into());
        }
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.get(def, namespace, name).await?;
            let mut object = current.value()?;
            if let Some(node) = &options.node {
                node::admit(node, Operation::Delete, def, None, Some(&object), None)?;
            }
            check_preconditions(def, name, &object, &current, options)?;
            let grace = grace_period(def, &object, options);
            let mut finalizers = finalizers(&object);
            if !is_deleting(&object) {
                match propagation(def, options)? {
                    Propagation::Orphan => add(&mut finalizers, "orphan"),
                    Propagation::Foreground => add(&mut finalizers, "foregroundDeletion"),
                    Propagation::Background => {}
                }
            }
            let pending_namespace = awaits_namespace_finalizers(def, &object);
            let key = Self::key(def, namespace, name);
            if finalizers.is_empty() && grace == 0 && !pending_namespace {
                if options.dry_run {
                    return Ok(Deleted::Gone(current));
                }
                let mut ops = vec![Op::delete(key.clone())];
                ops.extend(self.services.release(def, &object).into_iter().map(Op::delete));
                let response =
                    self.store.txn(TxnRequest::when([Compare::mod_revision(key, current.revision)]).then(ops)).await?;
                if response.succeeded {
                    return Ok(Deleted::Gone(Stored {
                        bytes: current.bytes,
                        revision: response.revision,
                        stale: false,
                    }));
                }
                continue;
            }
            if is_deleting(&object) && grace >= grace_of(&object) && finalizers == self::finalizers(&object) {
                // Already being deleted, no sooner than asked: nothing changes.
                return Ok(Deleted::Pending(current));
            }
            let meta = object["metadata"].as_object_mut().expect("stored objects have metadata");
            let deadline = Timestamp::now() + Duration::from_secs(grace as u64);
            meta.insert("deletionTimestamp".into(), deadline.strftime("%Y-%m-%dT%H:%M:%SZ").to_string().into());
            meta.insert("deletionGracePeriodSeconds".into(), grace.into());
            if finalizers.is_empty() {
                meta.remove("finalizers");
            } else {
                meta.insert("finalizers".into(), finalizers.iter().map(|f| Value::String(f.clone())).collect());
            }
            if def.kind == "Namespace" {
                object["status"] = json!({"phase": "Terminating"});
            }
            let stored = codec::encode(&object)?;
            if options.dry_run {
                return Ok(Deleted::Pending(Stored { bytes: stored, revision: current.revision, stale: false }));
            }
            let response = self
                .store
                .txn(
                    TxnRequest::when([Compare::mod_revision(key.clone(), current.revision)])
                        .then([Op::put(key.clone(), self.seal(def, &key, stored.clone()))]),
                )
                .await?;
            if response.succeeded {
                return Ok(Deleted::Pending(Stored { bytes: stored, revision: response.revision, stale: false }));
            }
        }
        Err(ApiError::conflict(def.group, def.plural, name, "the object is being modified too often; please retry")
            .into())
    }

    /// Refuses new objects in a namespace that is missing or being deleted.
    async fn check_namespace_accepts_content(&self, namespace: &str) -> Result<()> {
        let def = flotilla_api::resource::find("", "v1", "namespaces").expect("namespaces are served");
        let ns = self.read(def, None, namespace, Consistency::Serializable).await?;
        let Some(ns) = ns else { return Err(ApiError::not_found("", "namespaces", namespace).into()) };
        if is_deleting(&ns.value()?) {
            return Err(ApiError::new(
                Reason::Forbidden,
                format!("unable to create new content in namespace {namespace} because it is being terminated"),
            )
            .into());
        }
        Ok(())
    }
}

fn expect_object(body: Value) -> Result<Map<String, Value>> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request("the request body must be a JSON object").into()),
    }
}

fn check_namespace(def: &ResourceDef, namespace: Option<&str>, meta: &Map<String, Value>) -> Result<()> {
    let given = meta.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty());
    if def.namespaced
        && let (Some(given), Some(url)) = (given, namespace)
        && given != url
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )
        .into());
    }
    Ok(())
}

pub(crate) fn parse_resource_version(rv: &str) -> Result<Revision> {
    rv.parse::<Revision>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")).into())
}

fn stale(def: &ResourceDef, name: &str) -> ApiError {
    ApiError::conflict(
        def.group,
        def.plural,
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}

/// Upstream lets a PUT create only these.
fn allows_create_on_update(def: &ResourceDef) -> bool {
    matches!(
        (def.group, def.plural),
        ("", "endpoints") | ("", "events") | ("coordination.k8s.io", "leases") | ("discovery.k8s.io", "endpointslices")
    )
}

/// The object a PUT (or patch) will write: the body, with the system metadata of the old object,
/// and with status or everything but status taken from the old one as the subresource says.
fn merge_update(def: &ResourceDef, old: &Value, new: Value, sub: Option<Subresource>) -> Result<Value> {
    let mut new = expect_object(new)?;
    let none = Map::new();
    let old_map = old.as_object().unwrap_or(&none);
    if sub == Some(Subresource::Finalize) {
        // Only `spec.finalizers` changes.
        let mut result = old_map.clone();
        let finalizers = new.get("spec").and_then(|s| s.get("finalizers")).cloned().unwrap_or_else(|| json!([]));
        let spec = result.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("finalizers".into(), finalizers);
        }
        return Ok(Value::Object(result));
    }
    if def.kind == "Namespace" {
        // Updates leave a namespace's finalizers as they were (upstream's strategy).
        let finalizers = old.pointer("/spec/finalizers").cloned();
        let spec = new.entry("spec").or_insert_with(|| json!({}));
        if let (Some(spec), Some(finalizers)) = (spec.as_object_mut(), finalizers) {
            spec.insert("finalizers".into(), finalizers);
        }
    }
    if sub == Some(Subresource::Status) {
        // Everything but the status as it was. The new object is usually a patched copy of the
        // old one, so its fields are compared before the old ones are copied back over them.
        new.retain(|key, _| key == "status" || old_map.contains_key(key));
        for (key, value) in old_map.iter().filter(|(key, _)| *key != "status") {
            keep_as(&mut new, key, Some(value));
        }
        return Ok(Value::Object(new));
    }
    if def.has(Subresource::Status) {
        keep_as(&mut new, "status", old_map.get("status"));
    }
    let old_meta = old_map.get("metadata").and_then(Value::as_object).unwrap_or(&none);
    let meta = new.entry("metadata").or_insert_with(|| json!({}));
    let meta = meta.as_object_mut().ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old_meta.get(field) {
            Some(value) => meta.insert(field.into(), value.clone()),
            None => meta.remove(field),
        };
    }
    meta.remove("selfLink");
    meta.remove("resourceVersion");
    if !meta.contains_key("managedFields")
        && let Some(managed) = old_meta.get("managedFields")
    {
        meta.insert("managedFields".into(), managed.clone());
    }
    Ok(Value::Object(new))
}

/// Sets `object[key]` to `value` (removes it for `None`), copying only when they differ.
fn keep_as(object: &mut Map<String, Value>, key: &str, value: Option<&Value>) {
    match value {
        Some(value) if object.get(key) != Some(value) => {
            object.insert(key.into(), value.clone());
        }
        Some(_) => {}
        None => {
            object.remove(key);
        }
    }
}

/// Bumps `metadata.generation` when anything but metadata and status changed.
fn set_generation(def: &ResourceDef, old: &Value, new: &mut Value) {
    if !def.generation {
        return;
    }
    let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
    let next = if body(old) != body(new) { generation + 1 } else { generation.max(1) };
    new["metadata"]["generation"] = next.into();
}

/// Everything but metadata and status, by field name: borrowed, as this runs on every write.
fn body(object: &Value) -> Option<Vec<(&String, &Value)>> {
    let mut fields: Vec<_> = object.as_object()?.iter().filter(|(k, _)| *k != "metadata" && *k != "status").collect();
    fields.sort_unstable_by_key(|(k, _)| *k);
    Some(fields)
}

impl Registry {
    /// Upstream's RuntimeClass admission: a pod that names a runtime class that does not exist
    /// is refused, and one that does takes its `scheduling` (node selector and tolerations), so
    /// that it is placed only where its runtime is.
    async fn admit_runtime_class(&self, pod: &mut Value, name: &str) -> Result<()> {
        let Some(class) = pod.pointer("/spec/runtimeClassName").and_then(Value::as_str).map(str::to_string) else {
            return Ok(());
        };
        let refused = |why: String| -> Error { ApiError::forbidden("", "pods", name, why).into() };
        let classes = resource::find("node.k8s.io", "v1", "runtimeclasses").expect("runtime classes are served");
        let runtime_class = match self.get(classes, None, &class).await {
            Ok(found) => found.value()?,
            Err(Error(e)) if e.reason == Reason::NotFound => {
                return Err(refused(format!("pod rejected: RuntimeClass {class:?} not found")));
            }
            Err(e) => return Err(e),
        };
        let spec = pod
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("a pod needs a spec"))?;
        if let Some(selector) = runtime_class.pointer("/scheduling/nodeSelector").and_then(Value::as_object) {
            let pods = spec.entry("nodeSelector").or_insert_with(|| json!({}));
            let pods =
                pods.as_object_mut().ok_or_else(|| ApiError::bad_request("spec.nodeSelector must be an object"))?;
            for (key, value) in selector {
                match pods.get(key) {
                    Some(theirs) if theirs != value => {
                        return Err(refused(format!(
                            "conflict: runtimeClass.scheduling.nodeSelector[{key}] = {}; pod.spec.nodeSelector[{key}] = {}",
                            value.as_str().unwrap_or_default(),
                            theirs.as_str().unwrap_or_default()
                        )));
                    }
                    _ => drop(pods.insert(key.clone(), value.clone())),
                }
            }
        }
        if let Some(tolerations) = runtime_class.pointer("/scheduling/tolerations").and_then(Value::as_array) {
            let pods = spec.entry("tolerations").or_insert_with(|| json!([]));
            let pods = pods.as_array_mut().ok_or_else(|| ApiError::bad_request("spec.tolerations must be a list"))?;
            for toleration in tolerations {
                if !pods.contains(toleration) {
                    pods.push(toleration.clone());
                }
            }
        }
        Ok(())
    }
}

/// Upstream's DefaultTolerationSeconds admission: a pod that does not say how long it tolerates
/// an unreachable or not-ready node tolerates it for `seconds`, then is evicted and replaced.
fn add_default_tolerations(pod: &mut Value, seconds: i64) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(tolerations) = tolerations.as_array_mut() else { return };
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let covered = tolerations.iter().any(|t| {
            let effect = t["effect"].as_str().unwrap_or_default();
            let toleration_key = t["key"].as_str().unwrap_or_default();
            (effect.is_empty() || effect == "NoExecute") && (toleration_key.is_empty() || toleration_key == key)
        });
        if !covered {
            tolerations
                .push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        }
    }
}

/// A namespace stays until the namespace controller has emptied it and cleared
/// `spec.finalizers` (through `namespaces/finalize`).
fn awaits_namespace_finalizers(def: &ResourceDef, object: &Value) -> bool {
    def.kind == "Namespace"
        && object.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
}

fn is_deleting(object: &Value) -> bool {
    object.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
}

fn finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| f.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn grace_of(object: &Value) -> i64 {
    object.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0)
}

fn add(finalizers: &mut Vec<String>, finalizer: &str) {
    if !finalizers.iter().any(|f| f == finalizer) {
        finalizers.push(finalizer.into());
    }
}

/// A pod on a node gets its grace period (the option's, else its spec's); anything else, and a
/// pod no node runs or that has finished, goes at once.
fn grace_period(def: &ResourceDef, object: &Value, options: &DeleteOptions) -> i64 {
    if def.kind != "Pod" || !def.group.is_empty() {
        return 0;
    }
    let scheduled = object.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
    let finished = matches!(object.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
    if !scheduled || finished {
        return 0;
    }
    let spec = object.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30);
    let grace = options.grace_period_seconds.unwrap_or(spec).max(0);
    // An already-terminating pod can only be hurried, not delayed.
    if is_deleting(object) { grace.min(grace_of(object)) } else { grace }
}

enum Propagation {
    Orphan,
    Background,
    Foreground,
}

fn propagation(def: &ResourceDef, options: &DeleteOptions) -> Result<Propagation> {
    options.check(Vec::new())?;
    Ok(match (options.propagation_policy.as_deref(), options.orphan_dependents) {
        (Some("Orphan"), _) | (None, Some(true)) => Propagation::Orphan,
        (Some("Foreground"), _) => Propagation::Foreground,
        // batch/v1 Jobs orphan their pods unless told otherwise, for compatibility (upstream).
        (None, None) if def.group == "batch" => Propagation::Orphan,
        _ => Propagation::Background,
    })
}

fn check_preconditions(
    def: &ResourceDef,
    name: &str,
    object: &Value,
    current: &Stored,
    options: &DeleteOptions,
) -> Result<()> {
    if let Some(uid) = &options.precondition_uid {
        let actual = object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
        if uid != actual {
            return Err(ApiError::conflict(
                def.group,
                def.plural,
                name,
                format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"),
            )
            .into());
        }
    }
    if let Some(rv) = &options.precondition_resource_version
        && parse_resource_version(rv)? != current.revision
    {
        return Err(ApiError::conflict(
            def.group,
            def.plural,
            name,
            format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                current.revision
            ),
        )
        .into());
    }
    Ok(())
}

/// Now, as metadata timestamps are written (RFC 3339, seconds).
pub(crate) fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Five characters from upstream's `generateName` alphabet (no vowels, no look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5].iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// `?labelSelector=`, `?fieldSelector=`, paging and version options of a list.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListOptions {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
    pub(crate) limit: Option<u64>,
    pub(crate) continue_token: Option<String>,
    pub(crate) resource_version: Option<String>,
    /// `resourceVersionMatch=Exact`: read at that version, not the latest.
    pub(crate) exact: bool,
}

/// A label and a field selector, with the fields of an object they read.
#[derive(Clone, Debug)]
pub(crate) struct Selection<'a> {
    labels: &'a LabelSelector,
    fields: &'a FieldSelector,
    reads: codec::Projection,
}

impl<'a> Selection<'a> {
    pub(crate) fn new(labels: &'a LabelSelector, fields: &'a FieldSelector) -> Self {
        let mut reads = codec::Projection::default();
        if !labels.is_empty() {
            reads.keep("/metadata/labels");
        }
        for requirement in &fields.requirements {
            reads.keep(&flotilla_api::kinds::field_pointer(&requirement.field));
        }
        Selection { labels, fields, reads }
    }

    /// Whether it selects everything.
    pub(crate) fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// Whether the object is selected; one that does not parse is not.
    pub(crate) fn matches(&self, stored: &Stored) -> bool {
        let Ok(object) = self.reads.parse(&stored.bytes) else { return false };
        self.labels.matches_object(&object) && self.fields.matches(|f| flotilla_api::kinds::field_value(&object, f))
    }
}

/// One page of a list.
#[derive(Debug)]
pub(crate) struct Listed {
    pub(crate) items: Vec<Stored>,
    pub(crate) revision: Revision,
    pub(crate) continue_token: Option<String>,
    pub(crate) remaining: Option<u64>,
}

/// How long a read at a resource version the store has not reached waits for it (upstream's
/// watch cache `blockTimeout`).
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// What a create says when an address it allocated was taken meanwhile.
const ALLOCATION_RACE: &str = "an address allocated to the service was taken concurrently; retry";
/// Tries a Service's create makes before it says so.
const ALLOCATION_ATTEMPTS: usize = 16;

/// Namespaces that may not be deleted (upstream's NamespaceLifecycle admission).
const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// Keys read per store call while filling a filtered page.
const LIST_CHUNK: u64 = 500;

#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    rv: Revision,
    start: String,
}

impl Registry {
    /// Lists objects, filtered, one page at a time; every page of a list is read at the revision
    /// of its first page, so the pages together are a consistent snapshot.
    pub(crate) async fn list(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<Listed> {
        let prefix = Self::prefix(def, namespace);
        let end = flotilla_store::prefix_end(prefix.as_bytes()).expect("registry prefixes end in '/'");
        let (mut start, mut at, consistency) = match &options.continue_token {
            Some(token) => {
                let token = decode_continue(token)?;
                if !token.start.starts_with(&prefix) {
                    return Err(ApiError::bad_request(
                        "continue key is not valid: the list it continues is another one",
                    )
                    .into());
                }
                (token.start, Some(token.rv), Consistency::Serializable)
            }
            None => match options.resource_version.as_deref() {
                None => (prefix.clone(), None, Consistency::Linearizable),
                Some("0") => (prefix.clone(), None, Consistency::Serializable),
                Some(rv) if options.exact => {
                    let wanted = parse_resource_version(rv)?;
                    self.wait_until_fresh(wanted).await?;
                    (prefix.clone(), Some(wanted), Consistency::Serializable)
                }
                Some(rv) => {
                    self.wait_until_fresh(parse_resource_version(rv)?).await?;
                    (prefix.clone(), None, Consistency::Linearizable)
                }
            },
        };
        let selection = Selection::new(&options.labels, &options.fields);
        let filtered = !selection.is_everything();
        let limit = options.limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut remaining = None;
        let mut continue_token = None;
        loop {
            let chunk = match limit {
                Some(limit) if !filtered => limit,
                Some(limit) => limit.max(LIST_CHUNK),
                None => 0,
            };
            let mut req = RangeRequest::new(KeyRange::between(start.clone(), end.clone()));
            req.limit = Some(chunk);
            req.revision = at;
            req.consistency = consistency;
            let response = self.store.range(req).await.map_err(|e| continued_too_late(e, options))?;
            let revision = *at.get_or_insert(response.revision);
            let total = response.count;
            let returned = response.kvs.len();
            for (i, kv) in response.kvs.into_iter().enumerate() {
                start = String::from_utf8_lossy(&kv.key).into_owned() + "\0";
                let stored = self.open(def, &kv.key, kv.value, kv.mod_revision)?;
                if filtered && !selection.matches(&stored) {
                    continue;
                }
                items.push(stored);
                if limit.is_some_and(|l| items.len() as u64 >= l) && (i + 1 < returned || response.more) {
                    let mut next = kv.key.clone();
                    next.push(0);
                    continue_token = Some(encode_continue(revision, String::from_utf8_lossy(&next).into_owned()));
                    if !filtered {
                        remaining = Some(total - (i as u64 + 1));
                    }
                    return Ok(Listed { items, revision, continue_token, remaining });
                }
            }
            if !response.more {
                return Ok(Listed { items, revision, continue_token, remaining });
            }
        }
    }
}

fn encode_continue(rv: Revision, start: String) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&Continue { rv, start }).unwrap_or_default())
}

fn decode_continue(token: &str) -> Result<Continue> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| ApiError::bad_request("continue key is not valid: not base64"))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("continue key is not valid: {e}")).into())
}

/// A continued list whose revision was compacted meanwhile gets upstream's 410.
fn continued_too_late(err: flotilla_store::Error, options: &ListOptions) -> Error {
    if options.continue_token.is_some() && matches!(err, flotilla_store::Error::Compacted { .. }) {
        return ApiError::new(
            Reason::Expired,
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
        )
        .into();
    }
    err.into()
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        err.0
    }
}
