//! An object's body as a client sends it, in the media type it names: JSON (with the fields it
//! gave twice, see [`crate::json`]), YAML, or Kubernetes protobuf ([`crate::protobuf`]);
//! anything else is refused with 415, as upstream refuses it.

use crate::json::Parsed;
use crate::{ApiError, Reason};

/// Decodes `body`, sent as `content_type` (parameters such as `charset` are ignored).
pub fn decode(content_type: &str, body: &[u8]) -> Result<Parsed, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match media.as_str() {
        "" | "application/json" => crate::json::parse(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}"))),
        "application/yaml" => {
            let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the YAML body is not UTF-8"))?;
            let value = serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}")))?;
            Ok(Parsed { value, duplicates: Vec::new() })
        }
        crate::protobuf::MEDIA_TYPE => Ok(Parsed { value: crate::protobuf::decode(body)?, duplicates: Vec::new() }),
        _ => Err(ApiError::new(
            Reason::UnsupportedMediaType,
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::decode;
    use crate::Reason;

    #[test]
    fn each_media_type_is_read_and_others_refused() {
        let json = decode("application/json; charset=utf-8", br#"{"a":1,"a":2}"#).unwrap();
        assert_eq!((json.value["a"].as_i64(), json.duplicates), (Some(2), vec!["a".to_string()]));
        assert_eq!(decode("application/yaml", b"a: 1\n").unwrap().value["a"], 1);
        assert_eq!(decode("text/plain", b"{}").unwrap_err().reason, Reason::UnsupportedMediaType);
        assert_eq!(decode("application/yaml", b"\xff").unwrap_err().reason, Reason::BadRequest);
        assert_eq!(decode("application/vnd.kubernetes.protobuf", b"{}").unwrap_err().reason, Reason::BadRequest);
    }
}
