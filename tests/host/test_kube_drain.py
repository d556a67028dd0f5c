"""Cordon, uncordon and drain through the official Kubernetes client against a fake API server.

Real HTTP on 127.0.0.1 between ``kubernetes.client`` and :mod:`tests.host.fake_kube`; no
cluster needed. Every wait is bounded by the drain's own deadline.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from roost_host.kube import NO_CLUSTER, KubeDrainer, KubeSettings
from roost_shared.settings import RoostSettings
from tests.host.fake_kube import FakeKube

TOKEN = "test-token"  # a fake server's token
NODE = "worker-0"


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    kube = FakeKube(token=TOKEN, termination_delay_s=0.1)
    kube.add_node(NODE)
    kube.add_node("worker-1")
    await kube.start()
    yield kube
    await kube.stop()


@pytest.fixture
async def drainer(fake: FakeKube) -> AsyncIterator[KubeDrainer]:
    settings = KubeSettings(kube_api_url=fake.url, kube_token=TOKEN, kube_request_timeout_s=2)
    drainer = KubeDrainer.from_settings(settings, pdb_retry_s=0.2)
    yield drainer
    await drainer.aclose()


def names(refs: list) -> set[str]:
    return {ref.name for ref in refs}


async def test_cordon_and_uncordon_toggle_unschedulable(
    fake: FakeKube, drainer: KubeDrainer
) -> None:
    result = await drainer.cordon(NODE)
    assert (result.status, result.changed, result.unschedulable) == ("done", True, True)
    assert fake.unschedulable(NODE)
    patches = [r for r in fake.requests if r[0] == "PATCH"]
    assert patches == [("PATCH", f"/api/v1/nodes/{NODE}", "application/strategic-merge-patch+json")]

    again = await drainer.cordon(NODE)
    assert again.ok and not again.changed and "already cordoned" in again.message

    result = await drainer.uncordon(NODE)
    assert result.ok and result.changed and result.unschedulable is False
    assert "unschedulable" not in fake.nodes[NODE]["spec"]  # removed, as kubectl uncordon does
    assert not fake.unschedulable("worker-1")


async def test_drain_evicts_pods_and_leaves_daemonset_and_mirror_pods(
    fake: FakeKube, drainer: KubeDrainer
) -> None:
    fake.add_pod("web-1", NODE)
    fake.add_pod("db-0", NODE, namespace="data", owner_kind="StatefulSet")
    fake.add_pod("lonely", NODE, owner_kind=None)
    fake.add_pod("calico-node-x", NODE, namespace="kube-system", owner_kind="DaemonSet")
    fake.add_pod("kube-apiserver-worker-0", NODE, namespace="kube-system", mirror=True)
    fake.add_pod("web-2", "worker-1")

    result = await drainer.drain(NODE, timeout_s=10, grace_s=5)

    assert result.ok and result.status == "drained", result.message
    assert result.cordoned and fake.unschedulable(NODE)
    assert names(result.evicted) == {"web-1", "db-0", "lonely"}
    assert names(result.skipped) == {"calico-node-x", "kube-apiserver-worker-0"}
    assert {r.reason.split(" ")[0] for r in result.skipped} == {"DaemonSet-managed", "mirror"}
    assert result.left == [] and result.blocked_by_pdb == [] and not result.timed_out
    assert fake.pod_names(NODE) == {"calico-node-x", "kube-apiserver-worker-0"}
    assert fake.pod_names("worker-1") == {"web-2"}
    assert {e["apiVersion"] for e in fake.evictions} == {"policy/v1"}
    assert {e["deleteOptions"]["gracePeriodSeconds"] for e in fake.evictions} == {5}
    assert "3 evicted, 2 skipped" in result.message
    assert result.duration_s < 5


async def test_pdb_blocked_pod_is_reported_and_evicted_when_the_budget_frees(
    fake: FakeKube, drainer: KubeDrainer
) -> None:
    fake.add_pod("api-0", NODE, labels={"app": "api"})
    fake.add_pod("web-1", NODE)
    pdb = fake.add_pdb("api-pdb", {"app": "api"}, release_after=3)

    result = await drainer.drain(NODE, timeout_s=10)

    assert result.status == "drained", result.message
    assert names(result.evicted) == {"api-0", "web-1"}
    assert names(result.blocked_by_pdb) == {"api-0"}
    blocked = result.blocked_by_pdb[0]
    assert "disruption budget" in blocked.reason and "api-pdb" in blocked.reason
    assert "(4 attempts)" in blocked.reason
    assert pdb.refused == 3
    assert "1 blocked by a PodDisruptionBudget" in result.message
    assert fake.pod_names(NODE) == set()


async def test_pdb_that_never_frees_times_out_with_a_clear_result(
    fake: FakeKube, drainer: KubeDrainer
) -> None:
    fake.add_pod("api-0", NODE, labels={"app": "api"})
    fake.add_pod("web-1", NODE)
    fake.add_pdb("api-pdb", {"app": "api"})

    started = time.monotonic()
    result = await drainer.drain(NODE, timeout_s=1.5)
    elapsed = time.monotonic() - started

    assert elapsed < 2.5
    assert not result.ok and result.status == "timed_out" and result.timed_out
    assert result.cordoned and fake.unschedulable(NODE)
    assert names(result.evicted) == {"web-1"}
    assert names(result.left) == {"api-0"} and names(result.blocked_by_pdb) == {"api-0"}
    assert result.left[0].reason.startswith("blocked by PodDisruptionBudget")
    assert "not drained within 1.5 s" in result.message and "api-0" in result.message
    assert fake.pod_names(NODE) == {"api-0"}


async def test_pod_slow_to_terminate_is_left_when_the_deadline_passes(
    fake: FakeKube, drainer: KubeDrainer
) -> None:
    fake.add_pod("slow", NODE, termination_delay_s=30)
    fake.add_pod("quick", NODE)

    result = await drainer.drain(NODE, timeout_s=1)

    assert result.status == "timed_out" and result.timed_out
    assert names(result.evicted) == {"quick"}
    assert [(p.name, p.reason) for p in result.left] == [("slow", "evicted, still terminating")]
    assert fake.pods[("default", "slow")]["metadata"]["deletionTimestamp"]


async def test_unknown_node_gives_a_clear_result(fake: FakeKube, drainer: KubeDrainer) -> None:
    drained = await drainer.drain("worker-9", timeout_s=5)
    assert drained.status == "not_found" and not drained.ok and not drained.cordoned
    assert "node worker-9 not found" in drained.message
    for result in (await drainer.cordon("worker-9"), await drainer.uncordon("worker-9")):
        assert result.status == "not_found" and "worker-9 not found" in result.message


async def test_api_server_down_gives_a_clear_result_within_the_timeout(
    fake: FakeKube, drainer: KubeDrainer
) -> None:
    fake.add_pod("web-1", NODE)
    await fake.stop()

    started = time.monotonic()
    result = await drainer.drain(NODE, timeout_s=1.5)
    assert time.monotonic() - started < 2.5
    assert result.status == "unreachable" and not result.ok and not result.cordoned
    assert "unreachable" in result.message and "Connection refused" in result.message
    assert fake.url.removeprefix("http://") in result.message

    started = time.monotonic()
    cordon = await drainer.cordon(NODE, timeout_s=1)
    assert time.monotonic() - started < 2 and cordon.status == "unreachable"


async def test_closed_port_gives_a_clear_result_within_the_timeout() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    drainer = KubeDrainer.from_settings(KubeSettings(kube_api_url=f"http://127.0.0.1:{port}"))
    started = time.monotonic()
    result = await drainer.drain(NODE, timeout_s=1)
    assert time.monotonic() - started < 2
    assert result.status == "unreachable" and "Connection refused" in result.message
    await drainer.aclose()


async def test_wrong_token_is_an_error_not_an_exception(fake: FakeKube) -> None:
    drainer = KubeDrainer.from_settings(KubeSettings(kube_api_url=fake.url, kube_token="wrong"))
    result = await drainer.drain(NODE, timeout_s=5)
    assert result.status == "error" and "HTTP 401" in result.message
    assert not fake.unschedulable(NODE)
    await drainer.aclose()


async def test_disabled_drainer_says_no_cluster_is_configured() -> None:
    for drainer in (KubeDrainer.disabled(), KubeDrainer.from_settings(KubeSettings())):
        assert not drainer.enabled
        drained = await drainer.drain(NODE, timeout_s=1)
        assert drained.ok and drained.status == "disabled" and NO_CLUSTER in drained.message
        for result in (await drainer.cordon(NODE), await drainer.uncordon(NODE)):
            assert result.ok and result.status == "disabled" and NO_CLUSTER in result.message
        await drainer.aclose()


async def test_settings_from_environment_and_kubeconfig(
    fake: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class HostLikeSettings(RoostSettings, KubeSettings):
        """How the host service embeds the Kubernetes settings."""

    monkeypatch.setenv("ROOST_KUBE_API_URL", fake.url)
    monkeypatch.setenv("ROOST_KUBE_TOKEN", TOKEN)
    monkeypatch.setenv("ROOST_KUBE_NODE_NAMES", '{"controller-0": "worker-0"}')
    settings = HostLikeSettings()
    drainer = KubeDrainer.from_settings(settings)
    assert drainer.enabled and drainer.node_for("controller-0") == NODE
    assert drainer.node_for("worker-1") == "worker-1"
    assert (await drainer.cordon(drainer.node_for("controller-0"))).changed
    await drainer.aclose()

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "edge", "cluster": {"server": fake.url}}],
                "users": [{"name": "roost", "user": {"token": TOKEN}}],
                "contexts": [{"name": "edge", "context": {"cluster": "edge", "user": "roost"}}],
                "current-context": "edge",
            }
        )
    )
    drainer = KubeDrainer.from_settings(KubeSettings(kube_config=kubeconfig))
    result = await drainer.uncordon(NODE)
    assert result.ok and result.changed and not fake.unschedulable(NODE)
    assert str(kubeconfig) in drainer.where
    await drainer.aclose()
