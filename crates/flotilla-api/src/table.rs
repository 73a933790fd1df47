//! Table columns and the cell formatting upstream's printers use (`kubectl get`'s output).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Serialize;
use serde_json::Value;

/// A `metav1.TableColumnDefinition`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    /// 0: always shown; 1: only under `-o wide`.
    pub priority: i32,
}

impl Column {
    pub const fn string(name: &'static str, description: &'static str) -> Self {
        Column { name, type_: "string", format: "", description, priority: 0 }
    }

    pub const fn integer(name: &'static str, description: &'static str) -> Self {
        Column { name, type_: "integer", format: "", description, priority: 0 }
    }

    /// Shown only under `-o wide`.
    pub const fn wide(self) -> Self {
        Column { priority: 1, ..self }
    }

    pub const fn with_priority(self, priority: i32) -> Self {
        Column { priority, ..self }
    }

    /// The object's name.
    pub const fn name() -> Self {
        Column { name: "Name", type_: "string", format: "name", description: NAME_DOC, priority: 0 }
    }

    /// Time since the object was created.
    pub const fn age() -> Self {
        Column::string("Age", AGE_DOC)
    }
}

const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated.";
const AGE_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.";

/// The object's name as a cell.
pub fn name(meta: &ObjectMeta) -> Value {
    Value::String(meta.name.clone().unwrap_or_default())
}

/// The object's age as a cell.
pub fn age(meta: &ObjectMeta, now: Timestamp) -> Value {
    Value::String(since(meta.creation_timestamp.as_ref(), now))
}

/// Time since `then`, as `translateTimestampSince` renders it (`<unknown>` when unset).
pub fn since(then: Option<&Time>, now: Timestamp) -> String {
    match then {
        None => "<unknown>".into(),
        Some(then) => human_duration(now.as_second() - then.0.as_second()),
    }
}

/// Upstream's `duration.HumanDuration`: precise when short, coarse when long.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{h}h", hours / 24) };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 { format!("{}y", hours / 24 / 365) } else { format!("{}y{days}d", hours / 24 / 365) };
    }
    format!("{}y", hours / 24 / 365)
}

/// `<none>` for an empty string, as the printers show absent values.
pub fn or_none(value: impl Into<String>) -> Value {
    let value = value.into();
    Value::String(if value.is_empty() { "<none>".into() } else { value })
}

/// Comma-joined, or `<none>`.
pub fn joined<'a>(values: impl IntoIterator<Item = &'a str>) -> Value {
    or_none(values.into_iter().collect::<Vec<_>>().join(","))
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_read_like_kubectl() {
        for (seconds, text) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60 * 5, "3h5m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (50 * 3600, "2d2h"),
            (8 * 86400, "8d"),
            (2 * 365 * 86400, "2y"),
            (2 * 365 * 86400 + 5 * 86400, "2y5d"),
            (9 * 365 * 86400, "9y"),
        ] {
            assert_eq!(human_duration(seconds), text, "{seconds}");
        }
    }
}
