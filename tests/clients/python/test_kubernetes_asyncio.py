"""`kubernetes_asyncio`, the official client's asyncio twin: version, CRUD, a watch (which it
asks for as `watch=True`) from a resourceVersion, and errors as `ApiException`."""

import asyncio
import json

import pytest
from conftest import KUBECONFIG
from kubernetes_asyncio import client, config, watch
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
