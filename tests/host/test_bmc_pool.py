"""``roost_host.bmc.BmcPool`` against simulated BMCs (in a child process: pyghmi's client and its
BMC server must not share a process): power, boot device, sensors, wrong credentials (never
retried), an unreachable BMC (retried, then the breaker opens, fails fast, and half-open
recovers), and session reuse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from roost_host.bmc import BmcError, BmcPool, BmcTarget, target_of
from roost_shared.metrics import Metrics
from roost_shared.vault import Vault
from tests.sim.conftest import PASSWORD, USER, SimProcess, start_sim
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    s = start_sim(4, log_path=tmp_path_factory.mktemp("bmc") / "bmc.log")
    asyncio.run(_answering(s))
    yield s
    s.stop()


async def _answering(sim: SimProcess) -> None:
    """Every simulated BMC answers before the tests time their calls: on a loaded machine (the
    teardown of a large test before this module) the first answers can take seconds."""
    pool = BmcPool(
        max_total=4,
        timeout_s=5.0,
        retries=0,
        breaker_failures=1000,
        breaker_reset_s=0.1,
        metrics=Metrics("warm-up"),
    )
    try:
        for port in sim.ports:

            async def answers(port: int = port) -> bool:
                try:
                    return await pool.power_state(target(port)) in ("on", "off")
                except BmcError:
                    return False

            await eventually(answers, timeout=60, what=f"BMC {port} answering")
    finally:
        await pool.aclose()


@pytest.fixture
async def pool_and_metrics() -> AsyncIterator[tuple[BmcPool, Metrics]]:
    metrics = Metrics("test")
    pool = BmcPool(
        max_total=8,
        timeout_s=1.0,
        retries=2,
        breaker_failures=2,
        breaker_reset_s=1.0,
        metrics=metrics,
    )
    yield pool, metrics
    await pool.aclose()


def target(port: int, password: str = PASSWORD) -> BmcTarget:
    return BmcTarget(address="127.0.0.1", port=port, username=USER, password=password.encode())


def attempts(metrics: Metrics, op: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "roost_bmc_attempts_total", {"op": op, "outcome": outcome}
    )
    return value or 0.0


async def test_power_boot_device_and_sensors(sim: SimProcess, pool_and_metrics) -> None:
    pool, metrics = pool_and_metrics
    port = sim.ports[0]
    t = target(port)
    assert "s3cret" not in repr(t) and t.key == f"127.0.0.1:{port}"
    assert await pool.power_state(t) == "on"
    assert await pool.set_power(t, "off") == "off"
    assert sim.get(f"/bmcs/{port}")["power"] == "off"  # type: ignore[index]
    assert await pool.power_state(t) == "off"
    assert await pool.set_power(t, "on") == "on"
    last = sim.get("/events")["last"]  # type: ignore[index]
    assert await pool.set_power(t, "cycle") == "on"
    events = sim.get(f"/events?after={last}")["events"]  # type: ignore[index]
    assert [e["state"] for e in events] == ["off", "on"]
    assert await pool.set_power(t, "reset") == "on"
    await pool.set_boot_device(t, "network")
    assert sim.get(f"/bmcs/{port}")["boot_device"] in ("network", "pxe")  # type: ignore[index]
    with pytest.raises(ValueError):
        await pool.set_power(t, "melt")

    sim.post(f"/bmcs/{port}/sensors/CPU Temp", {"value": 93, "thresholds": {"ucr": 90}})
    readings = {r.name: r for r in await pool.sensors(t)}
    assert set(readings) == {"CPU Temp", "Inlet Temp", "FAN1", "12V", "3.3V"}
    assert readings["CPU Temp"].value == 93 and readings["CPU Temp"].health == "critical"
    assert readings["Inlet Temp"].health == "ok" and readings["FAN1"].units == "RPM"
    sim.post(f"/bmcs/{port}/sensors/CPU Temp", {"value": 45})
    assert pool.breaker(t) == "closed"
    # One login, then every call rode the same session: one attempt per call, all ok.
    assert attempts(metrics, "power_state", "ok") == 2
    assert sum(attempts(metrics, op, "timeout") for op in ("power_state", "sensors")) == 0


async def test_wrong_password_is_auth_and_never_retried(sim: SimProcess, pool_and_metrics):
    pool, metrics = pool_and_metrics
    t = target(sim.ports[1], password="not-the-password")
    with pytest.raises(BmcError) as caught:
        await pool.power_state(t)
    assert caught.value.kind == "auth" and "authentication failed" in str(caught.value)
    assert "not-the-password" not in str(caught.value)
    assert attempts(metrics, "power_state", "auth") == 1  # no retry: accounts lock out
    # The BMC refusing a right password (changed on the BMC) is auth as well.
    sim.post(f"/bmcs/{sim.ports[1]}/faults", {"wrong_password": True})
    try:
        with pytest.raises(BmcError, match="authentication"):
            await pool.power_state(target(sim.ports[1]))
    finally:
        sim.post(f"/bmcs/{sim.ports[1]}/faults", {"wrong_password": False})
    assert attempts(metrics, "power_state", "auth") == 2
    # New credentials start afresh (the breaker forgets the old ones' failures).
    assert await pool.power_state(target(sim.ports[1])) == "on"


async def test_unreachable_retries_then_breaker_opens_and_half_open_recovers(
    sim: SimProcess, pool_and_metrics
) -> None:
    pool, metrics = pool_and_metrics
    port = sim.ports[2]
    t = target(port)
    assert await pool.power_state(t) == "on"  # a live session first
    sim.post(f"/bmcs/{port}/faults", {"unreachable": True})
    try:
        for _ in range(2):  # breaker_failures = 2
            with pytest.raises(BmcError) as caught:
                await pool.power_state(t)
            assert caught.value.kind in ("unreachable", "timeout")
        failed = sum(attempts(metrics, "power_state", k) for k in ("unreachable", "timeout"))
        assert failed == 2 * 3  # each call: one attempt and two retries
        assert pool.breaker(t) == "open"
        started = time.monotonic()
        with pytest.raises(BmcError) as caught:
            await pool.power_state(t)
        assert caught.value.kind == "circuit-open" and time.monotonic() - started < 0.1
        assert metrics.registry.get_sample_value("roost_bmc_breaker_opens_total") == 1
    finally:
        sim.post(f"/bmcs/{port}/faults", {"unreachable": False})

    async def half_open() -> bool:
        return pool.breaker(t) == "half-open"

    await eventually(half_open, timeout=5, what="the breaker half-opens after its reset time")

    async def recovered() -> bool:
        # The trial may still find the slot held by a call pyghmi is winding down.
        try:
            return await pool.power_state(t) == "on"
        except BmcError:
            return False

    await eventually(recovered, timeout=15, interval=0.3, what="a trial call closes the breaker")
    assert pool.breaker(t) == "closed"


def test_target_of_decrypts_only_with_the_site_key(tmp_path: Path) -> None:
    vault = Vault.from_settings(None, tmp_path)
    doc = {
        "bmc_type": "ipmi",
        "bmc_address": "127.0.0.1",
        "bmc_username": "admin",
        "bmc_password_enc": vault.encrypt("pw"),
    }
    t = target_of(doc, vault)
    assert t is not None and t.port == 623 and t.password == b"pw"
    assert target_of({**doc, "bmc_port": 16231}, vault).port == 16231  # type: ignore[union-attr]
    assert target_of({**doc, "bmc_type": "redfish"}, vault) is None
    assert target_of({"bmc_type": "none"}, vault) is None
    with pytest.raises(BmcError) as caught:
        target_of(doc, Vault(Fernet.generate_key()))
    assert caught.value.kind == "auth"


async def test_bulk_read_answers_per_bmc_and_feeds_the_breakers(sim: SimProcess, pool_and_metrics):
    pool, _ = pool_and_metrics
    ok_a, ok_b, wrong, silent = (target(p) for p in sim.ports)
    wrong = target(sim.ports[2], password="not-the-password")
    sim.post(f"/bmcs/{sim.ports[3]}/faults", {"unreachable": True})
    try:
        started = time.monotonic()
        got = await pool.power_states([ok_a, ok_b, wrong, silent], timeout_s=2.0)
        assert time.monotonic() - started < 4.0  # bounded by its timeout, not by retries
        assert got[ok_a.key] == "on" and got[ok_b.key] == "on"
        assert isinstance(got[wrong.key], BmcError) and got[wrong.key].kind == "auth"
        assert isinstance(got[silent.key], BmcError)
        assert got[silent.key].kind in ("unreachable", "timeout")
        # Single calls and later bulk reads go on working beside each other.
        assert await pool.power_state(ok_a) == "on"
        again = await pool.power_states([ok_a, ok_b], timeout_s=2.0)
        assert again == {ok_a.key: "on", ok_b.key: "on"}
        # Breakers count bulk failures like single ones (breaker_failures = 2 here).
        await pool.power_states([silent], timeout_s=1.0)
        assert pool.breaker(silent) == "open"
        got = await pool.power_states([silent], timeout_s=1.0)
        assert got[silent.key].kind == "circuit-open"  # type: ignore[union-attr]
    finally:
        sim.post(f"/bmcs/{sim.ports[3]}/faults", {"unreachable": False})
