//! The decision on snapshots of a cluster: which node, or the message a user would read.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

use super::*;

fn node(name: &str, extra: Value) -> Node {
    let mut node = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "runtime.flotilla.dev/wasm": "true"}},
        "spec": {},
        "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "100"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    });
    merge(&mut node, extra);
    serde_json::from_value(node).unwrap()
}

fn pod(name: &str, extra: Value) -> Pod {
    let mut pod = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "app", "image": "app.wasm"}]},
    });
    merge(&mut pod, extra);
    serde_json::from_value(pod).unwrap()
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(target.entry(key).or_insert(Value::Null), value);
            }
        }
        (target, patch) => *target = patch,
    }
}

fn cluster(nodes: &[Node]) -> Cluster {
    let mut cluster = Cluster::default();
    for node in nodes {
        cluster.set_node(node);
    }
    cluster
}

fn decide(pod: &Pod, cluster: &Cluster) -> Result<String, String> {
    schedule(&PodInfo::of(pod), cluster, 0, &mut fastrand::Rng::with_seed(7)).map(|p| p.node)
}

#[test]
fn every_reason_a_node_was_ruled_out_is_counted() {
    let cluster = cluster(&[
        node("cordoned", json!({"spec": {"unschedulable": true}})),
        node("gpu", json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}})),
        node("small", json!({"status": {"allocatable": {"memory": "1Gi"}}})),
        node("down", json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})),
    ]);
    let big =
        pod("big", json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"memory": "2Gi"}}}]}}));
    assert_eq!(
        decide(&big, &cluster).unwrap_err(),
        "0/4 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated taint {dedicated: gpu}, \
         1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, 1 node(s) were unschedulable."
    );
    let tolerant = pod(
        "tolerant",
        json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
               "containers": [{"name": "app", "resources": {"requests": {"memory": "2Gi"}}}]}}),
    );
    assert_eq!(decide(&tolerant, &cluster).unwrap(), "gpu");
    assert_eq!(decide(&big, &Cluster::default()).unwrap_err(), "no nodes available to schedule pods");
}

#[test]
fn resources_already_bound_count() {
    let mut cluster = cluster(&[node("a", json!({"status": {"allocatable": {"cpu": "1", "pods": "2"}}}))]);
    let half = |name: &str| {
        pod(name, json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "600m"}}}]}}))
    };
    cluster.place(Arc::new(PodInfo::of(&half("first"))), "a", false);
    assert_eq!(decide(&half("second"), &cluster).unwrap_err(), "0/1 nodes are available: 1 Insufficient cpu.");
    cluster.forget(&ObjectKey::new(Some("default"), "first"));
    assert_eq!(decide(&half("second"), &cluster).unwrap(), "a");
    cluster.place(Arc::new(PodInfo::of(&pod("x", json!({})))), "a", true);
    cluster.place(Arc::new(PodInfo::of(&pod("y", json!({})))), "a", true);
    assert_eq!(decide(&pod("z", json!({})), &cluster).unwrap_err(), "0/1 nodes are available: 1 Too many pods.");
}

#[test]
fn a_deleted_node_is_no_longer_chosen_and_its_pods_count_until_they_go() {
    let mut cluster = cluster(&[node("c", json!({})), node("a", json!({})), node("b", json!({}))]);
    let names = |cluster: &Cluster| cluster.nodes().map(|n| n.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&cluster), ["a", "b", "c"]);
    cluster.place(Arc::new(PodInfo::of(&pod("orphan", json!({})))), "a", false);
    cluster.remove_node("a");
    assert_eq!(names(&cluster), ["b", "c"]);
    assert!(cluster.node("a").is_none());
    // The node comes back: the pod still bound to it counts.
    cluster.set_node(&node("a", json!({})));
    assert_eq!(cluster.node("a").map(|n| n.pods.len()), Some(1));
    cluster.remove_node("a");
    cluster.forget(&ObjectKey::new(Some("default"), "orphan"));
    cluster.remove_node("c");
    assert_eq!(names(&cluster), ["b"]);
    assert_eq!(decide(&pod("next", json!({})), &cluster).unwrap(), "b");
}

#[test]
fn selectors_affinity_and_runtime_class_pick_the_node() {
    let cluster = cluster(&[
        node("edge", json!({"metadata": {"labels": {"zone": "edge", "runtime.flotilla.dev/oci": "true"}}})),
        node("core", json!({"metadata": {"labels": {"zone": "core"}}})),
    ]);
    assert_eq!(decide(&pod("p", json!({"spec": {"nodeSelector": {"zone": "core"}}})), &cluster).unwrap(), "core");
    let affinity = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["edge"]}]}]}}}}});
    assert_eq!(decide(&pod("p", affinity), &cluster).unwrap(), "edge");
    let nowhere = json!({"spec": {"nodeSelector": {"zone": "moon"}}});
    assert_eq!(
        decide(&pod("p", nowhere), &cluster).unwrap_err(),
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
    );
    assert_eq!(decide(&pod("p", json!({"spec": {"runtimeClassName": "oci"}})), &cluster).unwrap(), "edge");
    let preferred = json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["core"]}]}}]}}}});
    for seed in 0..10 {
        let placed =
            schedule(&PodInfo::of(&pod("p", preferred.clone())), &cluster, 0, &mut fastrand::Rng::with_seed(seed));
        assert_eq!(placed.unwrap().node, "core");
    }
}

#[test]
fn replicas_of_one_owner_spread_across_nodes() {
    let mut cluster = cluster(&[node("a", json!({})), node("b", json!({})), node("c", json!({}))]);
    let owned = |name: &str| {
        pod(
            name,
            json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid", "controller": true}]}}),
        )
    };
    let mut rng = fastrand::Rng::with_seed(1);
    let mut used = Vec::new();
    for name in ["r1", "r2", "r3"] {
        let info = Arc::new(PodInfo::of(&owned(name)));
        let placed = schedule(&info, &cluster, 0, &mut rng).unwrap();
        cluster.place(info, &placed.node, true);
        used.push(placed.node);
    }
    used.sort();
    assert_eq!(used, ["a", "b", "c"]);
}

#[test]
fn anti_affinity_keeps_pods_apart_and_ports_cannot_be_shared() {
    let mut cluster = cluster(&[node("a", json!({})), node("b", json!({}))]);
    let apart = |name: &str| {
        pod(
            name,
            json!({
                "metadata": {"labels": {"app": "db"}},
                "spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}},
            }),
        )
    };
    let first = Arc::new(PodInfo::of(&apart("db-0")));
    let placed = decide(&apart("db-0"), &cluster).unwrap();
    cluster.place(first, &placed, false);
    let other = if placed == "a" { "b" } else { "a" };
    assert_eq!(decide(&apart("db-1"), &cluster).unwrap(), other);
    cluster.place(Arc::new(PodInfo::of(&apart("db-1"))), other, false);
    assert_eq!(
        decide(&apart("db-2"), &cluster).unwrap_err(),
        "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
    );
    // A pod without the rule, matched by theirs, is kept away by the existing pods' rule.
    let plain = pod("plain", json!({"metadata": {"labels": {"app": "db"}}}));
    assert_eq!(
        decide(&plain, &cluster).unwrap_err(),
        "0/2 nodes are available: 2 node(s) didn't satisfy existing pods anti-affinity rules."
    );

    let mut cluster = self::cluster(&[node("a", json!({}))]);
    let web = |name: &str| {
        pod(
            name,
            json!({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
        )
    };
    cluster.place(Arc::new(PodInfo::of(&web("w1"))), "a", false);
    assert_eq!(
        decide(&web("w2"), &cluster).unwrap_err(),
        "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
    );
}

#[test]
fn pod_affinity_follows_the_first_of_a_group() {
    let mut cluster = cluster(&[node("a", json!({})), node("b", json!({}))]);
    let together = |name: &str| {
        pod(
            name,
            json!({
                "metadata": {"labels": {"app": "cache"}},
                "spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}]}}},
            }),
        )
    };
    let first = decide(&together("c0"), &cluster).unwrap();
    cluster.place(Arc::new(PodInfo::of(&together("c0"))), &first, false);
    for name in ["c1", "c2", "c3"] {
        assert_eq!(decide(&together(name), &cluster).unwrap(), first);
    }
}

#[test]
fn large_clusters_are_sampled_as_upstream_samples_them() {
    assert_eq!(feasible_nodes_to_find(50), 50);
    assert_eq!(feasible_nodes_to_find(100), 100);
    assert_eq!(feasible_nodes_to_find(1000), 420);
    assert_eq!(feasible_nodes_to_find(5000), 500);
}
