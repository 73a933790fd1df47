//! Field ownership as upstream's server-side apply documentation describes it
//! (kubernetes.io/docs/reference/using-api/server-side-apply), scenario by scenario.

use serde_json::json;

use super::*;
use crate::resource::find;

const T1: &str = "2026-01-01T00:00:00Z";
const T2: &str = "2026-01-01T00:01:00Z";

fn deployments() -> &'static ResourceDef {
    find("apps", "v1", "deployments").unwrap()
}

fn manager(name: &str) -> FieldManager {
    FieldManager { name: name.into(), subresource: None }
}

fn config(replicas: i64, labels: Value, containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}},
        },
    })
}

fn web(image: &str) -> Value {
    json!([{"name": "web", "image": image}])
}

/// Each manager's fields, as paths.
fn owners(object: &Value) -> Vec<(String, String, Vec<String>)> {
    Managed::of(object)
        .map(|m| m.entries)
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.manager, e.operation.name().to_string(), e.set.paths().iter().map(|p| display(p)).collect()))
        .collect()
}

fn fields_of<'o>(owners: &'o [(String, String, Vec<String>)], name: &str) -> &'o [String] {
    owners.iter().find(|(m, _, _)| m == name).map(|(_, _, f)| f.as_slice()).unwrap_or_default()
}

#[test]
fn an_apply_creates_and_owns_what_it_set() {
    let applied = config(2, json!({"app": "web"}), web("w:1"));
    let object = apply(deployments(), None, &applied, &manager("alice"), false, T1).unwrap();
    assert_eq!(object["spec"]["replicas"], 2);
    let owners = owners(&object);
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].1, "Apply");
    assert_eq!(
        owners[0].2,
        [
            ".metadata.labels.app",
            ".spec.replicas",
            ".spec.selector",
            ".spec.template.metadata.labels.app",
            r#".spec.template.spec.containers[name="web"]"#,
            r#".spec.template.spec.containers[name="web"].image"#,
            r#".spec.template.spec.containers[name="web"].name"#,
        ]
    );
    assert_eq!(object["metadata"]["managedFields"][0]["time"], T1);
    assert_eq!(object["metadata"]["managedFields"][0]["apiVersion"], "apps/v1");
}

#[test]
fn changing_anothers_field_conflicts_unless_forced() {
    let object = apply(deployments(), None, &config(2, json!({}), web("w:1")), &manager("alice"), false, T1).unwrap();
    let bob = config(3, json!({}), web("w:1"));
    let err = apply(deployments(), Some(&object), &bob, &manager("bob"), false, T2).unwrap_err();
    assert_eq!(err.reason, Reason::Conflict);
    assert_eq!(err.message, r#"Apply failed with 1 conflict: conflict with "alice": .spec.replicas"#);
    assert_eq!(err.causes[0].kind, CauseType::FieldManagerConflict);
    assert_eq!(err.causes[0].field, ".spec.replicas");

    let forced = apply(deployments(), Some(&object), &bob, &manager("bob"), true, T2).unwrap();
    assert_eq!(forced["spec"]["replicas"], 3);
    let owners = owners(&forced);
    assert!(!fields_of(&owners, "alice").contains(&".spec.replicas".to_string()));
    assert!(fields_of(&owners, "bob").contains(&".spec.replicas".to_string()));
    // The same value is shared, not a conflict.
    assert!(fields_of(&owners, "alice").contains(&r#".spec.template.spec.containers[name="web"].image"#.to_string()));
    assert!(fields_of(&owners, "bob").contains(&r#".spec.template.spec.containers[name="web"].image"#.to_string()));
}

#[test]
fn what_an_applier_drops_is_removed_unless_another_applier_has_it() {
    let first = config(2, json!({"app": "web", "tier": "front"}), web("w:1"));
    let object = apply(deployments(), None, &first, &manager("alice"), false, T1).unwrap();
    let again = config(2, json!({"app": "web"}), web("w:1"));
    let object = apply(deployments(), Some(&object), &again, &manager("alice"), false, T2).unwrap();
    assert_eq!(object["metadata"]["labels"], json!({"app": "web"}));

    // Bob also applies the label: when Alice drops it, it stays, Bob's.
    let object = apply(deployments(), None, &first, &manager("alice"), false, T1).unwrap();
    let bobs = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"tier": "front"}}});
    let object = apply(deployments(), Some(&object), &bobs, &manager("bob"), false, T1).unwrap();
    let object = apply(deployments(), Some(&object), &again, &manager("alice"), false, T2).unwrap();
    assert_eq!(object["metadata"]["labels"], json!({"app": "web", "tier": "front"}));
    assert_eq!(fields_of(&owners(&object), "bob"), [".metadata.labels.tier"]);
}

#[test]
fn a_dropped_container_goes_and_others_stay() {
    let two = json!([{"name": "web", "image": "w:1"}, {"name": "log", "image": "l:1"}]);
    let object = apply(deployments(), None, &config(1, json!({}), two), &manager("alice"), false, T1).unwrap();
    let mut sidecar = object.clone();
    sidecar["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "mesh", "image": "m:1"}));
    track_update(deployments(), Some(&object), &mut sidecar, &manager("injector"), T2);
    let object =
        apply(deployments(), Some(&sidecar), &config(1, json!({}), web("w:1")), &manager("alice"), false, T2).unwrap();
    let names: Vec<&str> = object["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "mesh"]);
}

#[test]
fn an_update_takes_ownership_and_the_applier_then_conflicts() {
    let applied = config(2, json!({}), web("w:1"));
    let object = apply(deployments(), None, &applied, &manager("alice"), false, T1).unwrap();
    let mut scaled = object.clone();
    scaled["spec"]["replicas"] = 5.into();
    track_update(deployments(), Some(&object), &mut scaled, &manager("kubectl-scale"), T2);
    let owners = owners(&scaled);
    assert_eq!(fields_of(&owners, "kubectl-scale"), [".spec.replicas"]);
    assert!(!fields_of(&owners, "alice").contains(&".spec.replicas".to_string()));
    let err = apply(deployments(), Some(&scaled), &applied, &manager("alice"), false, T2).unwrap_err();
    assert_eq!(
        err.message,
        r#"Apply failed with 1 conflict: conflict with "kubectl-scale" using apps/v1: .spec.replicas"#
    );
    // Applying without the field leaves it to its new owner.
    let mut without = applied.clone();
    without["spec"].as_object_mut().unwrap().remove("replicas");
    let object = apply(deployments(), Some(&scaled), &without, &manager("alice"), false, T2).unwrap();
    assert_eq!(object["spec"]["replicas"], 5);
}

#[test]
fn updates_own_what_they_change_and_lose_what_they_remove() {
    let mut created = config(1, json!({"app": "web"}), web("w:1"));
    track_update(deployments(), None, &mut created, &manager("kubectl-create"), T1);
    let owners_then = owners(&created);
    assert_eq!(owners_then[0].1, "Update");
    assert!(fields_of(&owners_then, "kubectl-create").contains(&".metadata.labels".to_string()));
    assert!(!fields_of(&owners_then, "kubectl-create").iter().any(|f| f.starts_with(".metadata.name")));

    let mut edited = created.clone();
    edited["metadata"]["labels"] = json!({"app": "web", "team": "edge"});
    track_update(deployments(), Some(&created), &mut edited, &manager("kubectl-label"), T2);
    assert_eq!(fields_of(&owners(&edited), "kubectl-label"), [".metadata.labels.team"]);

    // A write that changes nothing changes no one's fields, nor the time.
    let mut same = edited.clone();
    track_update(deployments(), Some(&edited), &mut same, &manager("someone"), "2030-01-01T00:00:00Z");
    assert_eq!(same, edited);

    // `[{}]` clears them, as upstream.
    let mut reset = edited.clone();
    reset["metadata"]["managedFields"] = json!([{}]);
    track_update(deployments(), Some(&edited), &mut reset, &manager("someone"), T2);
    assert!(reset["metadata"].get("managedFields").is_none());
}

#[test]
fn the_status_subresource_owns_only_status() {
    let mut created = config(1, json!({}), web("w:1"));
    track_update(deployments(), None, &mut created, &manager("kubectl-create"), T1);
    let mut reported = created.clone();
    reported["status"] = json!({"replicas": 1});
    let controller = FieldManager { name: "controller".into(), subresource: Some(Subresource::Status) };
    track_update(deployments(), Some(&created), &mut reported, &controller, T2);
    let entries = reported["metadata"]["managedFields"].as_array().unwrap();
    let status = entries.iter().find(|e| e["manager"] == "controller").unwrap();
    assert_eq!(status["subresource"], "status");
    assert_eq!(status["fieldsV1"], json!({"f:status": {"f:replicas": {}}}));
}

#[test]
fn ports_are_keyed_by_port_and_defaulted_protocol() {
    let services = find("", "v1", "services").unwrap();
    let service = |ports: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": ports}});
    let object =
        apply(services, None, &service(json!([{"port": 80, "targetPort": 8080}])), &manager("alice"), false, T1)
            .unwrap();
    assert!(
        fields_of(&owners(&object), "alice").contains(&r#".spec.ports[port=80,protocol="TCP"].targetPort"#.to_string())
    );
    // The same port over UDP is another item.
    let both = service(json!([{"port": 80, "targetPort": 8080}, {"port": 80, "protocol": "UDP", "targetPort": 53}]));
    let object = apply(services, Some(&object), &both, &manager("alice"), false, T2).unwrap();
    assert_eq!(object["spec"]["ports"].as_array().unwrap().len(), 2);
}

#[test]
fn managers_names_default_to_the_user_agent() {
    let m = FieldManager::for_request(None, Some("kubectl/v1.33.1 (linux/amd64) kubernetes/8adc0f0"), None).unwrap();
    assert_eq!(m.name, "kubectl");
    assert!(FieldManager::for_request(Some(&"x".repeat(129)), None, None).is_err());
    assert!(apply(deployments(), None, &json!({"metadata": {"managedFields": []}}), &manager("a"), false, T1).is_err());
}

#[test]
fn more_than_ten_updaters_leave_the_oldest_in_one_entry() {
    let mut object = config(1, json!({}), web("w:1"));
    track_update(deployments(), None, &mut object, &manager("creator"), "2026-01-01T00:00:00Z");
    for i in 0..12 {
        let mut next = object.clone();
        next["metadata"]["annotations"][format!("by-{i}")] = "x".into();
        track_update(
            deployments(),
            Some(&object),
            &mut next,
            &manager(&format!("m{i:02}")),
            &format!("2026-01-01T00:{i:02}:30Z"),
        );
        object = next;
    }
    let owners = owners(&object);
    assert_eq!(owners.len(), 10, "{owners:?}");
    let ancient = fields_of(&owners, ANCIENT_CHANGES);
    assert!(ancient.iter().any(|f| f.starts_with(".spec")), "the creator's fields are kept: {ancient:?}");
    assert!(fields_of(&owners, "m11").contains(&".metadata.annotations.by-11".to_string()));
}
