"""kr8s, the "batteries included" client: it checks `/version/` when it connects, then creates,
patches, lists with selectors, watches, scales and waits on objects."""

import asyncio

import kr8s.asyncio
import pytest
from conftest import IMAGE_RUN, KUBECONFIG
from kr8s.asyncio.objects import ConfigMap, Deployment, Namespace

NS = "py-kr8s"


def test_connect_create_patch_list_watch_and_wait():
    async def run():
        api = await kr8s.asyncio.api(kubeconfig=KUBECONFIG)
        assert (await api.version())["gitVersion"].startswith("v1.")
        namespace = await Namespace({"metadata": {"name": NS}}, api=api)
        if not await namespace.exists():
            await namespace.create()

        cm = await ConfigMap({"metadata": {"name": "kr8s", "namespace": NS, "labels": {"by": "kr8s"}}, "data": {"a": "1"}}, api=api)
        await cm.create()
        await cm.patch({"data": {"b": "2"}})
        await cm.refresh()
        assert cm.raw["data"] == {"a": "1", "b": "2"}
        await cm.label({"extra": "yes"})
        listed = [c.name async for c in api.get("configmaps", namespace=NS, label_selector={"by": "kr8s"})]
        assert listed == ["kr8s"]
        by_field = [c.name async for c in api.get("configmaps", namespace=NS, field_selector={"metadata.name": "kr8s"})]
        assert by_field == ["kr8s"]

        async def first_event():
            async for event, obj in api.watch("configmaps", namespace=NS, label_selector={"by": "kr8s"}):
                return event, obj.name

        # A watch from no resourceVersion starts with the objects that exist, as ADDED.
        assert await asyncio.wait_for(first_event(), 20) == ("ADDED", "kr8s")
        await cm.delete()

        deployment = await Deployment(
            {
                "metadata": {"name": "kr8s", "namespace": NS},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "kr8s"}},
                    "template": {"metadata": {"labels": {"app": "kr8s"}}, "spec": {"containers": [{"name": "app", "image": IMAGE_RUN}]}},
                },
            },
            api=api,
        )
        await deployment.create()
        await deployment.scale(2)
        await deployment.wait("condition=Available", timeout=60)
        await deployment.refresh()
        assert deployment.raw["status"]["readyReplicas"] == 2
        pods = await deployment.pods()
        assert len(pods) == 2
        logs = [line async for line in pods[0].logs(tail_lines=1)]
        assert logs
        await deployment.delete()
        with pytest.raises(kr8s.NotFoundError):
            await ConfigMap.get("kr8s", namespace=NS, api=api)

    asyncio.run(run())
