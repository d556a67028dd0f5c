"""A rolling update moves a host's Kubernetes pods away before it installs anything: the real
host service drains the node through the official ``kubernetes`` client (against the fake API
server of tests/host/fake_kube.py, real HTTP) when the strategy locks the host, and the strategy
waits for the drain to finish before the install step starts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from tests.host.fake_kube import FakeKube
from tests.support.releases import release_archive
from tests.support.site import open_site
from tests.support.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(300)]
TOKEN = "test-token"


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    kube = FakeKube(token=TOKEN, termination_delay_s=0.1)
    for node in ("controller-0", "worker-0", "worker-1"):
        kube.add_node(node)
    await kube.start()
    yield kube
    await kube.stop()


async def test_pods_are_evicted_before_the_install_and_the_node_is_uncordoned(
    stack, tmp_path, fake: FakeKube
):
    # Pods that take a while to terminate: the install must wait for them.
    fake.add_pod("web-1", "worker-0", termination_delay_s=1.5)
    fake.add_pod("db-0", "worker-0", namespace="data", owner_kind="StatefulSet")
    fake.add_pod("web-2", "worker-1")
    kube = {"ROOST_KUBE_API_URL": fake.url, "ROOST_KUBE_TOKEN": TOKEN}
    async with open_site(stack, tmp_path, 3, software=True, host_env=kube) as site:
        emptied: list[float] = []

        async def watch_pods() -> None:
            while not emptied:
                if not fake.pod_names("worker-0"):
                    emptied.append(time.time())
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch_pods())
        async with site.client(site.software) as sw:
            archive = release_archive(tmp_path / "r", "roost-1.1.0", "1.1.0", key=site.release_key)
            r = await sw.post("/v1/releases", content=archive)
            assert r.status_code == 201, r.text
            body = {"release": "roost-1.1.0", "controller_apply_type": "ignore"}
            r = await sw.post("/v1/strategy", json=body)
            assert r.status_code == 201, r.text
            assert (await sw.post("/v1/strategy/apply")).status_code == 202

            async def finished():
                doc = (await sw.get("/v1/strategy")).json()
                return doc if doc["state"] in ("applied", "apply-failed") else None

            doc = await eventually(finished, timeout=120, interval=0.2, what="strategy done")
        watcher.cancel()
        assert doc["state"] == "applied", doc["reason"]
        stage = next(s for s in doc["stages"] if s["hosts"] == ["worker-0"])
        steps = {s["name"]: s for s in stage["steps"]}
        install_started = datetime.fromisoformat(steps["install"]["started_at"]).timestamp()
        assert emptied, "worker-0's pods were never evicted"
        # The install began only after every pod had left the node (clock tolerance: 50 ms).
        assert install_started >= emptied[0] - 0.05, (install_started, emptied[0])
        assert {e["metadata"]["name"] for e in fake.evictions} >= {"web-1", "db-0", "web-2"}
        # Back in service: both nodes schedulable again (the host service uncordons after the
        # in-test), the controller untouched.
        await eventually(
            lambda: not fake.unschedulable("worker-0") and not fake.unschedulable("worker-1"),
            timeout=20,
            what="nodes uncordoned",
        )
        patched = [r for r in fake.requests if r[0] == "PATCH" and "controller-0" in r[1]]
        assert not patched, "controller-0 was ignored by the strategy: never cordoned"
