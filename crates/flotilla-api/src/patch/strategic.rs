//! Strategic merge patch, as upstream's `strategicpatch.StrategicMergeMapPatch` applies it on the
//! server (parallel lists merged, unmatched nulls ignored). Maps merge key by key; lists whose
//! field has the `merge` strategy merge element by element on their merge key (or as sets, for
//! lists of scalars); every other list is replaced. Directives:
//!
//! - `$patch: replace | delete` in a map, and `{$patch: delete, <key>: v}` / `{$patch: replace}`
//!   as list elements;
//! - `$retainKeys: [..]`: keys of the map to keep;
//! - `$setElementOrder/<list>: [..]`: the order of the merged list;
//! - `$deleteFromPrimitiveList/<list>: [..]`: scalars to remove.

use serde_json::{Map, Value};

use crate::error::{ApiError, Reason, Result};
use crate::schema::{PatchMeta, schemas};

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Applies `patch` to `original`, an object of the kind whose definition is `definition`.
pub fn strategic_merge(original: Value, patch: Value, definition: &str) -> Result<Value> {
    let (Value::Object(original), Value::Object(patch)) = (original, patch) else {
        return Err(bad("a strategic merge patch must be a JSON object"));
    };
    Ok(Value::Object(merge_map(original, patch, Some(definition))?))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    definition: Option<&str>,
) -> Result<Map<String, Value>> {
    if let Some(directive) = patch.remove(DIRECTIVE) {
        return match directive.as_str() {
            Some("replace") => Ok(strip_directives_map(patch)),
            Some("delete") => Ok(Map::new()),
            _ => Err(bad(format!("Unknown patch type: {directive} in map: {}", Value::Object(patch)))),
        };
    }
    retain_keys(&mut original, &mut patch)?;
    set_element_order(&mut original, &mut patch, definition)?;
    for (key, patch_value) in patch {
        let (key, delete_list) = match key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            Some(list) => (list.to_string(), true),
            None => (key, false),
        };
        if patch_value.is_null() {
            original.remove(&key);
            continue;
        }
        let field = schemas().field(definition, &key);
        let Some(current) = original.remove(&key) else {
            if !delete_list {
                original.insert(key, strip_directives(patch_value));
            }
            continue;
        };
        let merged = match (current, patch_value) {
            (Value::Object(current), Value::Object(patch)) => {
                if field.meta.is_some_and(|m| m.strategy == "replace") {
                    Value::Object(strip_directives_map(patch))
                } else {
                    Value::Object(merge_map(current, patch, field.definition.as_deref())?)
                }
            }
            (Value::Array(current), Value::Array(patch)) => {
                Value::Array(merge_list(current, patch, field.meta, field.definition.as_deref(), delete_list)?)
            }
            (_, patch) if delete_list => {
                return Err(bad(format!(
                    "invalid patch: {DELETE_FROM_PRIMITIVE_LIST}{key} must be a list, got {patch}"
                )));
            }
            (_, patch) => strip_directives(patch),
        };
        original.insert(key, merged);
    }
    Ok(original)
}

/// `$retainKeys`: every key the patch sets must be listed, and original keys not listed go.
fn retain_keys(original: &mut Map<String, Value>, patch: &mut Map<String, Value>) -> Result<()> {
    let Some(keys) = patch.remove(RETAIN_KEYS) else { return Ok(()) };
    let Value::Array(keys) = keys else { return Err(bad("invalid patch: $retainKeys must be a list of strings")) };
    let keys: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
    for (key, value) in patch.iter() {
        let directive = key.starts_with(SET_ELEMENT_ORDER) || key.starts_with(DELETE_FROM_PRIMITIVE_LIST);
        if !value.is_null() && !directive && !keys.contains(&key.as_str()) {
            return Err(ApiError::new(Reason::Invalid, "the patch has fields not present in its $retainKeys list"));
        }
    }
    original.retain(|key, _| keys.contains(&key.as_str()));
    Ok(())
}

/// `$setElementOrder/<list>`: merges the list it names now, in the order it gives.
fn set_element_order(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    definition: Option<&str>,
) -> Result<()> {
    let directives: Vec<String> = patch.keys().filter(|k| k.starts_with(SET_ELEMENT_ORDER)).cloned().collect();
    for directive in directives {
        let order = match patch.remove(&directive) {
            Some(Value::Array(order)) => order,
            _ => return Err(bad(format!("invalid patch: {directive} must be a list"))),
        };
        let key = directive[SET_ELEMENT_ORDER.len()..].to_string();
        let field = schemas().field(definition, &key);
        let merge_key = field.meta.and_then(|m| m.merge_key);
        let current = match original.remove(&key) {
            Some(Value::Array(list)) => Some(list),
            Some(other) => return Err(bad(format!("invalid patch: {key} is not a list in the object: {other}"))),
            None => None,
        };
        let patch_list = match patch.remove(&key) {
            Some(Value::Array(list)) => Some(list),
            Some(Value::Null) | None => None,
            Some(other) => return Err(bad(format!("invalid patch: {key} must be a list, got {other}"))),
        };
        let merged = match (&current, patch_list) {
            (None, None) => continue,
            (Some(current), None) => current.clone(),
            (None, Some(list)) => strip_list(list),
            (Some(current), Some(list)) => {
                merge_list(current.clone(), list, field.meta, field.definition.as_deref(), false)?
            }
        };
        let (in_order, server_only) = partition(merged, &order, merge_key)?;
        let ordered =
            normalize_order(in_order, server_only, &order, current.as_deref().unwrap_or_default(), merge_key)?;
        original.insert(key, Value::Array(ordered));
    }
    Ok(())
}

fn merge_list(
    current: Vec<Value>,
    patch: Vec<Value>,
    meta: Option<PatchMeta>,
    definition: Option<&str>,
    delete_list: bool,
) -> Result<Vec<Value>> {
    if !meta.is_some_and(|m| m.merges()) {
        // Lists without the merge strategy are replaced (a deletion list has nothing to do).
        return Ok(if delete_list { current } else { strip_list(patch) });
    }
    if current.is_empty() && patch.is_empty() {
        return Ok(current);
    }
    let maps = current.iter().chain(&patch).any(Value::is_object);
    if !maps {
        if delete_list {
            return Ok(current.into_iter().filter(|v| !patch.contains(v)).collect());
        }
        let mut merged: Vec<Value> = Vec::new();
        for value in current.iter().chain(&patch) {
            if !merged.contains(value) {
                merged.push(value.clone());
            }
        }
        let (in_patch, server_only) = partition(merged, &patch, None)?;
        return normalize_order(in_patch, server_only, &patch, &current, None);
    }
    let Some(key) = meta.and_then(|m| m.merge_key) else {
        return Err(bad(format!("cannot merge lists without merge key for {}", definition.unwrap_or("a list"))));
    };
    // Special elements first: `$patch: delete` removes, `$patch: replace` replaces the list.
    let mut current = current;
    let mut plain = Vec::new();
    let mut replace = false;
    for element in patch {
        let Value::Object(mut map) = element else {
            return Err(bad(format!("list element is not an object: {element}")));
        };
        match map.remove(DIRECTIVE) {
            None => plain.push(Value::Object(map)),
            Some(Value::String(d)) if d == "delete" => {
                let value = map.get(key).cloned().ok_or_else(|| no_merge_key(&map, key))?;
                current.retain(|e| e.get(key) != Some(&value));
            }
            Some(Value::String(d)) if d == "replace" => replace = true,
            Some(Value::String(d)) if d == "merge" => {
                return Err(bad("merging lists cannot yet be specified in the patch"));
            }
            Some(other) => return Err(bad(format!("Unknown patch type: {other} in map: {}", Value::Object(map)))),
        }
    }
    if replace {
        return Ok(strip_list(plain));
    }
    let mut merged = current.clone();
    for element in &plain {
        let Value::Object(patch_map) = element else { unreachable!("checked above") };
        let value = patch_map.get(key).ok_or_else(|| no_merge_key(patch_map, key))?;
        match merged.iter().position(|e| e.get(key) == Some(value)) {
            Some(i) => {
                let Value::Object(existing) = merged[i].take() else {
                    return Err(bad("list element is not an object"));
                };
                merged[i] = Value::Object(merge_map(existing, patch_map.clone(), definition)?);
            }
            None => merged.push(strip_directives(element.clone())),
        }
    }
    let (in_patch, server_only) = partition(merged, &plain, Some(key))?;
    normalize_order(in_patch, server_only, &plain, &current, Some(key))
}

fn no_merge_key(map: &Map<String, Value>, key: &str) -> ApiError {
    bad(format!("map: {} does not contain declared merge key: {key}", Value::Object(map.clone())))
}

/// The identity of a list element: its merge key's value, or the element itself.
fn identity<'a>(element: &'a Value, merge_key: Option<&str>) -> Option<&'a Value> {
    match merge_key {
        Some(key) => element.get(key),
        None => Some(element),
    }
}

fn position(list: &[Value], element: &Value, merge_key: Option<&str>) -> Option<usize> {
    let id = identity(element, merge_key)?;
    list.iter().position(|e| identity(e, merge_key) == Some(id))
}

/// Splits `merged` into the elements named in `by` and the rest.
fn partition(merged: Vec<Value>, by: &[Value], merge_key: Option<&str>) -> Result<(Vec<Value>, Vec<Value>)> {
    Ok(merged.into_iter().partition(|e| position(by, e, merge_key).is_some()))
}

/// Upstream's `normalizeElementOrder`: patch elements in `patch_order`, server-only elements in
/// `server_order`, then both interleaved by their places in the server's list.
fn normalize_order(
    mut patch: Vec<Value>,
    mut server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: Option<&str>,
) -> Result<Vec<Value>> {
    let sort = |list: &mut Vec<Value>, order: &[Value]| {
        // Stable: elements missing from `order` keep their relative places.
        list.sort_by(|a, b| match (position(order, a, merge_key), position(order, b, merge_key)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => std::cmp::Ordering::Equal,
        });
    };
    sort(&mut patch, patch_order);
    sort(&mut server_only, server_order);
    // Insert server-only elements (left) among patch elements (right) by server order.
    let mut out = Vec::with_capacity(patch.len() + server_only.len());
    let (mut left, mut right) = (server_only.into_iter().peekable(), patch.into_iter().peekable());
    loop {
        match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => out.push(left.next().unwrap()),
            (None, Some(_)) => out.push(right.next().unwrap()),
            (Some(l), Some(r)) => {
                let before = matches!(
                    (position(server_order, l, merge_key), position(server_order, r, merge_key)),
                    (Some(li), Some(ri)) if li < ri
                );
                out.push(if before { left.next().unwrap() } else { right.next().unwrap() });
            }
        }
    }
    Ok(out)
}

/// Removes directives from a value that is taken whole (not merged).
fn strip_directives(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(strip_directives_map(map)),
        Value::Array(list) => Value::Array(strip_list(list)),
        other => other,
    }
}

fn strip_directives_map(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k, strip_directives(v))).collect()
}

fn strip_list(list: Vec<Value>) -> Vec<Value> {
    list.into_iter().filter(|e| e.get(DIRECTIVE).is_none()).map(strip_directives).collect()
}

#[cfg(test)]
mod tests;
