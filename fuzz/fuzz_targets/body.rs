//! An object's body, as a create or an update sends it: decoded in the media type the first
//! byte picks (JSON, YAML, protobuf, or one the server refuses), then admitted as the kind the
//! second byte picks (defaults, validation, as a create and as an update), and shown as a
//! `kubectl get` row. Any panic, or a decode that grows without bound, is a finding.

#![no_main]

use flotilla_api::FieldValidation;
use libfuzzer_sys::fuzz_target;

const MEDIA_TYPES: [&str; 5] = [
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
    "application/json; charset=utf-8",
    "text/plain",
];

fuzz_target!(|data: &[u8]| {
    let [media, kind, body @ ..] = data else { return };
    let Ok(parsed) = flotilla_api::body::decode(MEDIA_TYPES[usize::from(*media) % MEDIA_TYPES.len()], body) else {
        return;
    };
    let resources = flotilla_api::resource::resources();
    let def = &resources[usize::from(*kind) % resources.len()];
    for validation in [FieldValidation::Strict, FieldValidation::Warn] {
        let Ok(admitted) = def.ops.admit(parsed.value.clone(), None, validation, &parsed.duplicates) else {
            continue;
        };
        let _ = def.ops.cells(&admitted.object, jiff::Timestamp::UNIX_EPOCH);
        let _ = def.ops.admit(parsed.value.clone(), Some(&admitted.object), validation, &parsed.duplicates);
    }
});
