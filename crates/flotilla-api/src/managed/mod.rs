//! Field ownership and server-side apply, as upstream's field manager does them with
//! structured-merge-diff: every write records, in `metadata.managedFields`, which manager set
//! which fields; an apply merges the manager's configuration into the object, removes what the
//! manager applied before and no longer does, and refuses with 409 to change a field another
//! manager owns, unless forced.
//!
//! A manager is identified by its name, operation (`Apply` or `Update`) and subresource, as
//! upstream identifies it. Each kind is served in one version, so versions never need converting.

mod fieldset;
mod typed;

use serde_json::{Map, Value, json};

use self::fieldset::{FieldSet, display};
use crate::error::{ApiError, CauseType, FieldError, Reason, Result};
use crate::resource::{ResourceDef, Subresource};
use crate::schema::schemas;

/// Upstream keeps at most this many `Update` entries; older ones merge into one.
const MAX_UPDATE_MANAGERS: usize = 10;
const ANCIENT_CHANGES: &str = "ancient-changes";

/// Upstream's limit on a field manager's name.
const MAX_MANAGER_LENGTH: usize = 128;

/// Who is writing, and through which subresource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldManager {
    pub name: String,
    pub subresource: Option<Subresource>,
}

impl FieldManager {
    /// The manager a request names with `?fieldManager=`, else upstream's default: its
    /// `User-Agent` up to the first `/` (`kubectl` for `kubectl/v1.33.1 (linux/amd64) …`).
    pub fn for_request(
        field_manager: Option<&str>,
        user_agent: Option<&str>,
        subresource: Option<Subresource>,
    ) -> Result<FieldManager> {
        let name = match field_manager {
            Some(name) => {
                if name.len() > MAX_MANAGER_LENGTH || !name.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
                    return Err(ApiError::invalid(
                        "",
                        "PatchOptions",
                        "",
                        vec![FieldError::invalid(
                            "fieldManager",
                            name,
                            "must consist of printable characters and be at most 128 long",
                        )],
                    ));
                }
                name.to_string()
            }
            None => {
                let agent = user_agent.unwrap_or("unknown");
                let prefix = agent.split('/').next().unwrap_or(agent);
                prefix.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(MAX_MANAGER_LENGTH).collect()
            }
        };
        Ok(FieldManager { name, subresource })
    }

    fn subresource_name(&self) -> &'static str {
        self.subresource.map_or("", Subresource::name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `ManagedFieldsEntry`.
#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: Operation,
    api_version: String,
    time: Option<String>,
    subresource: String,
    set: FieldSet,
    /// The entry as the object carried it, while it is unchanged: most writes change one
    /// manager's entry, and the others are written back as they were, not encoded again.
    raw: Option<Value>,
}

impl Entry {
    fn is(&self, manager: &FieldManager, operation: Operation) -> bool {
        self.manager == manager.name && self.operation == operation && self.subresource == manager.subresource_name()
    }

    /// How upstream names a manager in a conflict.
    fn describe(&self) -> String {
        match (self.operation, self.subresource.as_str()) {
            (Operation::Update, _) => format!("{:?} using {}", self.manager, self.api_version),
            (Operation::Apply, "") => format!("{:?}", self.manager),
            (Operation::Apply, sub) => format!("{:?} with subresource {sub:?}", self.manager),
        }
    }

    fn decode(value: Value) -> Result<Entry> {
        let text = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
        let operation = match value.get("operation").and_then(Value::as_str) {
            Some("Apply") => Operation::Apply,
            Some("Update") => Operation::Update,
            other => return Err(ApiError::bad_request(format!("invalid managedFields: operation {other:?}"))),
        };
        let set = match value.get("fieldsV1") {
            Some(fields) => FieldSet::from_fields_v1(fields)?,
            None => FieldSet::default(),
        };
        Ok(Entry {
            manager: text("manager"),
            operation,
            api_version: text("apiVersion"),
            time: value.get("time").and_then(Value::as_str).map(str::to_string),
            subresource: text("subresource"),
            set,
            raw: Some(value),
        })
    }

    fn encode(self) -> Value {
        if let Some(raw) = self.raw {
            return raw;
        }
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation.name(),
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.set.to_fields_v1(),
        });
        if let Some(time) = &self.time {
            entry["time"] = time.clone().into();
        }
        if !self.subresource.is_empty() {
            entry["subresource"] = self.subresource.clone().into();
        }
        entry
    }
}

/// The entries of an object's `metadata.managedFields`.
#[derive(Debug, Default)]
struct Managed {
    entries: Vec<Entry>,
}

impl Managed {
    /// The entries an object carries; `None` if it carries none, or ones that do not decode.
    fn of(object: &Value) -> Option<Managed> {
        let list = object.pointer("/metadata/managedFields")?.as_array()?;
        let entries = list.iter().cloned().map(Entry::decode).collect::<Result<Vec<_>>>().ok()?;
        (!entries.is_empty()).then_some(Managed { entries })
    }

    /// [`Managed::of`], taking the entries out of `object`: they are written back by
    /// [`Managed::write`].
    fn take(object: &mut Value) -> Option<Managed> {
        let list = std::mem::take(object.pointer_mut("/metadata/managedFields")?.as_array_mut()?);
        let entries = list.into_iter().map(Entry::decode).collect::<Result<Vec<_>>>().ok()?;
        (!entries.is_empty()).then_some(Managed { entries })
    }

    fn position(&self, manager: &FieldManager, operation: Operation) -> Option<usize> {
        self.entries.iter().position(|e| e.is(manager, operation))
    }

    /// Takes `fields` away from every manager but the one at `except`; drops those left empty.
    fn take_from_others(&mut self, except: Option<usize>, fields: &FieldSet) {
        for (i, entry) in self.entries.iter_mut().enumerate() {
            if Some(i) != except && entry.set.intersects(fields) {
                entry.set = entry.set.difference(fields);
                entry.raw = None;
            }
        }
    }

    fn drop_empty(&mut self) {
        self.entries.retain(|e| !e.set.is_empty());
    }

    /// Upstream's cap: past ten `Update` entries, the oldest merge into one `ancient-changes`
    /// entry, which counts as one of the ten.
    fn cap_updaters(&mut self) {
        if self.entries.iter().filter(|e| e.operation == Operation::Update).count() <= MAX_UPDATE_MANAGERS {
            return;
        }
        let is_bucket = |e: &Entry| e.operation == Operation::Update && e.manager == ANCIENT_CHANGES;
        let (mut updaters, others): (Vec<Entry>, Vec<Entry>) =
            self.entries.drain(..).partition(|e| e.operation == Operation::Update && !is_bucket(e));
        let (buckets, appliers): (Vec<Entry>, Vec<Entry>) = others.into_iter().partition(is_bucket);
        let mut bucket = buckets.into_iter().next().unwrap_or_else(|| Entry {
            manager: ANCIENT_CHANGES.into(),
            operation: Operation::Update,
            api_version: String::new(),
            time: None,
            subresource: String::new(),
            set: FieldSet::default(),
            raw: None,
        });
        bucket.raw = None;
        updaters.sort_by(|a, b| a.time.cmp(&b.time));
        let oldest = updaters.len() - (MAX_UPDATE_MANAGERS - 1);
        for old in updaters.drain(..oldest) {
            bucket.set = bucket.set.union(&old.set);
            bucket.api_version = old.api_version;
            bucket.time = bucket.time.max(old.time);
        }
        self.entries = appliers;
        self.entries.extend(updaters);
        self.entries.push(bucket);
    }

    /// Writes the entries into `object`, in upstream's order: appliers first, then by time,
    /// manager, version and subresource.
    fn write(mut self, object: &mut Value) {
        self.entries.sort_by(|a, b| {
            (a.operation, &a.time, &a.manager, &a.api_version, &a.subresource).cmp(&(
                b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
        });
        let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else { return };
        if self.entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), self.entries.into_iter().map(Entry::encode).collect());
        }
    }
}

fn kind_schema(def: &ResourceDef) -> Result<&'static Value> {
    let schemas = schemas();
    schemas
        .kind_definition(def)
        .and_then(|name| schemas.get(name))
        .ok_or_else(|| ApiError::internal(format!("no schema for {}", def.kind)))
}

/// The part of `set` a manager of `subresource` can own: never the identity and system
/// metadata (upstream strips them); through the status subresource only the status, and
/// through the resource everything but a status kept by its own subresource.
fn ownable(def: &ResourceDef, subresource: Option<Subresource>, set: FieldSet) -> FieldSet {
    let mut set = set.without("f:apiVersion").without("f:kind");
    for field in
        ["name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "selfLink", "managedFields"]
    {
        set = set.without_path(&["f:metadata", &format!("f:{field}")]);
    }
    match subresource {
        Some(Subresource::Status) => set.only("f:status"),
        _ if def.has(Subresource::Status) => set.without("f:status"),
        _ => set,
    }
}

/// The object without its managed fields, to tell whether anything else changed.
fn without_managed_fields(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(meta) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    copy
}

/// Records a create, update or patch by `manager` (an `Update` operation): the fields it
/// added or changed become its own and no one else's, and fields it removed are no one's.
/// `new` gets its `metadata.managedFields`. Managed fields the request set itself (as
/// kubectl does when it migrates client-side apply to server-side) are taken as they are.
pub fn track_update(def: &ResourceDef, old: Option<&Value>, new: &mut Value, manager: &FieldManager, now: &str) {
    let Ok(schema) = kind_schema(def) else { return };
    let reset = new.pointer("/metadata/managedFields").and_then(Value::as_array).is_some_and(|l| {
        // `[{}]` is upstream's way to clear them.
        l.len() == 1 && l[0].as_object().is_some_and(Map::is_empty)
    });
    let empty = json!({});
    // Compared while `new` still carries the managed fields it came with: those are most often
    // the old ones, a subtree the comparison then passes over as equal.
    let comparison =
        typed::compare(schema, old.unwrap_or(&empty), new).filter(|set| ownable(def, manager.subresource, set));
    let mut managed = if reset {
        Managed::default()
    } else {
        Managed::take(new).or_else(|| old.and_then(Managed::of)).unwrap_or_default()
    };
    if !comparison.is_empty() {
        let changed = comparison.added.union(&comparison.modified);
        let mine = managed.position(manager, Operation::Update);
        managed.take_from_others(mine, &changed.union(&comparison.removed));
        let entry = match mine {
            Some(i) => &mut managed.entries[i],
            None => {
                managed.entries.push(Entry {
                    manager: manager.name.clone(),
                    operation: Operation::Update,
                    api_version: String::new(),
                    time: None,
                    subresource: manager.subresource_name().into(),
                    set: FieldSet::default(),
                    raw: None,
                });
                managed.entries.last_mut().expect("just pushed")
            }
        };
        entry.set = entry.set.difference(&comparison.removed).union(&changed);
        entry.api_version = def.api_version();
        entry.time = Some(now.to_string());
        entry.raw = None;
        managed.drop_empty();
        managed.cap_updaters();
    }
    managed.write(new);
}

/// Server-side apply of `config` by `manager` to `live` (`None` when the object does not exist
/// yet): the object to write, with its managed fields, or a 409 naming every field another
/// manager owns that the configuration would change, unless `force` takes them over.
pub fn apply(
    def: &ResourceDef,
    live: Option<&Value>,
    config: &Value,
    manager: &FieldManager,
    force: bool,
    now: &str,
) -> Result<Value> {
    let schema = kind_schema(def)?;
    if config.pointer("/metadata/managedFields").is_some_and(|m| !m.is_null()) {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    let empty = json!({});
    let live = live.unwrap_or(&empty);
    let mut managed = Managed::of(live).unwrap_or_default();
    let mut new = typed::merge(schema, live, config)?;
    let applied = ownable(def, manager.subresource, typed::field_set(schema, config)?);

    let mine = managed.position(manager, Operation::Apply);
    let (last, last_time) = match mine {
        Some(i) => (managed.entries[i].set.clone(), managed.entries[i].time.clone()),
        None => (FieldSet::default(), None),
    };
    let entry = Entry {
        manager: manager.name.clone(),
        operation: Operation::Apply,
        api_version: def.api_version(),
        time: last_time,
        subresource: manager.subresource_name().into(),
        set: applied,
        raw: None,
    };
    let mine = match mine {
        Some(i) => {
            managed.entries[i] = entry;
            i
        }
        None => {
            managed.entries.push(entry);
            managed.entries.len() - 1
        }
    };
    // What this manager applied before and no longer does goes, unless another applier has it.
    if !last.is_empty() {
        let claimed = managed
            .entries
            .iter()
            .filter(|e| e.operation == Operation::Apply)
            .fold(FieldSet::default(), |all, e| all.union(&e.set));
        typed::remove(schema, &mut new, &last.difference(&claimed));
    }

    let comparison = typed::compare(schema, live, &new).filter(|set| ownable(def, manager.subresource, set));
    let changed = comparison.added.union(&comparison.modified);
    let conflicts: Vec<(String, FieldSet)> = managed
        .entries
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != mine)
        .map(|(_, e)| (e.describe(), e.set.intersection(&changed)))
        .filter(|(_, fields)| !fields.is_empty())
        .collect();
    if !conflicts.is_empty() && !force {
        return Err(conflict(&conflicts));
    }
    managed.take_from_others(Some(mine), &changed.union(&comparison.removed));
    if without_managed_fields(&new) != without_managed_fields(live) || managed.entries[mine].time.is_none() {
        managed.entries[mine].time = Some(now.to_string());
        managed.entries[mine].raw = None;
    }
    managed.drop_empty();
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    managed.write(&mut new);
    Ok(new)
}

/// Upstream's apply conflict: 409 `Conflict`, one `FieldManagerConflict` cause per field.
fn conflict(conflicts: &[(String, FieldSet)]) -> ApiError {
    let mut causes = Vec::new();
    for (manager, fields) in conflicts {
        for path in fields.paths() {
            causes.push(FieldError {
                kind: CauseType::FieldManagerConflict,
                field: display(&path),
                value: None,
                detail: format!("conflict with {manager}"),
            });
        }
    }
    let count = causes.len();
    let what = match conflicts {
        [(manager, _)] if count == 1 => format!("conflict with {manager}: {}", causes[0].field),
        [(manager, _)] => {
            let lines: Vec<String> = causes.iter().map(|c| format!("- {}", c.field)).collect();
            format!("conflicts with {manager}:\n{}", lines.join("\n"))
        }
        many => {
            let mut lines = vec!["conflicts:".to_string()];
            for (manager, fields) in many {
                lines.push(format!("- {manager}:"));
                lines.extend(fields.paths().iter().map(|p| format!("  - {}", display(p))));
            }
            lines.join("\n")
        }
    };
    let plural = if count == 1 { "" } else { "s" };
    let mut err = ApiError::new(Reason::Conflict, format!("Apply failed with {count} conflict{plural}: {what}"));
    err.causes = causes;
    err
}

#[cfg(test)]
mod tests;
