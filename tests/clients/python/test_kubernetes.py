"""The official Python client (`kubernetes`), used as its users use it every day and as its own
e2e suite uses it: discovery, config maps, services, pods (logs, exec), deployments and
replication controllers with their scale subresource, jobs, nodes, `utils.create_from_yaml`, conflicts, watches, an informer,
server-side apply through the dynamic client, and quantities."""

import json
import threading

import pytest
from conftest import IMAGE_BUSYBOX, IMAGE_ONCE, IMAGE_RUN, KUBECONFIG, eventually, upstream_status
from kubernetes import client, config, dynamic, utils, watch
from kubernetes.client.rest import ApiException
from kubernetes.informer import SharedInformer

NS = "py-official"


@pytest.fixture(scope="module")
def api():
    config.load_kube_config(KUBECONFIG)
    api = client.ApiClient()
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NS}})
    except ApiException as e:
        assert e.status == 409, e
    return api


def test_version_and_discovery(api):
    assert client.VersionApi(api).get_code().git_version.startswith("v1.")
    assert client.CoreApi(api).get_api_versions().versions == ["v1"]
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert {"apps", "batch", "coordination.k8s.io"} <= groups
    resources = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
    assert {"pods", "pods/log", "services", "configmaps"} <= resources


def test_configmaps_patch_replace_and_select(api):
    core = client.CoreV1Api(api)
    body = {"metadata": {"name": "cm", "labels": {"e2e-tests": "true"}}, "data": {"a": "1"}}
    created = core.create_namespaced_config_map(NS, body)
    assert created.metadata.uid and created.metadata.resource_version
    # A list body is a JSON patch; a dict body a strategic merge patch.
    patched = core.patch_namespaced_config_map("cm", NS, [{"op": "replace", "path": "/data", "value": {"b": "2"}}])
    assert patched.data == {"b": "2"}
    patched = core.patch_namespaced_config_map("cm", NS, {"data": {"c": "3"}})
    assert patched.data == {"b": "2", "c": "3"}
    patched.data["d"] = "4"
    replaced = core.replace_namespaced_config_map("cm", NS, patched)
    assert replaced.data["d"] == "4"
    # Replacing from a stale read is a conflict.
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_config_map("cm", NS, patched)
    assert stale.value.status == 409
    assert json.loads(stale.value.body)["reason"] == "Conflict"
    assert [c.metadata.name for c in core.list_namespaced_config_map(NS, label_selector="e2e-tests=true").items] == ["cm"]
    assert core.list_namespaced_config_map(NS, field_selector="metadata.name=cm").items[0].data["c"] == "3"
    core.delete_namespaced_config_map("cm", NS)
    assert core.list_namespaced_config_map(NS, label_selector="e2e-tests=true").items == []


def test_errors_are_upstreams_status_bodies(api):
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "twice"}})
    with pytest.raises(ApiException) as conflict:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "twice"}})
    assert conflict.value.status == 409
    assert conflict.value.body == upstream_status(
        'configmaps "twice" already exists', "AlreadyExists", 409, {"name": "twice", "kind": "configmaps"}
    )
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nothing", NS)
    assert missing.value.status == 404
    assert missing.value.body == upstream_status(
        'configmaps "nothing" not found', "NotFound", 404, {"name": "nothing", "kind": "configmaps"}
    )
    with pytest.raises(ApiException) as invalid:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "Not_A_Name"}})
    assert invalid.value.status == 422
    status = json.loads(invalid.value.body)
    assert status["reason"] == "Invalid" and status["details"]["causes"][0]["field"] == "metadata.name"


def test_services_have_a_status_and_merge_ports_by_key(api):
    core = client.CoreV1Api(api)
    service = {
        "metadata": {"name": "frontend"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": "web"}},
    }
    created = core.create_namespaced_service(NS, service)
    assert created.status, "upstream writes status: {loadBalancer: {}}"
    assert created.spec.cluster_ip
    patched = core.patch_namespaced_service(
        "frontend", NS, {"spec": {"ports": [{"name": "https", "port": 443, "targetPort": 8443}]}}
    )
    assert sorted(p.port for p in patched.spec.ports) == [80, 443]
    core.delete_namespaced_service("frontend", NS, body={})


def test_pods_run_log_and_refuse_exec(api):
    core = client.CoreV1Api(api)
    pod = {
        "metadata": {"name": "ticker", "labels": {"app": "ticker"}},
        "spec": {"containers": [{"name": "ticker", "image": IMAGE_RUN, "imagePullPolicy": "IfNotPresent"}]},
    }
    created = core.create_namespaced_pod(NS, pod)
    assert created.status.phase == "Pending"
    eventually(lambda: core.read_namespaced_pod("ticker", NS).status.phase == "Running")
    assert eventually(lambda: core.read_namespaced_pod_log("ticker", NS))
    # Following the log yields lines as they are written.
    lines = []
    for line in watch.Watch().stream(core.read_namespaced_pod_log, "ticker", NS, follow=True):
        lines.append(line)
        if len(lines) == 2:
            break
    assert len(lines) == 2
    assert len(core.list_pod_for_all_namespaces(label_selector="app=ticker").items) == 1
    # The wasm runtime has no exec: a clear Status, not a 404 that reads like a missing pod.
    from kubernetes.stream import stream

    with pytest.raises(ApiException) as refused:
        stream(core.connect_get_namespaced_pod_exec, "ticker", NS, command=["date"], stdout=True, stderr=True)
    assert "400" in str(refused.value) and "exec" in str(refused.value), refused.value
    core.delete_namespaced_pod("ticker", NS, body={}, grace_period_seconds=0)


@pytest.mark.skipif(not IMAGE_BUSYBOX, reason="no Linux containers here (FLOTILLA_E2E_OCI)")
def test_busybox_exec_as_the_clients_own_e2e_suite(api):
    """The client's own e2e tests of a busybox pod (`test_pod_apis`, `test_exit_code`): commands
    run through `stream`, whole and interactive, and their exit codes."""
    from kubernetes.stream import stream
    from kubernetes.stream.ws_client import ERROR_CHANNEL

    core = client.CoreV1Api(api)
    pod = {
        "metadata": {"name": "busybox-test"},
        "spec": {"containers": [{
            "name": "busybox", "image": IMAGE_BUSYBOX, "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", "while true; do date; sleep 5; done"],
        }]},
    }
    core.create_namespaced_pod(NS, pod)
    eventually(lambda: core.read_namespaced_pod("busybox-test", NS).status.phase == "Running")
    exec_pod = core.connect_get_namespaced_pod_exec
    said = stream(exec_pod, "busybox-test", NS, command=["/bin/sh", "-c", "for i in $(seq 1 3); do date; done"],
                  stderr=False, stdin=False, stdout=True, tty=False)
    assert len(said.splitlines()) == 3, said
    said = stream(exec_pod, "busybox-test", NS, command=["uptime"], stderr=False, stdin=False, stdout=True, tty=False)
    assert len(said.splitlines()) == 1, said

    shell = stream(exec_pod, "busybox-test", NS, command=["/bin/sh"], stderr=True, stdin=True, stdout=True, tty=False,
                   _preload_content=False)
    shell.write_stdin("echo test string 1\n")
    assert "test string 1" in shell.readline_stdout(timeout=5)
    shell.write_stdin("echo test string 2 >&2\n")
    assert "test string 2" in shell.readline_stderr(timeout=5)
    shell.write_stdin("exit\n")
    shell.update(timeout=5)

    def ended():
        shell.update(timeout=1)
        return shell.read_channel(ERROR_CHANNEL)

    status = eventually(ended, timeout=10)
    assert json.loads(status)["status"] == "Success", status
    shell.update(timeout=5)
    assert not shell.is_open()

    for command, code in ((["false"], 1), (["/bin/sh", "-c", "sleep 1; exit 3"], 3), (["true"], 0),
                          (["/bin/sh", "-c", "ls /"], 0)):
        ran = stream(exec_pod, "busybox-test", NS, command=command, stderr=True, stdin=False, stdout=True, tty=False,
                     _preload_content=False)
        ran.run_forever(timeout=10)
        assert ran.returncode == code, (command, ran.returncode)
    core.delete_namespaced_pod("busybox-test", NS, body={}, grace_period_seconds=0)


def test_deployments_scale_through_the_subresource(api):
    apps = client.AppsV1Api(api)
    deployment = {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": IMAGE_RUN, "ports": [{"containerPort": 80}]}]},
            },
        },
    }
    created = apps.create_namespaced_deployment(NS, deployment)
    assert created.spec.selector.match_labels["app"] == "web"
    assert created.spec.template.spec.containers[0].ports[0].container_port == 80
    apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 2}})
    assert apps.read_namespaced_deployment_scale("web", NS).spec.replicas == 2
    eventually(lambda: apps.read_namespaced_deployment_status("web", NS).status.ready_replicas == 2)
    apps.delete_namespaced_deployment("web", NS, propagation_policy="Background")


def test_replication_controllers_scale_and_cascade(api):
    # As the client's own e2e suite (test_replication_controller_apis) drives them.
    core = client.CoreV1Api(api)
    name = "frontend"
    rc = {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {"labels": {"name": name}, "name": name},
        "spec": {
            "replicas": 2,
            "selector": {"name": name},
            "template": {
                "metadata": {"labels": {"name": name}},
                "spec": {"containers": [{"image": IMAGE_RUN, "name": "app", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]},
            },
        },
    }
    created = core.create_namespaced_replication_controller(body=rc, namespace=NS)
    assert (created.metadata.name, created.spec.replicas, created.status.replicas) == (name, 2, 0)
    assert core.read_namespaced_replication_controller(name=name, namespace=NS).spec.replicas == 2
    eventually(lambda: core.read_namespaced_replication_controller_status(name, NS).status.ready_replicas == 2)
    scale = core.patch_namespaced_replication_controller_scale(name, NS, {"spec": {"replicas": 1}})
    assert (scale.spec.replicas, scale.status.selector) == (1, f"name={name}")
    eventually(lambda: len(core.list_namespaced_pod(NS, label_selector=f"name={name}").items) == 1)
    core.delete_namespaced_replication_controller(name=name, namespace=NS, propagation_policy="Background")
    eventually(lambda: core.list_namespaced_pod(NS, label_selector=f"name={name}").items == [])


def test_jobs_complete(api):
    batch = client.BatchV1Api(api)
    job = {
        "metadata": {"name": "once"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "once", "image": IMAGE_ONCE}]}}},
    }
    created = batch.create_namespaced_job(NS, job)
    assert created.spec.template.spec.restart_policy == "Never"
    eventually(lambda: batch.read_namespaced_job_status("once", NS).status.succeeded == 1)
    deleted = batch.delete_namespaced_job("once", NS, body={"propagationPolicy": "Background"})
    assert deleted["kind"] in ("Job", "Status")


def test_nodes_and_quantities(api):
    nodes = client.CoreV1Api(api).list_node().items
    assert nodes
    for node in nodes:
        assert node.metadata.labels["kubernetes.io/os"]
        assert utils.parse_quantity(node.status.allocatable["memory"]) > 0
        assert utils.parse_quantity(node.status.capacity["cpu"]) >= 1
        assert node.status.node_info.kubelet_version


def test_create_from_yaml_with_many_documents_and_a_conflict(api, tmp_path):
    manifest = tmp_path / "app.yaml"
    manifest.write_text(
        """apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {mode: fast}
---
apiVersion: v1
kind: Service
metadata: {name: backend}
spec:
  ports: [{port: 80}]
  selector: {app: backend}
---
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: backend}
  spec:
    replicas: 0
    selector: {matchLabels: {app: backend}}
    template:
      metadata: {labels: {app: backend}}
      spec: {containers: [{name: backend, image: backend:v1}]}
"""
    )
    created = utils.create_from_yaml(api, str(manifest), namespace=NS)
    assert len(created) == 3
    assert client.AppsV1Api(api).read_namespaced_deployment("backend", NS).spec.replicas == 0
    with pytest.raises(utils.FailToCreateError) as again:
        utils.create_from_yaml(api, str(manifest), namespace=NS)
    assert {e.status for e in again.value.api_exceptions} == {409}


def test_watch_from_a_resource_version_ends_at_its_timeout(api):
    core = client.CoreV1Api(api)
    rv = core.list_namespaced_config_map(NS, label_selector="watched=yes").metadata.resource_version
    core.create_namespaced_config_map(NS, {"metadata": {"name": "w1", "labels": {"watched": "yes"}}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "w2", "labels": {"watched": "yes"}}})
    core.patch_namespaced_config_map("w2", NS, {"data": {"x": "y"}})
    core.delete_collection_namespaced_config_map(NS, label_selector="watched=yes")
    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(
            core.list_namespaced_config_map, NS, label_selector="watched=yes", resource_version=rv, timeout_seconds=3
        )
    ]
    assert events[:3] == [("ADDED", "w1"), ("ADDED", "w2"), ("MODIFIED", "w2")]
    assert sorted(events[3:]) == [("DELETED", "w1"), ("DELETED", "w2")]


def test_an_informer_follows_changes(api):
    core = client.CoreV1Api(api)
    seen = {"ADDED": threading.Event(), "MODIFIED": threading.Event(), "DELETED": threading.Event()}
    informer = SharedInformer(core.list_namespaced_config_map, namespace=NS, label_selector="inf-e2e=1")
    for kind, event in seen.items():
        informer.add_event_handler(kind, lambda obj, event=event: event.set())
    informer.start()
    try:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "inf", "labels": {"inf-e2e": "1"}}})
        assert seen["ADDED"].wait(10)
        core.patch_namespaced_config_map("inf", NS, {"data": {"a": "b"}})
        assert seen["MODIFIED"].wait(10)
        core.delete_namespaced_config_map("inf", NS)
        assert seen["DELETED"].wait(10)
    finally:
        informer.stop()


def test_server_side_apply_owns_fields_and_conflicts(api):
    configmaps = dynamic.DynamicClient(api).resources.get(api_version="v1", kind="ConfigMap")
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied", "namespace": NS}, "data": {"k": "a"}}
    configmaps.server_side_apply(body=body, namespace=NS, field_manager="first")
    body["data"]["k"] = "b"
    with pytest.raises(ApiException) as conflict:
        configmaps.server_side_apply(body=body, namespace=NS, field_manager="second")
    assert conflict.value.status == 409
    applied = configmaps.server_side_apply(body=body, namespace=NS, field_manager="second", force_conflicts=True)
    assert applied.data.k == "b"
    managers = {m.manager for m in applied.metadata.managedFields}
    assert managers == {"second"}
