//! A patch, of the type the first byte picks (JSON patch, merge patch, strategic merge patch,
//! server-side apply in JSON or YAML), applied to a Pod or a Deployment as the API server
//! applies it, and the result admitted as an update.

#![no_main]

use flotilla_api::FieldValidation;
use flotilla_api::managed::FieldManager;
use flotilla_api::patch;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "uid": "u1", "resourceVersion": "7",
                     "labels": {"app": "web"}, "finalizers": ["a/b"]},
        "spec": {"containers": [{"name": "web", "image": "web:v1", "ports": [{"containerPort": 8080}],
                                 "env": [{"name": "A", "value": "1"}]}],
                 "volumes": [{"name": "data", "emptyDir": {}}], "tolerations": [{"key": "k", "operator": "Exists"}]}
    })
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "uid": "u2", "resourceVersion": "9"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "web:v1"}]}}}
    })
}

fuzz_target!(|data: &[u8]| {
    let [kind, body @ ..] = data else { return };
    let (document, def) = if kind & 1 == 0 {
        (pod(), flotilla_api::resource::find("", "v1", "pods"))
    } else {
        (deployment(), flotilla_api::resource::find("apps", "v1", "deployments"))
    };
    let Some(def) = def else { return };
    let yaml = kind >> 1 & 7 == 4;
    let media = if yaml { "application/yaml" } else { "application/json" };
    let Ok(parsed) = flotilla_api::body::decode(media, body) else { return };
    let definition = flotilla_api::schema::definition_name(&def.api_version(), def.kind).unwrap_or_default();
    let patched = match kind >> 1 & 7 {
        0 => {
            let mut object = document.clone();
            patch::json_patch(&mut object, &parsed.value).map(|()| object)
        }
        1 => {
            let mut object = document.clone();
            patch::merge_patch(&mut object, &parsed.value).map(|()| object)
        }
        2 => patch::strategic_merge(document.clone(), parsed.value, definition),
        _ => {
            let manager = FieldManager { name: "fuzz".into(), subresource: None };
            let force = kind & 0x80 != 0;
            flotilla_api::managed::apply(def, Some(&document), &parsed.value, &manager, force, "2026-01-01T00:00:00Z")
        }
    };
    if let Ok(patched) = patched {
        let _ = def.ops.admit(patched, Some(&document), FieldValidation::Strict, &[]);
    }
});
