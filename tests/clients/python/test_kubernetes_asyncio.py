"""`kubernetes_asyncio`, the official client's asyncio twin: version, CRUD, a watch (which it
asks for as `watch=True`) from a resourceVersion, errors as `ApiException`, a pod's log
followed, a deployment through its scale subresource, and server-side apply through its dynamic
client."""

import asyncio
import json

import pytest
from conftest import IMAGE_RUN, KUBECONFIG
from kubernetes_asyncio import client, config, dynamic, watch
from kubernetes_asyncio.client.rest import ApiException

NS = "py-asyncio"


async def connected():
    await config.load_kube_config(KUBECONFIG)
    api = client.ApiClient()
    try:
        await client.CoreV1Api(api).create_namespace({"metadata": {"name": NS}})
    except ApiException as e:
        assert e.status == 409, e
    return api


def test_version_crud_watch_and_errors():
    async def run():
        async with await connected() as api:
            assert (await client.VersionApi(api).get_code()).git_version.startswith("v1.")
            core = client.CoreV1Api(api)
            rv = (await core.list_namespaced_config_map(NS)).metadata.resource_version
            await core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}, "data": {"k": "1"}})
            await core.patch_namespaced_config_map("a", NS, {"data": {"k": "2"}})
            read = await core.read_namespaced_config_map("a", NS)
            assert read.data == {"k": "2"}
            await core.delete_namespaced_config_map("a", NS)
            events = []
            async with watch.Watch().stream(
                core.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=2
            ) as stream:
                async for event in stream:
                    events.append((event["type"], event["object"].metadata.name))
            assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")], events
            with pytest.raises(ApiException) as missing:
                await core.read_namespaced_config_map("a", NS)
            assert missing.value.status == 404
            assert json.loads(missing.value.body)["reason"] == "NotFound"

    asyncio.run(run())


async def until(check, timeout=60):
    """Awaits `check()` until it returns something true; returns that, or fails."""
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    pytest.fail(f"still {last!r} after {timeout} s")


def test_logs_follow_scale_and_apply():
    async def run():
        async with await connected() as api:
            core = client.CoreV1Api(api)
            pod = {"metadata": {"name": "ticker"}, "spec": {"containers": [{"name": "t", "image": IMAGE_RUN}]}}
            await core.create_namespaced_pod(NS, pod)

            async def running():
                return (await core.read_namespaced_pod("ticker", NS)).status.phase == "Running"

            await until(running)
            # Following the log yields lines as the module writes them.
            lines = []
            async with watch.Watch().stream(core.read_namespaced_pod_log, "ticker", NS, follow=True) as stream:
                async for line in stream:
                    lines.append(line)
                    if len(lines) == 2:
                        break
            assert len(lines) == 2 and all(lines), lines
            await core.delete_namespaced_pod("ticker", NS, grace_period_seconds=0)

            apps = client.AppsV1Api(api)
            labels = {"app": "aio"}
            template = {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "t", "image": IMAGE_RUN}]}}
            deployment = {"metadata": {"name": "aio"}, "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template}}
            await apps.create_namespaced_deployment(NS, deployment)
            scale = await apps.patch_namespaced_deployment_scale("aio", NS, {"spec": {"replicas": 2}})
            assert (scale.spec.replicas, scale.status.selector) == (2, "app=aio")

            async def ready():
                return (await apps.read_namespaced_deployment_status("aio", NS)).status.ready_replicas == 2

            await until(ready)
            await apps.delete_namespaced_deployment("aio", NS, propagation_policy="Background")

            # Server-side apply through the dynamic client: created, then owned and merged.
            client_dynamic = await dynamic.DynamicClient(api)
            maps = await client_dynamic.resources.get(api_version="v1", kind="ConfigMap")
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"k": "v"}}
            applied = await maps.server_side_apply(body=body, namespace=NS, field_manager="aio")
            assert applied.data.k == "v"
            managers = [m.manager for m in applied.metadata.managedFields]
            assert managers == ["aio"], managers

    asyncio.run(run())
