//! Upstream's validators for names, label keys and values, and object metadata, with upstream's
//! messages (users see them verbatim in kubectl's errors).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::error::FieldError;

pub type Check = Result<(), String>;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
/// Total bytes of an object's annotations: upstream's `TotalAnnotationSizeLimitB`.
pub const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn dns1123_label(value: &str) -> Check {
    if value.len() > DNS1123_LABEL_MAX {
        return Err(format!("must be no more than {DNS1123_LABEL_MAX} characters"));
    }
    let ok = !value.is_empty()
        && value.chars().all(|c| is_lower_alnum(c) || c == '-')
        && value.starts_with(is_lower_alnum)
        && value.ends_with(is_lower_alnum);
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into())
    }
}

/// Dot-separated RFC 1123 labels, at most 253 characters.
pub fn dns1123_subdomain(value: &str) -> Check {
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!("must be no more than {DNS1123_SUBDOMAIN_MAX} characters"));
    }
    let ok = !value.is_empty()
        && value.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| is_lower_alnum(c) || c == '-')
                && part.starts_with(is_lower_alnum)
                && part.ends_with(is_lower_alnum)
        });
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into())
    }
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (Service names).
pub fn dns1035_label(value: &str) -> Check {
    if value.len() > DNS1123_LABEL_MAX {
        return Err(format!("must be no more than {DNS1123_LABEL_MAX} characters"));
    }
    let ok = !value.is_empty()
        && value.chars().all(|c| is_lower_alnum(c) || c == '-')
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value.ends_with(is_lower_alnum);
    if ok {
        Ok(())
    } else {
        Err("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".into())
    }
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]` with an optional DNS-subdomain prefix and `/`
/// (label and annotation keys, finalizers).
pub fn qualified_name(value: &str) -> Check {
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("prefix part must be non-empty".into());
        }
        dns1123_subdomain(prefix).map_err(|e| format!("prefix part {e}"))?;
    }
    if name.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if name.len() > QUALIFIED_NAME_MAX {
        return Err(format!("name part must be no more than {QUALIFIED_NAME_MAX} characters"));
    }
    let ok = name.chars().all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'))
        && name.starts_with(is_alnum)
        && name.ends_with(is_alnum);
    if ok {
        Ok(())
    } else {
        Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into())
    }
}

/// `(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?`, at most 63 characters.
pub fn label_value(value: &str) -> Check {
    if value.len() > LABEL_VALUE_MAX {
        return Err(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    let ok = value.is_empty()
        || (value.chars().all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'))
            && value.starts_with(is_alnum)
            && value.ends_with(is_alnum));
    if ok {
        Ok(())
    } else {
        Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into())
    }
}

/// Validates the user-settable parts of `metadata`: the name with `name_check`, labels,
/// annotations and finalizers.
pub fn object_meta(meta: &ObjectMeta, name_check: fn(&str) -> Check, errors: &mut Vec<FieldError>) {
    match meta.name.as_deref() {
        None | Some("") => errors.push(FieldError::required("metadata.name", "name or generateName is required")),
        Some(name) => {
            if let Err(e) = name_check(name) {
                errors.push(FieldError::invalid("metadata.name", name, e));
            }
        }
    }
    for (key, value) in meta.labels.iter().flatten() {
        if let Err(e) = qualified_name(key) {
            errors.push(FieldError::invalid("metadata.labels", key, e));
        }
        if let Err(e) = label_value(value) {
            errors.push(FieldError::invalid("metadata.labels", value, e));
        }
    }
    let mut annotation_bytes = 0;
    for (key, value) in meta.annotations.iter().flatten() {
        if let Err(e) = qualified_name(&key.to_lowercase()) {
            errors.push(FieldError::invalid("metadata.annotations", key, e));
        }
        annotation_bytes += key.len() + value.len();
    }
    if annotation_bytes > ANNOTATIONS_MAX_BYTES {
        errors.push(FieldError::too_long("metadata.annotations", ANNOTATIONS_MAX_BYTES));
    }
    for (i, finalizer) in meta.finalizers.iter().flatten().enumerate() {
        if let Err(e) = qualified_name(finalizer) {
            errors.push(FieldError::invalid(format!("metadata.finalizers[{i}]"), finalizer, e));
        }
    }
}

/// Upstream's `ValidateImmutableField`: `field is immutable` when `old` and `new` differ.
pub fn immutable<T: PartialEq + serde::Serialize>(new: &T, old: &T, field: &str, errors: &mut Vec<FieldError>) {
    if new != old {
        let shown = serde_json::to_string(new).unwrap_or_default();
        errors.push(FieldError::invalid(field, shown, "field is immutable"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc_1123() {
        assert!(dns1123_subdomain("web.example-1").is_ok());
        assert!(dns1123_subdomain("Web").is_err());
        assert!(dns1123_subdomain("web.").is_err());
        assert!(dns1123_subdomain(&"a".repeat(254)).unwrap_err().contains("253"));
        assert!(dns1123_label("kube-system").is_ok());
        assert!(dns1123_label("a.b").is_err());
        assert!(dns1035_label("1abc").is_err());
        assert!(dns1035_label("abc-1").is_ok());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(qualified_name("app.kubernetes.io/name").is_ok());
        assert!(qualified_name("kubernetes.io/").is_err());
        assert!(qualified_name("Bad_Prefix/x").is_err());
        assert!(qualified_name("a b").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_x").is_ok());
        assert!(label_value("-x").is_err());
    }
}
