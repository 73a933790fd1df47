//! Sets of field paths, as structured-merge-diff's `fieldpath.Set` holds them and `FieldsV1`
//! writes them: each level has its members (paths that end there) and children (paths that go on).
//!
//! A path element is kept in its `FieldsV1` spelling, which is also a total order: `f:<field>`
//! for a field or map key, `k:<json>` for a list item by its keys (sorted, compact JSON), `v:<json>`
//! for an item of a set, `i:<n>` for an item by position.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::error::{ApiError, Result};

pub(crate) type Element = String;

pub(crate) fn field(name: &str) -> Element {
    format!("f:{name}")
}

/// `k:{"containerPort":80,"protocol":"TCP"}`: keys in name order, compact JSON.
pub(crate) fn key(fields: &[(String, Value)]) -> Element {
    let mut sorted: Vec<&(String, Value)> = fields.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let body: Vec<String> =
        sorted.iter().map(|(name, value)| format!("{}:{}", Value::String(name.clone()), value)).collect();
    format!("k:{{{}}}", body.join(","))
}

pub(crate) fn value(item: &Value) -> Element {
    format!("v:{item}")
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSet {
    members: BTreeSet<Element>,
    children: BTreeMap<Element, FieldSet>,
}

impl FieldSet {
    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    pub(crate) fn insert(&mut self, path: &[Element]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    /// The paths below `element`.
    pub(crate) fn child(&self, element: &str) -> Option<&FieldSet> {
        self.children.get(element)
    }

    pub(crate) fn has_member(&self, element: &str) -> bool {
        self.members.contains(element)
    }

    pub(crate) fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.members.extend(other.members.iter().cloned());
        for (element, child) in &other.children {
            let merged = match out.children.get(element) {
                Some(mine) => mine.union(child),
                None => child.clone(),
            };
            out.children.insert(element.clone(), merged);
        }
        out
    }

    /// The paths of `self` that are not in `other` (paths, not subtrees: `other` having `a` does
    /// not take `a.b` out of `self`).
    pub(crate) fn difference(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.difference(&other.members).cloned().collect();
        let children = self
            .children
            .iter()
            .filter_map(|(element, child)| {
                let rest = match other.children.get(element) {
                    Some(theirs) => child.difference(theirs),
                    None => child.clone(),
                };
                (!rest.is_empty()).then(|| (element.clone(), rest))
            })
            .collect();
        FieldSet { members, children }
    }

    pub(crate) fn intersection(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.intersection(&other.members).cloned().collect();
        let children = self
            .children
            .iter()
            .filter_map(|(element, child)| {
                let both = child.intersection(other.children.get(element)?);
                (!both.is_empty()).then(|| (element.clone(), both))
            })
            .collect();
        FieldSet { members, children }
    }

    /// `self` without `element` and everything below it.
    pub(crate) fn without(mut self, element: &str) -> FieldSet {
        self.members.remove(element);
        self.children.remove(element);
        self
    }

    /// `self` without `path` and everything below it.
    pub(crate) fn without_path(mut self, path: &[&str]) -> FieldSet {
        match path {
            [] => self,
            [last] => self.without(last),
            [first, rest @ ..] => {
                if let Some(child) = self.children.get_mut(*first) {
                    *child = std::mem::take(child).without_path(rest);
                    if child.is_empty() {
                        self.children.remove(*first);
                    }
                }
                self
            }
        }
    }

    /// Only `element` and what is below it.
    pub(crate) fn only(mut self, element: &str) -> FieldSet {
        let mut out = FieldSet::default();
        if let Some(member) = self.members.take(element) {
            out.members.insert(member);
        }
        if let Some((element, child)) = self.children.remove_entry(element) {
            out.children.insert(element, child);
        }
        out
    }

    /// Whether any path is in both sets.
    pub(crate) fn intersects(&self, other: &FieldSet) -> bool {
        !self.members.is_disjoint(&other.members)
            || self
                .children
                .iter()
                .any(|(element, child)| other.children.get(element).is_some_and(|o| child.intersects(o)))
    }

    /// Every path, in order.
    pub(crate) fn paths(&self) -> Vec<Vec<Element>> {
        let mut out = Vec::new();
        self.collect_paths(&mut Vec::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: &mut Vec<Element>, out: &mut Vec<Vec<Element>>) {
        let elements: BTreeSet<&Element> = self.members.iter().chain(self.children.keys()).collect();
        for element in elements {
            prefix.push(element.clone());
            if self.members.contains(element) {
                out.push(prefix.clone());
            }
            if let Some(child) = self.children.get(element) {
                child.collect_paths(prefix, out);
            }
            prefix.pop();
        }
    }

    /// The `fieldsV1` form: `{"f:spec":{"f:replicas":{}}}`, with `".": {}` where a path both ends
    /// and goes on.
    pub(crate) fn to_fields_v1(&self) -> Value {
        let mut out = Map::new();
        for element in &self.members {
            out.insert(element.clone(), Value::Object(Map::new()));
        }
        for (element, child) in &self.children {
            let mut inner = match child.to_fields_v1() {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            if self.members.contains(element) {
                inner.insert(".".into(), Value::Object(Map::new()));
            }
            out.insert(element.clone(), Value::Object(inner));
        }
        Value::Object(out)
    }

    pub(crate) fn from_fields_v1(value: &Value) -> Result<FieldSet> {
        let map = value.as_object().ok_or_else(|| malformed("fieldsV1 must be an object"))?;
        let mut set = FieldSet::default();
        for (element, inner) in map {
            if element == "." {
                continue;
            }
            if !["f:", "k:", "v:", "i:"].iter().any(|p| element.starts_with(p)) {
                return Err(malformed(&format!("unknown path element {element:?} in fieldsV1")));
            }
            let inner_map = inner.as_object().ok_or_else(|| malformed("fieldsV1 entries must be objects"))?;
            if inner_map.is_empty() || inner_map.contains_key(".") {
                set.members.insert(element.clone());
            }
            let child = FieldSet::from_fields_v1(inner)?;
            if !child.is_empty() {
                set.children.insert(element.clone(), child);
            }
        }
        Ok(set)
    }
}

fn malformed(why: &str) -> ApiError {
    ApiError::bad_request(format!("invalid managedFields: {why}"))
}

/// A path as upstream prints it in conflicts: `.spec.containers[name="web"].image`.
pub(crate) fn display(path: &[Element]) -> String {
    let mut out = String::new();
    for element in path {
        let (kind, rest) = element.split_at(2.min(element.len()));
        match kind {
            "f:" => {
                out.push('.');
                out.push_str(rest);
            }
            "k:" => {
                let keys: Map<String, Value> = serde_json::from_str(rest).unwrap_or_default();
                let shown: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", shown.join(",")));
            }
            "v:" => out.push_str(&format!("[={rest}]")),
            _ => out.push_str(&format!("[{rest}]")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn path(elements: &[&str]) -> Vec<Element> {
        elements.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn fields_v1_round_trips_with_dots_where_a_path_ends_and_goes_on() {
        let fields = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:containers": {r#"k:{"name":"web"}"#: {".": {}, "f:image": {}}}, "f:replicas": {}},
        });
        let set = FieldSet::from_fields_v1(&fields).unwrap();
        assert_eq!(set.to_fields_v1(), fields);
        assert_eq!(
            set.paths().iter().map(|p| display(p)).collect::<Vec<_>>(),
            [
                ".metadata.labels",
                ".metadata.labels.app",
                r#".spec.containers[name="web"]"#,
                r#".spec.containers[name="web"].image"#,
                ".spec.replicas"
            ]
        );
        assert!(FieldSet::from_fields_v1(&json!({"x:nope": {}})).is_err());
    }

    #[test]
    fn set_algebra_works_path_by_path() {
        let mut a = FieldSet::default();
        a.insert(&path(&["f:spec", "f:replicas"]));
        a.insert(&path(&["f:spec", "f:paused"]));
        let mut b = FieldSet::default();
        b.insert(&path(&["f:spec", "f:replicas"]));
        b.insert(&path(&["f:metadata", "f:labels", "f:app"]));
        assert_eq!(a.intersection(&b).paths(), [path(&["f:spec", "f:replicas"])]);
        assert_eq!(a.difference(&b).paths(), [path(&["f:spec", "f:paused"])]);
        assert_eq!(a.union(&b).paths().len(), 3);
        assert!(a.difference(&a).is_empty());
        assert_eq!(b.clone().only("f:metadata").paths(), [path(&["f:metadata", "f:labels", "f:app"])]);
        assert_eq!(b.clone().without("f:metadata").paths(), [path(&["f:spec", "f:replicas"])]);
        assert_eq!(b.clone().without_path(&["f:metadata", "f:labels"]).paths(), [path(&["f:spec", "f:replicas"])]);
        assert!(a.intersects(&b) && b.intersects(&a));
        assert!(!a.difference(&b).intersects(&b));
    }

    #[test]
    fn keys_are_sorted_compact_json() {
        let element = key(&[("protocol".into(), json!("TCP")), ("containerPort".into(), json!(80))]);
        assert_eq!(element, r#"k:{"containerPort":80,"protocol":"TCP"}"#);
        assert_eq!(display(&[field("ports"), element]), r#".ports[containerPort=80,protocol="TCP"]"#);
        assert_eq!(display(&[field("finalizers"), value(&json!("a"))]), r#".finalizers[="a"]"#);
    }
}
