"""The host service as a process, wired to a fake Kubernetes API server: a lock drains the
host's node in the background, a passed in-test uncordons it, both on the timeline; a drain a
PodDisruptionBudget blocks does not undo the lock; without a cluster nothing is attempted.

The fake API server runs on this test's event loop (as in ``test_kube_drain.py``); the service
reaches it over real HTTP. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from roost_agent.heartbeat import HeartbeatBus, HeartbeatSender
from roost_shared.catalog import HostRecord, Personality
from tests.config.helpers import new_mac
from tests.host.fake_kube import FakeKube
from tests.support.hosts import act, host_where, publish, timeline
from tests.support.stack import key_of
from tests.support.waiting import eventually

TOKEN = "kube-test-token"
FAST = {"ROOST_INTEST_S": "0.3", "ROOST_STEP_S": "0.3", "ROOST_STEP_POLL_S": "0.2"}


def record(hostname: str, personality: str) -> HostRecord:
    return HostRecord(
        uuid=str(uuid.uuid4()),
        hostname=hostname,
        personality=Personality(personality),
        mgmt_mac=new_mac(),
        install_state="provisioned",
        bmc_type="ipmi",
        bmc_address="10.0.0.9",
    )


async def entry(http: httpx.AsyncClient, ref: str, cause: str, nth: int = 1) -> dict[str, Any]:
    """The ``nth`` timeline entry with this cause, once there is one."""

    async def probe():
        found = [e for e in await timeline(http, ref) if e["cause"] == cause]
        return found[nth - 1] if len(found) >= nth else None

    return await eventually(probe, what=f"{cause} #{nth} on {ref}'s timeline")


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    kube = FakeKube(token=TOKEN, termination_delay_s=0.1)
    kube.add_node("controller-0")
    kube.add_node("worker-0")
    await kube.start()
    yield kube
    await kube.stop()


async def enabled_worker(stack, http: httpx.AsyncClient) -> None:
    """Learn controller-0 and worker-0 from config events; unlock worker-0 until enabled."""
    bus = await stack.bus()
    for rec in (record("controller-0", "controller"), record("worker-0", "worker")):
        await publish(bus, "added", rec)
    await host_where(http, "controller-0", lambda h: True, "controller-0 learned")
    await host_where(http, "worker-0", lambda h: True, "worker-0 learned")
    assert (await act(http, "worker-0", "unlock")).status_code == 200
    await host_where(
        http, "worker-0", lambda h: h["availability"] == "available", "worker-0 in service"
    )


def kube_env(fake: FakeKube, **extra: str) -> dict[str, str]:
    return {**FAST, "ROOST_KUBE_API_URL": fake.url, "ROOST_KUBE_TOKEN": TOKEN, **extra}


async def test_lock_drains_the_node_and_unlock_uncordons_it(stack, fake: FakeKube):
    host = stack.start("host", **kube_env(fake, ROOST_KUBE_GRACE_S="3"))
    async with host.client(stack.tokens.admin) as http:
        await enabled_worker(stack, http)
        # The passed in-test uncordoned the node (it was not cordoned: nothing changed).
        first = await entry(http, "worker-0", "kubernetes uncordon")
        assert first["reason"] == "uncordon-done" and "already uncordoned" in first["detail"]

        fake.add_pod("web-1", "worker-0")
        fake.add_pod("db-0", "worker-0", namespace="data", owner_kind="StatefulSet")
        fake.add_pod("calico-node-w0", "worker-0", namespace="kube-system", owner_kind="DaemonSet")
        fake.add_pod("web-2", "controller-0")

        r = await act(http, "worker-0", "lock", reason="replace a disk")
        assert r.status_code == 200, r.text
        locked = r.json()
        assert (locked["administrative"], locked["availability"]) == ("locked", "online")
        assert locked["kube"]["op"] == "drain" and locked["kube"]["status"] == "pending"
        assert locked["kube"]["node"] == "worker-0"

        drained = await entry(http, "worker-0", "kubernetes drain")
        assert drained["reason"] == "drain-done", drained
        assert "2 evicted, 1 skipped" in drained["detail"]
        assert drained["actor"] == "system"
        assert (
            drained["from"]
            == drained["to"]
            == {
                "administrative": "locked",
                "operational": "disabled",
                "availability": "online",
            }
        )
        assert fake.unschedulable("worker-0") and not fake.unschedulable("controller-0")
        assert fake.pod_names("worker-0") == {"calico-node-w0"}
        assert fake.pod_names("controller-0") == {"web-2"}
        assert {e["deleteOptions"]["gracePeriodSeconds"] for e in fake.evictions} == {3}
        h = await host_where(
            http, "worker-0", lambda h: h["kube"]["status"] != "pending", "drain recorded"
        )
        assert h["kube"]["status"] == "drained" and h["kube"]["reason"] == "drain-done"

        # Unlock: cordoned until the in-test passes, then uncordoned.
        assert (await act(http, "worker-0", "unlock")).status_code == 200
        second = await entry(http, "worker-0", "kubernetes uncordon", nth=2)
        assert second["reason"] == "uncordon-done" and "worker-0 uncordoned" in second["detail"]
        assert not fake.unschedulable("worker-0")
        causes = [(e["cause"], e["reason"]) for e in await timeline(http, "worker-0")]
        assert causes[-6:] == [
            ("kubernetes uncordon", "uncordon-done"),  # first unlock
            ("lock requested: replace a disk", "operator-request"),
            ("kubernetes drain", "drain-done"),
            ("unlock requested", "operator-request"),
            ("in-test passed", "intest-passed"),
            ("kubernetes uncordon", "uncordon-done"),
        ]


async def test_a_drain_blocked_by_a_budget_does_not_undo_the_lock(stack, fake: FakeKube):
    host = stack.start("host", **kube_env(fake, ROOST_KUBE_DRAIN_TIMEOUT_S="1.5"))
    async with host.client(stack.tokens.admin) as http:
        await enabled_worker(stack, http)
        fake.add_pod("api-0", "worker-0", labels={"app": "api"})
        fake.add_pod("web-1", "worker-0")
        fake.add_pdb("api-pdb", {"app": "api"})  # never allows a disruption

        r = await act(http, "worker-0", "lock")
        assert r.status_code == 200 and r.json()["administrative"] == "locked"

        blocked = await entry(http, "worker-0", "kubernetes drain")
        assert blocked["reason"] == "drain-blocked", blocked
        assert "not drained within 1.5 s" in blocked["detail"]
        assert "1 evicted" in blocked["detail"] and "api-0" in blocked["detail"]
        assert "PodDisruptionBudget" in blocked["detail"]
        h = (await http.get("/v1/hosts/worker-0")).json()
        assert (h["administrative"], h["operational"]) == ("locked", "disabled")
        assert h["kube"]["status"] == "timed_out" and h["kube"]["reason"] == "drain-blocked"
        assert fake.unschedulable("worker-0") and fake.pod_names("worker-0") == {"api-0"}


async def test_an_unreachable_api_server_is_reported_and_the_lock_stands(stack, fake: FakeKube):
    host = stack.start(
        "host", **kube_env(fake, ROOST_KUBE_DRAIN_TIMEOUT_S="1", ROOST_KUBE_REQUEST_TIMEOUT_S="0.5")
    )
    async with host.client(stack.tokens.admin) as http:
        await enabled_worker(stack, http)
        await entry(http, "worker-0", "kubernetes uncordon")
        await fake.stop()
        assert (await act(http, "worker-0", "lock")).status_code == 200
        failed = await entry(http, "worker-0", "kubernetes drain")
        assert failed["reason"] == "drain-unreachable" and "unreachable" in failed["detail"]
        h = (await http.get("/v1/hosts/worker-0")).json()
        assert h["administrative"] == "locked"


async def test_without_a_cluster_locks_work_and_no_drain_is_attempted(stack, fake: FakeKube):
    host = stack.start("host", **FAST)  # no ROOST_KUBE_*: the fake is running but unknown
    async with host.client(stack.tokens.admin) as http:
        await enabled_worker(stack, http)
        r = await act(http, "worker-0", "lock")
        assert r.status_code == 200 and r.json()["administrative"] == "locked"
        assert r.json()["kube"] is None  # nothing requested, so nothing claims a drain
        reasons = [e["reason"] for e in await timeline(http, "worker-0")]
        assert reasons == ["learned", "operator-request", "intest-passed", "operator-request"]
        assert (await http.get("/v1/hosts/worker-0")).json()["kube"] is None
    assert fake.requests == []


async def test_a_failed_host_is_drained_and_uncordoned_once_it_recovered(stack, fake: FakeKube):
    host = stack.start("host", **kube_env(fake))
    bus = await stack.bus()
    assert bus.connection is not None
    rec = record("worker-0", "worker").model_copy(update={"bmc_type": None, "bmc_address": None})
    port = f"127.0.0.1:{host.env['ROOST_HEARTBEAT_PORT']}"

    async def heartbeating() -> HeartbeatSender:
        sender = HeartbeatSender(
            rec.mgmt_mac, str(uuid.uuid4()), addr=port, key=key_of(rec.mgmt_mac)
        )
        sender.start()
        await sender.attach(await HeartbeatBus.shared(bus.connection))  # type: ignore[arg-type]
        return sender

    sender = await heartbeating()
    try:
        async with host.client(stack.tokens.admin) as http:
            await publish(bus, "added", rec)
            await host_where(http, "worker-0", lambda h: True, "learned")
            assert (await act(http, "worker-0", "unlock")).status_code == 200
            await host_where(http, "worker-0", lambda h: h["availability"] == "available", "up")
            fake.add_pod("web-1", "worker-0")

            await sender.stop()  # the host dies: failed, and its pods are moved away
            await host_where(http, "worker-0", lambda h: h["availability"] == "failed", "failed")
            drained = await entry(http, "worker-0", "kubernetes drain")
            assert drained["reason"] == "drain-done", drained
            assert fake.unschedulable("worker-0") and fake.pod_names("worker-0") == set()

            sender = await heartbeating()  # back: in-test, enabled, uncordoned
            await host_where(
                http, "worker-0", lambda h: h["availability"] == "available", "recovered"
            )
            await eventually(
                lambda: asyncio.sleep(0, not fake.unschedulable("worker-0")),
                what="worker-0 uncordoned",
            )
    finally:
        await sender.stop()
