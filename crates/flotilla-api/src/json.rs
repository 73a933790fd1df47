//! Parsing a JSON body and noticing what `serde_json::Value` silently forgets: a field given
//! twice in one object (the last one wins). Upstream's strict decoding refuses duplicates under
//! `fieldValidation=Strict` and warns of them under `Warn`, naming each by its path from the
//! root (`metadata.name`, `spec.containers[0].image`), as this does.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A parsed body and the paths of the fields it gave more than once, in the order met.
#[derive(Debug, Default)]
pub struct Parsed {
    pub value: Value,
    pub duplicates: Vec<String>,
}

/// Upstream keeps at most this many strict-decoding errors; past it, more duplicates are not
/// named (nor looked for: a body of a million repeated keys costs a parse, no more).
pub const MAX_DUPLICATES: usize = 100;

/// Parses `bytes` as one JSON value.
pub fn parse(bytes: &[u8]) -> serde_json::Result<Parsed> {
    let mut duplicates = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Node { path: &mut Vec::new(), duplicates: &mut duplicates }.deserialize(&mut de)?;
    de.end()?;
    Ok(Parsed { value, duplicates })
}

enum Step {
    Key(String),
    Index(usize),
}

/// The value at `path`, noting duplicates beneath it.
struct Node<'a> {
    path: &'a mut Vec<Step>,
    duplicates: &'a mut Vec<String>,
}

impl Node<'_> {
    fn shown(&self, key: &str) -> String {
        let mut out = String::new();
        for step in self.path.iter() {
            match step {
                Step::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Step::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(key);
        out
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            self.path.push(Step::Index(items.len()));
            let next = seq.next_element_seed(Node { path: self.path, duplicates: self.duplicates });
            self.path.pop();
            match next? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if self.duplicates.len() < MAX_DUPLICATES && object.contains_key(&key) {
                let shown = self.shown(&key);
                if !self.duplicates.contains(&shown) {
                    self.duplicates.push(shown);
                }
            }
            self.path.push(Step::Key(key));
            let value = map.next_value_seed(Node { path: self.path, duplicates: self.duplicates });
            let Some(Step::Key(key)) = self.path.pop() else { unreachable!("pushed a key above") };
            object.insert(key, value?);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn duplicates_are_named_by_their_path_from_the_root() {
        let body = br#"{"kind": "Pod", "metadata": {"name": "a", "name": "b", "labels": {"x": "1", "x": "2"}},
            "spec": {"containers": [{"name": "c", "image": "i", "image": "j"}]}, "kind": "Pod", "metadata2": null}"#;
        let parsed = parse(body).unwrap();
        assert_eq!(parsed.duplicates, ["metadata.name", "metadata.labels.x", "spec.containers[0].image", "kind"]);
        // The last value wins, as in a plain parse.
        assert_eq!(parsed.value, serde_json::from_slice::<Value>(body).unwrap());
        assert_eq!(parsed.value["metadata"]["name"], json!("b"));
    }

    #[test]
    fn a_clean_body_parses_as_serde_json_parses_it() {
        let body = br#"{"a": [1, -2, 3.5, true, null, "s", {"b": []}], "c": {}}"#;
        let parsed = parse(body).unwrap();
        assert!(parsed.duplicates.is_empty());
        assert_eq!(parsed.value, serde_json::from_slice::<Value>(body).unwrap());
        assert!(parse(b"{} trailing").is_err());
        assert!(parse(b"{\"a\":").is_err());
        // Nesting deeper than serde_json's recursion limit is an error, not a stack overflow.
        let deep = "[".repeat(100_000);
        assert!(parse(deep.as_bytes()).is_err());
        // A body of many repeated keys names the first hundred and costs no more than a parse.
        let many: String = (0..200_000).map(|i| format!("\"k{}\": 1,", i % 1000)).collect();
        let parsed = parse(format!("{{{many} \"end\": 0}}").as_bytes()).unwrap();
        assert_eq!(parsed.duplicates.len(), MAX_DUPLICATES);
    }
}
