//! Kubernetes protobuf request bodies: what client-go's typed clients send for built-in kinds
//! (kubectl 1.33's `create configmap`, `create secret`, `create deployment`, …), decoded into
//! the JSON the rest of the server handles. Responses stay JSON, which those clients accept.
//!
//! A body is `k8s\0` followed by a `runtime.Unknown` whose field 1 is the TypeMeta and field 2
//! the object's own encoding. Decoding follows the field tables in `messages.rs`; a field or
//! message the tables do not know is refused rather than dropped.

mod messages;
mod writer;

use crate::{ApiError, Reason};
use base64::Engine;
use serde_json::{Map, Value};

use messages::MESSAGES;
pub use writer::Writer;

/// The media type of Kubernetes protobuf.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, Copy, Debug)]
pub(crate) enum Ty {
    String,
    Bytes,
    Int,
    Bool,
    Time,
    Quantity,
    IntOrString,
    /// `meta.v1.FieldsV1`: JSON in bytes.
    Fields,
    Msg(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Label {
    One,
    Repeated,
    /// `map<string, T>`: repeated entries with the key in field 1 and the value in field 2.
    Map,
}

#[derive(Debug)]
pub(crate) struct Field {
    pub(crate) number: u32,
    pub(crate) json: &'static str,
    pub(crate) ty: Ty,
    pub(crate) label: Label,
    /// An embedded struct, whose fields JSON flattens into the parent.
    pub(crate) inline: bool,
}

#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) name: &'static str,
    pub(crate) fields: &'static [Field],
}

fn message(name: &str) -> Result<&'static Message, ApiError> {
    MESSAGES
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| unsupported(format!("protobuf message {name} is not supported by this server")))
}

fn unsupported(why: String) -> ApiError {
    ApiError::new(Reason::UnsupportedMediaType, format!("{why}; send the object as application/json"))
}

fn malformed(why: &str) -> ApiError {
    ApiError::bad_request(format!("the protobuf request body is malformed: {why}"))
}

/// Decodes a protobuf request body into the object's JSON.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let unknown =
        body.strip_prefix(MAGIC).ok_or_else(|| malformed("it does not start with the k8s protobuf prefix"))?;
    let mut reader = Reader { bytes: unknown, pos: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    while !reader.done() {
        let (number, wire) = reader.tag()?;
        match number {
            1 => {
                let mut meta = Reader { bytes: reader.delimited(wire)?, pos: 0 };
                while !meta.done() {
                    let (n, w) = meta.tag()?;
                    let text = meta.string(w)?;
                    match n {
                        1 => api_version = text,
                        2 => kind = text,
                        _ => {}
                    }
                }
            }
            2 => raw = Some(reader.delimited(wire)?),
            _ => reader.skip(wire)?,
        }
    }
    let raw = raw.ok_or_else(|| malformed("no object in the envelope"))?;
    let package = match api_version.split_once('/') {
        None => "core.v1".to_string(),
        Some((group, version)) => format!("{}.{version}", group.split('.').next().unwrap_or(group)),
    };
    let message = message(&format!("{package}.{kind}")).map_err(|_| {
        unsupported(format!("{kind} in version {api_version:?} cannot be decoded from protobuf by this server"))
    })?;
    let mut object = decode_message(raw, message)?;
    object.insert("apiVersion".into(), api_version.into());
    object.insert("kind".into(), kind.into());
    Ok(Value::Object(object))
}

fn decode_message(bytes: &[u8], message: &Message) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let mut reader = Reader { bytes, pos: 0 };
    while !reader.done() {
        let (number, wire) = reader.tag()?;
        let field = message.fields.iter().find(|f| f.number == number).ok_or_else(|| {
            unsupported(format!("field {number} of protobuf message {} is not supported by this server", message.name))
        })?;
        match field.label {
            Label::One => {
                let value = decode_value(field.ty, wire, &mut reader)?;
                match value {
                    Value::Object(map) if field.inline => out.extend(map),
                    // Go's `omitempty`: zero scalars are as good as absent.
                    Value::Null => {}
                    Value::String(ref s) if s.is_empty() => {}
                    Value::Bool(false) => {}
                    Value::Number(ref n) if n.as_i64() == Some(0) => {}
                    value => {
                        out.insert(field.json.into(), value);
                    }
                }
            }
            Label::Repeated => {
                let list = out.entry(field.json).or_insert_with(|| Value::Array(Vec::new()));
                let list = list.as_array_mut().expect("inserted as an array");
                if wire == 2 && matches!(field.ty, Ty::Int | Ty::Bool) {
                    // A packed list of varints.
                    let mut packed = Reader { bytes: reader.delimited(wire)?, pos: 0 };
                    while !packed.done() {
                        list.push(decode_value(field.ty, 0, &mut packed)?);
                    }
                } else {
                    list.push(decode_value(field.ty, wire, &mut reader)?);
                }
            }
            Label::Map => {
                let mut entry = Reader { bytes: reader.delimited(wire)?, pos: 0 };
                let (mut key, mut value) = (String::new(), Value::Null);
                while !entry.done() {
                    let (n, w) = entry.tag()?;
                    match n {
                        1 => key = entry.string(w)?,
                        2 => value = decode_value(field.ty, w, &mut entry)?,
                        _ => entry.skip(w)?,
                    }
                }
                if value.is_null() {
                    value = match field.ty {
                        Ty::String | Ty::Bytes | Ty::Quantity => Value::String(String::new()),
                        _ => Value::Null,
                    };
                }
                let map = out.entry(field.json).or_insert_with(|| Value::Object(Map::new()));
                map.as_object_mut().expect("inserted as an object").insert(key, value);
            }
        }
    }
    Ok(out)
}

fn decode_value(ty: Ty, wire: u8, reader: &mut Reader<'_>) -> Result<Value, ApiError> {
    Ok(match ty {
        Ty::String => Value::String(reader.string(wire)?),
        Ty::Bytes => Value::String(base64::engine::general_purpose::STANDARD.encode(reader.delimited(wire)?)),
        Ty::Int => Value::from(reader.varint_field(wire)? as i64),
        Ty::Bool => Value::Bool(reader.varint_field(wire)? != 0),
        Ty::Time => {
            let mut time = Reader { bytes: reader.delimited(wire)?, pos: 0 };
            let (mut seconds, mut nanos) = (0i64, 0i64);
            while !time.done() {
                let (n, w) = time.tag()?;
                match n {
                    1 => seconds = time.varint_field(w)? as i64,
                    2 => nanos = time.varint_field(w)? as i64,
                    _ => time.skip(w)?,
                }
            }
            let at = jiff::Timestamp::new(seconds, 0).map_err(|_| malformed("a time out of range"))?;
            // Go writes seconds only, and nothing at all for a zero time.
            if seconds == 0 && nanos == 0 {
                Value::Null
            } else {
                Value::String(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            }
        }
        Ty::Quantity => {
            let mut quantity = Reader { bytes: reader.delimited(wire)?, pos: 0 };
            let mut text = String::new();
            while !quantity.done() {
                let (n, w) = quantity.tag()?;
                if n == 1 { text = quantity.string(w)? } else { quantity.skip(w)? }
            }
            Value::String(text)
        }
        Ty::IntOrString => {
            let mut value = Reader { bytes: reader.delimited(wire)?, pos: 0 };
            let (mut kind, mut int, mut text) = (0, 0i64, String::new());
            while !value.done() {
                let (n, w) = value.tag()?;
                match n {
                    1 => kind = value.varint_field(w)?,
                    2 => int = value.varint_field(w)? as i32 as i64,
                    3 => text = value.string(w)?,
                    _ => value.skip(w)?,
                }
            }
            if kind == 1 { Value::String(text) } else { Value::from(int) }
        }
        Ty::Fields => {
            let mut wrapper = Reader { bytes: reader.delimited(wire)?, pos: 0 };
            let mut raw: &[u8] = b"{}";
            while !wrapper.done() {
                let (n, w) = wrapper.tag()?;
                if n == 1 { raw = wrapper.delimited(w)? } else { wrapper.skip(w)? }
            }
            serde_json::from_slice(raw).map_err(|e| malformed(&format!("embedded JSON: {e}")))?
        }
        Ty::Msg(name) => Value::Object(decode_message(reader.delimited(wire)?, message(name)?)?),
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.pos).ok_or_else(|| malformed("a truncated varint"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("a varint longer than 10 bytes"))
    }

    fn tag(&mut self) -> Result<(u32, u8), ApiError> {
        let tag = self.varint()?;
        Ok(((tag >> 3) as u32, (tag & 7) as u8))
    }

    fn varint_field(&mut self, wire: u8) -> Result<u64, ApiError> {
        if wire != 0 {
            return Err(malformed("a number that is not a varint"));
        }
        self.varint()
    }

    fn delimited(&mut self, wire: u8) -> Result<&'a [u8], ApiError> {
        if wire != 2 {
            return Err(malformed("a message or string that is not length-delimited"));
        }
        let len = self.varint()? as usize;
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| malformed("a length past the end"))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn string(&mut self, wire: u8) -> Result<String, ApiError> {
        String::from_utf8(self.delimited(wire)?.to_vec()).map_err(|_| malformed("a string that is not UTF-8"))
    }

    fn skip(&mut self, wire: u8) -> Result<(), ApiError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.delimited(wire).map(|_| ()),
            5 => self.advance(4),
            _ => Err(malformed("an unknown wire type")),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), ApiError> {
        if self.pos + n > self.bytes.len() {
            return Err(malformed("a fixed-width value past the end"));
        }
        self.pos += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// What client-go sends for `kubectl create configmap cfg --from-literal=a=1`.
    fn configmap() -> Vec<u8> {
        let mut unknown = Writer::default();
        unknown.message(1, type_meta);
        unknown.message(2, |object| {
            object.message(1, |meta| {
                meta.string(1, "cfg");
                meta.bytes(3, b"");
                meta.message(8, |_| {});
            });
            object.message(2, |entry| {
                entry.string(1, "a");
                entry.string(2, "1");
            });
            object.uint(4, 0);
        });
        unknown.bytes(3, b"");
        unknown.bytes(4, b"");
        [MAGIC, &unknown.into_bytes()].concat()
    }

    fn type_meta(w: &mut Writer) {
        w.string(1, "v1");
        w.string(2, "ConfigMap");
    }

    #[test]
    fn a_configmap_decodes_to_its_json() {
        assert_eq!(
            decode(&configmap()).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}})
        );
    }

    #[test]
    fn unknown_fields_and_garbage_are_refused() {
        let mut body = configmap();
        // Field 99 of the ConfigMap: not in the tables.
        let mut unknown = Writer::default();
        unknown.message(1, type_meta);
        unknown.message(2, |object| object.uint(99, 1));
        let err = decode(&[MAGIC, &unknown.into_bytes()].concat()).unwrap_err();
        assert!(err.message.contains("field 99 of protobuf message core.v1.ConfigMap"), "{}", err.message);
        body.truncate(body.len() - 3);
        assert!(decode(&body).is_err());
        assert!(decode(b"not protobuf").is_err());
    }

    #[test]
    fn every_referenced_special_or_listed_message_resolves() {
        for m in MESSAGES {
            for f in m.fields {
                if let Ty::Msg(name) = f.ty {
                    // A referenced message may be missing (it is refused when met); a listed one must
                    // not be listed twice.
                    assert!(MESSAGES.iter().filter(|x| x.name == name).count() <= 1, "{name}");
                }
            }
        }
        assert!(
            message("core.v1.Secret").is_ok()
                && message("apps.v1.Deployment").is_ok()
                && message("batch.v1.Job").is_ok()
        );
    }
}
