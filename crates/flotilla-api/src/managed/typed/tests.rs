use serde_json::json;

use super::*;
use crate::managed::fieldset::display;

fn deployment() -> &'static Value {
    schemas().get("io.k8s.api.apps.v1.Deployment").unwrap()
}

fn shown(set: &FieldSet) -> Vec<String> {
    set.paths().iter().map(|p| display(p)).collect()
}

#[test]
fn shapes_follow_the_schema_and_its_list_types() {
    let pod_spec = schemas().get("io.k8s.api.core.v1.PodSpec").unwrap();
    let Shape::Struct(properties) = shape(pod_spec) else { panic!("PodSpec is a struct") };
    assert!(matches!(shape(&properties["containers"]), Shape::List { keys: Some(k), .. } if k == ["name"]));
    assert!(matches!(shape(&properties["nodeSelector"]), Shape::Leaf), "an atomic map");
    assert!(matches!(shape(&properties["affinity"]), Shape::Struct(_)));
    assert!(matches!(shape(&properties["restartPolicy"]), Shape::Leaf));
    let container = schemas().get("io.k8s.api.core.v1.Container").unwrap();
    assert!(matches!(shape(&container["properties"]["args"]), Shape::Leaf), "lists without a strategy are atomic");
    let meta = schemas().get("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta").unwrap();
    assert!(matches!(shape(&meta["properties"]["finalizers"]), Shape::List { keys: None, .. }), "a set");
    assert!(matches!(shape(&meta["properties"]["labels"]), Shape::Map(_)));
    assert!(matches!(shape(&meta["properties"]["ownerReferences"]), Shape::List { keys: Some(k), .. } if k == ["uid"]));
    let selector = schemas().get("io.k8s.api.apps.v1.DeploymentSpec").unwrap();
    assert!(matches!(shape(&selector["properties"]["selector"]), Shape::Leaf), "an atomic struct");
}

#[test]
fn a_field_set_has_leaves_list_items_and_empty_fields() {
    let config = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}, "annotations": {}},
        "spec": {
            "replicas": 2,
            "template": {"spec": {"containers": [{"name": "web", "image": "w:1", "args": ["a", "b"]}]}},
        },
    });
    assert_eq!(
        shown(&field_set(deployment(), &config).unwrap()),
        [
            ".apiVersion",
            ".kind",
            ".metadata.annotations",
            ".metadata.labels.app",
            ".metadata.name",
            ".spec.replicas",
            r#".spec.template.spec.containers[name="web"]"#,
            r#".spec.template.spec.containers[name="web"].args"#,
            r#".spec.template.spec.containers[name="web"].image"#,
            r#".spec.template.spec.containers[name="web"].name"#,
        ]
    );
    // A key left out takes its published default; without one, the item cannot be named.
    let nameless = json!({"spec": {"template": {"spec": {"containers": [{"image": "w:1"}]}}}});
    let set = field_set(deployment(), &nameless).unwrap();
    assert!(shown(&set).contains(&r#".spec.template.spec.containers[name=""].image"#.to_string()));
    let account = schemas().get("io.k8s.api.core.v1.ServiceAccount").unwrap();
    let err = field_set(account, &json!({"secrets": [{"namespace": "x"}]})).unwrap_err();
    assert!(err.message.contains("omits key field \"name\""), "{}", err.message);
}

#[test]
fn comparisons_tell_added_modified_and_removed() {
    let old = json!({
        "metadata": {"labels": {"app": "web", "tier": "front"}},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}}},
    });
    let new = json!({
        "metadata": {"labels": {"app": "web"}, "annotations": {"note": "x"}},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "a", "image": "a:1"},
            {"name": "b", "image": "b:1"},
        ]}}},
    });
    let c = compare(deployment(), &old, &new);
    assert_eq!(
        shown(&c.added),
        [
            ".metadata.annotations",
            ".metadata.annotations.note",
            r#".spec.template.spec.containers[name="b"]"#,
            r#".spec.template.spec.containers[name="b"].image"#,
            r#".spec.template.spec.containers[name="b"].name"#,
        ]
    );
    assert_eq!(shown(&c.modified), [".spec.replicas"]);
    assert_eq!(shown(&c.removed), [".metadata.labels.tier"]);
    assert!(compare(deployment(), &new, &new).is_empty());
}

#[test]
fn merges_keep_live_fields_and_order_lists_as_upstream() {
    let live = json!({"spec": {"replicas": 3, "paused": true, "template": {"spec": {"containers": [
        {"name": "a", "image": "a:1"},
        {"name": "sidecar", "image": "s:1"},
        {"name": "b", "image": "b:1"},
    ]}}}});
    let config = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
        {"name": "b", "image": "b:2"},
        {"name": "a", "image": "a:1"},
        {"name": "c", "image": "c:1"},
    ]}}}});
    let merged = merge(deployment(), &live, &config).unwrap();
    assert_eq!(merged["spec"]["replicas"], 2);
    assert_eq!(merged["spec"]["paused"], true);
    let names: Vec<&str> = merged["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // Shared items in the configuration's order, the live-only one where it was, new ones after.
    assert_eq!(names, ["sidecar", "b", "a", "c"]);
    assert_eq!(merged["spec"]["template"]["spec"]["containers"][1]["image"], "b:2");
}

#[test]
fn removal_takes_fields_and_whole_items() {
    let mut value = json!({
        "metadata": {"labels": {"app": "web", "tier": "front"}},
        "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}}},
    });
    let mut set = FieldSet::default();
    set.insert(&["f:metadata".into(), "f:labels".into(), "f:tier".into()]);
    set.insert(&[
        "f:spec".into(),
        "f:template".into(),
        "f:spec".into(),
        "f:containers".into(),
        r#"k:{"name":"b"}"#.into(),
    ]);
    remove(deployment(), &mut value, &set);
    assert_eq!(
        value,
        json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}}},
        })
    );
}
