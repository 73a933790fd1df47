"""lightkube, the typed client: create, get, patch (each type it offers), list with selectors,
watch, apply, and `ApiError` carrying upstream's `Status`; a pod's log followed, a deployment
scaled through its subresource and waited for."""

import pytest
from conftest import IMAGE_RUN, KUBECONFIG
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, Namespace, Node, Pod
from lightkube.types import PatchType

NS = "py-lightkube"


@pytest.fixture(scope="module")
def c():
    """A client, and the suite's namespace (there already, if an earlier test made it)."""
    client = Client(KubeConfig.from_file(KUBECONFIG), field_manager="lightkube")
    try:
        client.create(Namespace(metadata=ObjectMeta(name=NS)))
    except ApiError as e:
        assert e.status.code == 409
    return client


def test_crud_patch_types_watch_apply_and_errors(c):
    assert c.list(Node)
    c.create(ConfigMap(metadata=ObjectMeta(name="lk", labels={"by": "lightkube"}), data={"a": "1"}), namespace=NS)
    c.patch(ConfigMap, "lk", {"data": {"b": "2"}}, namespace=NS)
    c.patch(ConfigMap, "lk", {"data": {"c": "3"}}, namespace=NS, patch_type=PatchType.MERGE)
    c.patch(ConfigMap, "lk", [{"op": "add", "path": "/data/d", "value": "4"}], namespace=NS, patch_type=PatchType.JSON)
    assert c.get(ConfigMap, "lk", namespace=NS).data == {"a": "1", "b": "2", "c": "3", "d": "4"}
    assert [m.metadata.name for m in c.list(ConfigMap, namespace=NS, labels={"by": "lightkube"})] == ["lk"]
    applied = c.apply(ConfigMap(metadata=ObjectMeta(name="lk2", namespace=NS), data={"x": "y"}))
    assert applied.data == {"x": "y"}
    for event, obj in c.watch(ConfigMap, namespace=NS, labels={"by": "lightkube"}):
        assert (event, obj.metadata.name) == ("ADDED", "lk")
        break
    c.delete(ConfigMap, "lk", namespace=NS)
    with pytest.raises(ApiError) as missing:
        c.get(ConfigMap, "lk", namespace=NS)
    assert missing.value.status.code == 404 and missing.value.status.reason == "NotFound"


def test_logs_scale_and_wait(c):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ticker", "namespace": NS},
           "spec": {"containers": [{"name": "t", "image": IMAGE_RUN}]}}
    c.apply(Pod.from_dict(pod))
    c.wait(Pod, "ticker", namespace=NS, for_conditions=["Ready"])
    lines = []
    for line in c.log("ticker", namespace=NS, follow=True):
        lines.append(line)
        if len(lines) == 2:
            break
    assert len(lines) == 2 and all(line.endswith("\n") for line in lines), lines
    c.delete(Pod, "ticker", namespace=NS, grace_period=0)

    labels = {"app": "lk"}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "lk", "namespace": NS},
                  "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                           "template": {"metadata": {"labels": labels},
                                        "spec": {"containers": [{"name": "t", "image": IMAGE_RUN}]}}}}
    c.create(Deployment.from_dict(deployment))
    scale = c.patch(Deployment.Scale, "lk", {"spec": {"replicas": 2}}, namespace=NS, patch_type=PatchType.MERGE)
    assert (scale.spec.replicas, scale.status.selector) == (2, "app=lk")
    assert c.get(Deployment.Scale, "lk", namespace=NS).spec.replicas == 2
    available = c.wait(Deployment, "lk", namespace=NS, for_conditions=["Available"])
    assert available.status.availableReplicas in (1, 2)
    c.delete(Deployment, "lk", namespace=NS)
