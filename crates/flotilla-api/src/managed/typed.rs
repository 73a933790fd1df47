//! Objects walked by their schema, as structured-merge-diff walks typed values: which parts are
//! granular (struct fields, map entries, items of keyed lists and sets) and which are leaves
//! (scalars, atomic lists, maps and structs), and the four walks server-side apply is made of:
//! the field set of a value, the comparison of two values, the merge of a configuration into an
//! object, and the removal of a set of fields.

use serde_json::{Map, Value};

use super::fieldset::{self, Element, FieldSet};
use crate::error::{ApiError, Result};
use crate::schema::schemas;

/// How a value is walked.
#[derive(Clone, Debug)]
pub(crate) enum Shape<'s> {
    /// Owned and compared as a whole.
    Leaf,
    /// Fields of a struct, each with its own schema.
    Struct(&'s Map<String, Value>),
    /// Entries of a map, all with the element schema.
    Map(&'s Value),
    /// Items of a keyed list or a set.
    List { keys: Option<Vec<String>>, items: &'s Value },
}

/// The definition a schema refers to, or the schema itself.
fn resolve(schema: &Value) -> &Value {
    let reference = schema.get("$ref").or_else(|| schema.pointer("/allOf/0/$ref")).and_then(Value::as_str);
    reference.and_then(|r| r.rsplit('/').next()).and_then(|name| schemas().get(name)).unwrap_or(schema)
}

pub(crate) fn shape(schema: &Value) -> Shape<'_> {
    let resolved = resolve(schema);
    let atomic = |s: &Value| s.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic");
    if atomic(schema) || atomic(resolved) {
        return Shape::Leaf;
    }
    match resolved.get("type").and_then(Value::as_str) {
        Some("array") => {
            let Some(items) = resolved.get("items") else { return Shape::Leaf };
            list_shape(schema, items)
        }
        Some("object") | None => {
            if let Some(properties) = resolved.get("properties").and_then(Value::as_object) {
                Shape::Struct(properties)
            } else if let Some(element) = resolved.get("additionalProperties").filter(|a| a.is_object()) {
                Shape::Map(element)
            } else {
                Shape::Leaf
            }
        }
        Some(_) => Shape::Leaf,
    }
}

/// upstream's rule (kube-openapi `schemaconv`): the list type if declared, else a `merge` patch
/// strategy makes a keyed list (with a merge key) or a set (without), else the list is atomic.
fn list_shape<'s>(property: &'s Value, items: &'s Value) -> Shape<'s> {
    let text = |key: &str| property.get(key).and_then(Value::as_str);
    match text("x-kubernetes-list-type") {
        Some("set") => return Shape::List { keys: None, items },
        Some("map") => {
            let keys = property
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            return Shape::List { keys: Some(keys), items };
        }
        Some(_) => return Shape::Leaf,
        None => {}
    }
    if text("x-kubernetes-patch-strategy").is_some_and(|s| s.split(',').any(|s| s == "merge")) {
        let keys = text("x-kubernetes-patch-merge-key").map(|k| vec![k.to_string()]);
        return Shape::List { keys, items };
    }
    Shape::Leaf
}

/// The schema of `field` of a struct or map.
fn field_schema<'s>(shape: &Shape<'s>, field: &str) -> Option<&'s Value> {
    match shape {
        Shape::Struct(properties) => properties.get(field),
        Shape::Map(element) => Some(element),
        _ => None,
    }
}

/// What an item of a list is called in a path: its keys (a key it leaves out takes the key
/// field's default, as upstream), or for a set its value.
fn item_element(keys: &Option<Vec<String>>, items: &Value, item: &Value) -> Result<Element> {
    let Some(keys) = keys else { return Ok(fieldset::value(item)) };
    let fields = keys
        .iter()
        .map(|key| {
            let value = item.get(key).cloned().or_else(|| resolve(items).pointer(&format!("/properties/{key}/default")).cloned());
            value.map(|v| (key.clone(), v)).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "associative list with keys has an element that omits key field {key:?} (and doesn't have default value)"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(fieldset::key(&fields))
}

/// A list's items by their path elements, in order, the first of duplicates winning.
fn index_items<'v>(keys: &Option<Vec<String>>, items: &Value, list: &'v [Value]) -> Result<Vec<(Element, &'v Value)>> {
    let mut out: Vec<(Element, &Value)> = Vec::with_capacity(list.len());
    for item in list {
        let element = item_element(keys, items, item)?;
        if !out.iter().any(|(e, _)| *e == element) {
            out.push((element, item));
        }
    }
    Ok(out)
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(list) => list.is_empty(),
        _ => false,
    }
}

/// The fields a value sets: every leaf, every list item, and every empty or null field.
pub(crate) fn field_set(schema: &Value, value: &Value) -> Result<FieldSet> {
    let mut set = FieldSet::default();
    collect(schema, value, &mut Vec::new(), &mut set)?;
    Ok(set)
}

fn collect(schema: &Value, value: &Value, path: &mut Vec<Element>, set: &mut FieldSet) -> Result<()> {
    let shape = shape(schema);
    match (&shape, value) {
        (Shape::Struct(_) | Shape::Map(_), Value::Object(map)) => {
            for (name, child) in map {
                path.push(fieldset::field(name));
                match field_schema(&shape, name) {
                    Some(child_schema) => {
                        if child.is_null() || child.as_object().is_some_and(Map::is_empty) {
                            set.insert(path);
                        }
                        collect(child_schema, child, path, set)?;
                    }
                    None => set.insert(path),
                }
                path.pop();
            }
        }
        (Shape::List { keys, items }, Value::Array(list)) if !list.is_empty() => {
            for (element, item) in index_items(keys, items, list)? {
                path.push(element);
                set.insert(path);
                collect(items, item, path, set)?;
                path.pop();
            }
        }
        _ => set.insert(path),
    }
    Ok(())
}

/// What changed from one value to another, path by path.
#[derive(Debug, Default)]
pub(crate) struct Comparison {
    pub(crate) added: FieldSet,
    pub(crate) modified: FieldSet,
    pub(crate) removed: FieldSet,
}

impl Comparison {
    pub(crate) fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }

    /// Each set passed through `keep`.
    pub(crate) fn filter(self, keep: impl Fn(FieldSet) -> FieldSet) -> Comparison {
        Comparison { added: keep(self.added), modified: keep(self.modified), removed: keep(self.removed) }
    }
}

pub(crate) fn compare(schema: &Value, old: &Value, new: &Value) -> Comparison {
    let mut comparison = Comparison::default();
    compare_at(schema, Some(old), Some(new), &mut Vec::new(), false, &mut comparison);
    comparison
}

/// A list item (`item`) and a map are themselves added or removed along with their contents; a
/// struct or a list is not. Upstream compares Go values, where a struct field and a list field
/// without `omitempty` are always present, if empty, and a map field is absent until set: this
/// gives the same sets for the served kinds.
fn compare_at(
    schema: &Value,
    old: Option<&Value>,
    new: Option<&Value>,
    path: &mut Vec<Element>,
    item: bool,
    out: &mut Comparison,
) {
    // Nothing within an unchanged value is added, removed or modified: most of an update.
    if let (Some(a), Some(b)) = (old, new)
        && a == b
    {
        return;
    }
    let shape = shape(schema);
    let leaf = |out: &mut Comparison, path: &[Element]| match (old, new) {
        (None, Some(_)) => out.added.insert(path),
        (Some(_), None) => out.removed.insert(path),
        (Some(a), Some(b)) if a != b => out.modified.insert(path),
        _ => {}
    };
    let both_empty = old.is_none_or(is_empty) && new.is_none_or(is_empty);
    match (&shape, old, new) {
        (_, _, _) if both_empty => leaf(out, path),
        (Shape::Struct(_) | Shape::Map(_), a, b)
            if a.is_none_or(Value::is_object) && b.is_none_or(Value::is_object) =>
        {
            let empty = Map::new();
            let (a_map, b_map) =
                (a.and_then(Value::as_object).unwrap_or(&empty), b.and_then(Value::as_object).unwrap_or(&empty));
            let names: std::collections::BTreeSet<&String> = a_map.keys().chain(b_map.keys()).collect();
            for name in names {
                path.push(fieldset::field(name));
                match field_schema(&shape, name) {
                    Some(child) => {
                        let is_entry = matches!(shape, Shape::Map(_));
                        compare_at(child, a_map.get(name), b_map.get(name), path, is_entry, out);
                    }
                    // A field the schema does not know is a leaf.
                    None => compare_at(&Value::Null, a_map.get(name), b_map.get(name), path, false, out),
                }
                path.pop();
            }
            if item || matches!(shape, Shape::Map(_)) {
                container(out, path, old, new);
            }
        }
        (Shape::List { keys, items }, a, b) if a.is_none_or(Value::is_array) && b.is_none_or(Value::is_array) => {
            let (a_list, b_list) = (
                a.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default(),
                b.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default(),
            );
            // An item without its keys cannot be told apart from the others: the list changes
            // as a whole.
            let (Ok(a_items), Ok(b_items)) = (index_items(keys, items, a_list), index_items(keys, items, b_list))
            else {
                return leaf(out, path);
            };
            let mut elements: Vec<&Element> = a_items.iter().map(|(e, _)| e).collect();
            elements.extend(b_items.iter().map(|(e, _)| e).filter(|e| !a_items.iter().any(|(a, _)| a == *e)));
            for element in elements {
                let a_item = find(&a_items, element);
                let b_item = find(&b_items, element);
                path.push(element.clone());
                compare_at(items, a_item, b_item, path, true, out);
                path.pop();
            }
            if item {
                container(out, path, old, new);
            }
        }
        _ => leaf(out, path),
    }
}

fn find<'v>(items: &[(Element, &'v Value)], element: &Element) -> Option<&'v Value> {
    items.iter().find(|(e, _)| e == element).map(|(_, v)| *v)
}

/// A container that appeared or disappeared is itself added or removed.
fn container(out: &mut Comparison, path: &[Element], old: Option<&Value>, new: Option<&Value>) {
    match (old, new) {
        (None, Some(_)) => out.added.insert(path),
        (Some(_), None) => out.removed.insert(path),
        _ => {}
    }
}

/// `config` merged into `live`: what the configuration sets wins, the rest of `live` stays;
/// keyed lists and sets merge item by item, in the order upstream gives them.
pub(crate) fn merge(schema: &Value, live: &Value, config: &Value) -> Result<Value> {
    Ok(merge_at(schema, Some(live), Some(config))?.unwrap_or(Value::Null))
}

fn merge_at(schema: &Value, live: Option<&Value>, config: Option<&Value>) -> Result<Option<Value>> {
    let (live, config) = match (live, config) {
        (None, None) => return Ok(None),
        (Some(v), None) => return Ok(Some(v.clone())),
        (None, Some(v)) => return Ok(Some(v.clone())),
        (Some(l), Some(c)) => (l, c),
    };
    let shape = shape(schema);
    Ok(Some(match (&shape, live, config) {
        (Shape::Struct(_) | Shape::Map(_), Value::Object(l), Value::Object(c)) => {
            let mut out = l.clone();
            for (name, value) in c {
                let merged = match field_schema(&shape, name) {
                    Some(child) => merge_at(child, l.get(name), Some(value))?,
                    None => Some(value.clone()),
                };
                if let Some(merged) = merged {
                    out.insert(name.clone(), merged);
                }
            }
            Value::Object(out)
        }
        (Shape::List { keys, items }, Value::Array(l), Value::Array(c)) => {
            Value::Array(merge_lists(keys, items, l, c)?)
        }
        _ => config.clone(),
    }))
}

/// structured-merge-diff's list merge: items both lists have come in the configuration's order;
/// items only the live list has keep their place among them.
fn merge_lists(keys: &Option<Vec<String>>, items: &Value, live: &[Value], config: &[Value]) -> Result<Vec<Value>> {
    let lhs = index_items(keys, items, live)?;
    let rhs = index_items(keys, items, config)?;
    let in_lhs = |e: &Element| find(&lhs, e);
    let in_rhs = |e: &Element| find(&rhs, e);
    let mut shared = rhs.iter().map(|(e, _)| e).filter(|e| in_lhs(e).is_some());
    let mut next_shared = shared.next();
    let mut out = Vec::with_capacity(lhs.len().max(rhs.len()));
    let (mut l, mut r) = (0, 0);
    while l < lhs.len() || r < rhs.len() {
        if l < lhs.len() && r < rhs.len() {
            let element = &lhs[l].0;
            if *element == rhs[r].0 {
                out.extend(merge_at(items, Some(lhs[l].1), Some(rhs[r].1))?);
                l += 1;
                r += 1;
                next_shared = shared.next();
                continue;
            }
            if in_rhs(element).is_some() && next_shared.is_some_and(|n| n != element) {
                // A shared item, but not the one due now: it comes when the configuration has it.
                l += 1;
                continue;
            }
        }
        if l < lhs.len() && in_rhs(&lhs[l].0).is_none() {
            out.push(lhs[l].1.clone());
            l += 1;
            continue;
        }
        if r < rhs.len() {
            let element = &rhs[r].0;
            out.extend(merge_at(items, in_lhs(element), Some(rhs[r].1))?);
            r += 1;
            if next_shared == Some(element) {
                next_shared = shared.next();
            }
        } else {
            // Only shared items already merged are left on the live side.
            l += 1;
        }
    }
    Ok(out)
}

/// `value` without the fields and items in `set`.
pub(crate) fn remove(schema: &Value, value: &mut Value, set: &FieldSet) {
    if set.is_empty() {
        return;
    }
    let shape = shape(schema);
    match (&shape, value) {
        (Shape::Struct(_) | Shape::Map(_), Value::Object(map)) => {
            map.retain(|name, _| !set.has_member(&fieldset::field(name)));
            for (name, child) in map.iter_mut() {
                if let (Some(below), Some(child_schema)) =
                    (set.child(&fieldset::field(name)), field_schema(&shape, name))
                {
                    remove(child_schema, child, below);
                }
            }
        }
        (Shape::List { keys, items }, Value::Array(list)) => {
            list.retain(|item| item_element(keys, items, item).map_or(true, |e| !set.has_member(&e)));
            for item in list.iter_mut() {
                if let Some(below) = item_element(keys, items, item).ok().and_then(|e| set.child(&e)) {
                    remove(items, item, below);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
