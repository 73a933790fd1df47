//! Query parameters as upstream's conversions read them (apimachinery's
//! `runtime.Convert_Slice_string_To_bool` and `Convert_Slice_string_To_int64`), so that each
//! client's spelling means what it means upstream: `watch=true`, `watch=True` (the Python
//! clients) and `watch=1` are all a watch.

use crate::error::ApiError;

/// A boolean parameter: false for `0` and for `false` in any case, true for anything else,
/// the empty value included. Upstream never refuses a boolean's spelling.
pub fn boolean(value: &str) -> bool {
    !(value == "0" || value.eq_ignore_ascii_case("false"))
}

/// Go's `strconv.ParseBool`: only its twelve spellings, for the one parameter read with it
/// rather than with [`boolean`] (`pretty`, whose unparsable value upstream takes as false).
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// An integer parameter, refused as upstream refuses it: a 400 carrying Go's
/// `strconv.ParseInt` error.
pub fn integer(value: &str) -> Result<i64, ApiError> {
    value.parse().map_err(|e: std::num::ParseIntError| {
        let why = match e.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => "value out of range",
            _ => "invalid syntax",
        };
        ApiError::bad_request(format!("strconv.ParseInt: parsing {value:?}: {why}"))
    })
}

#[cfg(test)]
mod tests {
    use super::{boolean, integer, parse_bool};

    #[test]
    fn booleans_are_false_only_when_they_say_so() {
        for yes in ["true", "True", "TRUE", "1", "t", "yes", "", "no"] {
            assert!(boolean(yes), "{yes:?}");
        }
        for no in ["false", "False", "FALSE", "fAlSe", "0"] {
            assert!(!boolean(no), "{no:?}");
        }
    }

    #[test]
    fn go_parses_twelve_spellings_of_a_boolean() {
        assert_eq!(parse_bool("T"), Some(true));
        assert_eq!(parse_bool("False"), Some(false));
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(parse_bool("fAlse"), None);
    }

    #[test]
    fn integers_are_refused_with_gos_message() {
        assert_eq!(integer("500").unwrap(), 500);
        assert_eq!(integer("+5").unwrap(), 5);
        assert_eq!(integer("-1").unwrap(), -1);
        assert_eq!(integer("abc").unwrap_err().message, r#"strconv.ParseInt: parsing "abc": invalid syntax"#);
        assert_eq!(integer("").unwrap_err().message, r#"strconv.ParseInt: parsing "": invalid syntax"#);
        assert_eq!(
            integer("99999999999999999999").unwrap_err().message,
            r#"strconv.ParseInt: parsing "99999999999999999999": value out of range"#
        );
    }
}
