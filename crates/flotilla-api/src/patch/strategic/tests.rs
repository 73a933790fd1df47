use serde_json::json;

use super::strategic_merge;

const DEPLOYMENT: &str = "io.k8s.api.apps.v1.Deployment";
const POD: &str = "io.k8s.api.core.v1.Pod";

fn deployment() -> serde_json::Value {
    json!({
        "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}, "finalizers": ["a", "b"]},
        "spec": {
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {"spec": {"containers": [
                {"name": "web", "image": "nginx:1.25", "args": ["-a"], "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "sidecar", "image": "envoy"}
            ]}}
        }
    })
}

#[test]
fn maps_merge_and_nulls_delete() {
    let patched =
        strategic_merge(deployment(), json!({"metadata": {"labels": {"tier": null, "env": "prod"}}}), DEPLOYMENT)
            .unwrap();
    assert_eq!(patched["metadata"]["labels"], json!({"app": "web", "env": "prod"}));
}

#[test]
fn containers_merge_by_name_and_other_lists_are_replaced() {
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27", "args": ["-b"]}]}}}});
    let patched = strategic_merge(deployment(), patch, DEPLOYMENT).unwrap();
    let containers = &patched["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().unwrap().len(), 2, "the sidecar stays");
    assert_eq!(containers[0]["image"], "nginx:1.27");
    assert_eq!(containers[0]["args"], json!(["-b"]), "args have no merge strategy: replaced");
    assert_eq!(containers[0]["env"][1]["name"], "B", "untouched fields stay");
}

#[test]
fn kubectl_apply_patches_apply_as_upstream() {
    // What client-side apply sends when a container's image changes and an env var is removed.
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
        "containers": [{"$setElementOrder/env": [{"name": "A"}], "env": [{"$patch": "delete", "name": "B"}], "image": "nginx:1.27", "name": "web"}]
    }}}});
    let patched = strategic_merge(deployment(), patch, DEPLOYMENT).unwrap();
    let web = &patched["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(web["image"], "nginx:1.27");
    assert_eq!(web["env"], json!([{"name": "A", "value": "1"}]));
    assert!(patched.to_string().find('$').is_none(), "no directive survives: {patched}");
}

#[test]
fn set_element_order_reorders_and_new_elements_land_in_place() {
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "init"}, {"name": "web"}],
        "containers": [{"name": "init", "image": "busybox"}]
    }}}});
    let patched = strategic_merge(deployment(), patch, DEPLOYMENT).unwrap();
    let names: Vec<&str> = patched["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sidecar", "init", "web"]);
}

#[test]
fn primitive_merge_lists_are_sets_with_a_parallel_deletion_list() {
    let patched = strategic_merge(deployment(), json!({"metadata": {"finalizers": ["c", "a"]}}), DEPLOYMENT).unwrap();
    // A union, ordered as upstream orders it: the patch's elements in the patch's order, the
    // server's others placed among them by their place on the server.
    assert_eq!(patched["metadata"]["finalizers"], json!(["c", "a", "b"]));
    let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
    let patched = strategic_merge(deployment(), patch, DEPLOYMENT).unwrap();
    assert_eq!(patched["metadata"]["finalizers"], json!(["b"]));
}

#[test]
fn retain_keys_drops_what_the_new_strategy_does_not_use() {
    let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
    let patched = strategic_merge(deployment(), patch, DEPLOYMENT).unwrap();
    assert_eq!(patched["spec"]["strategy"], json!({"type": "Recreate"}));
    let bad = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": {}}}});
    assert!(strategic_merge(deployment(), bad, DEPLOYMENT).is_err());
}

#[test]
fn replace_and_delete_directives() {
    let patch = json!({"metadata": {"labels": {"$patch": "replace", "only": "this"}}});
    let patched = strategic_merge(deployment(), patch, DEPLOYMENT).unwrap();
    assert_eq!(patched["metadata"]["labels"], json!({"only": "this"}));
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "solo", "image": "x"}]}}}});
    let patched = strategic_merge(deployment(), patch, DEPLOYMENT).unwrap();
    assert_eq!(patched["spec"]["template"]["spec"]["containers"], json!([{"name": "solo", "image": "x"}]));
    let patch = json!({"spec": {"strategy": {"$patch": "delete"}}});
    let patched = strategic_merge(deployment(), patch, DEPLOYMENT).unwrap();
    assert_eq!(patched["spec"]["strategy"], json!({}));
}

#[test]
fn pod_ports_merge_on_container_port() {
    let pod = json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "name": "http"}]}]}});
    let patch = json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 443, "name": "https"}]}]}});
    let patched = strategic_merge(pod, patch, POD).unwrap();
    assert_eq!(patched["spec"]["containers"][0]["ports"].as_array().unwrap().len(), 2);
}

#[test]
fn malformed_patches_are_refused() {
    assert!(strategic_merge(deployment(), json!({"$patch": "sideways"}), DEPLOYMENT).is_err());
    let no_key = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
    let err = strategic_merge(deployment(), no_key, DEPLOYMENT).unwrap_err();
    assert!(err.message.contains("does not contain declared merge key: name"), "{}", err.message);
}
