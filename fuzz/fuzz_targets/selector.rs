//! Label and field selectors as a list or a watch names them, matched against an object.

#![no_main]

use flotilla_api::selector::{FieldSelector, LabelSelector};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let object = json!({"metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "tier": "1"}},
                        "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
    if let Ok(labels) = LabelSelector::parse(text) {
        let _ = labels.matches_object(&object);
        // What it prints reads back as the same selector.
        let printed = labels.to_string();
        let again = LabelSelector::parse(&printed).unwrap_or_else(|e| panic!("{printed:?} does not parse: {e:?}"));
        assert_eq!(again.to_string(), printed);
    }
    if let Ok(fields) = FieldSelector::parse(text, |_| true) {
        let _ = fields.matches(|f| flotilla_api::kinds::field_value(&object, f));
    }
});
