"""The BMC simulator in this process (BmcFleet), driven by ipmitool -I lanplus.

No pyghmi *client* here: it would share pyghmi's global loop with the simulator (see
roost_sim.bmc_session); tests/sim/test_bmc_pyghmi.py runs the simulator in a child process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from roost_sim.bmc import BmcFleet, PowerStateError, SimBmc
from roost_sim.ports import udp_port_block
from tests.sim.conftest import PASSWORD, USER, ipmitool

log = logging.getLogger(__name__)
NO_SESSION = "Unable to establish IPMI v2 / RMCP+ session"


@pytest.fixture(scope="module")
def fleet() -> Iterator[BmcFleet]:
    # Readiness first: once in a full-suite run the first fleet's BMCs never answered while a
    # second fleet made in the same process did (cause not found; see the notes). A fleet that
    # does not answer is replaced on a fresh port block rather than failing every test after.
    for attempt in range(3):
        f = BmcFleet.create(4, udp_port_block(4), USER, PASSWORD)
        f.__enter__()
        if all(ipmitool(p, "chassis", "power", "status").returncode == 0 for p in f.ports):
            break
        log.warning("simulated BMCs on %s did not answer (attempt %d); new ports", f.ports, attempt)
        f.__exit__(None, None, None)
    else:
        pytest.fail("simulated BMCs never answered ipmitool on three port blocks")
    try:
        yield f
    finally:
        f.__exit__(None, None, None)


@pytest.fixture
def bmc(fleet: BmcFleet) -> Iterator[SimBmc]:
    """A BMC powered on, with no faults and a fresh hook recorder in ``bmc.seen``."""
    b = fleet[fleet.ports[0]]
    b.set_faults(unreachable=False, slow_ms=0, wrong_password=False)
    b.on_power = None
    b.set_power("on")
    seen: list[str] = []
    b.on_power = seen.append
    b.seen = seen  # type: ignore[attr-defined]
    yield b
    b.on_power = None
    b.set_faults(unreachable=False, slow_ms=0, wrong_password=False)


def test_power_status_off_on_fire_the_hook(bmc: SimBmc) -> None:
    r = ipmitool(bmc.port, "chassis", "power", "status")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Chassis Power is on"

    r = ipmitool(bmc.port, "chassis", "power", "off")
    assert r.returncode == 0, r.stderr
    # The hook runs before the BMC answers, so it has fired when ipmitool returns.
    assert bmc.seen == ["off"] and bmc.power == "off"
    assert ipmitool(bmc.port, "chassis", "power", "status").stdout.strip() == "Chassis Power is off"

    # Powering off what is off changes nothing and calls no hook.
    assert ipmitool(bmc.port, "chassis", "power", "off").returncode == 0
    assert bmc.seen == ["off"]

    r = ipmitool(bmc.port, "chassis", "power", "on")
    assert r.returncode == 0, r.stderr
    assert bmc.seen == ["off", "on"]
    assert ipmitool(bmc.port, "chassis", "power", "status").stdout.strip() == "Chassis Power is on"


def test_cycle_and_reset_call_the_hook_off_then_on(bmc: SimBmc) -> None:
    assert ipmitool(bmc.port, "chassis", "power", "cycle").returncode == 0
    assert ipmitool(bmc.port, "chassis", "power", "reset").returncode == 0
    assert bmc.seen == ["off", "on", "off", "on"]
    assert bmc.power == "on"

    bmc.set_power("off")
    with pytest.raises(PowerStateError):
        bmc.set_power("reset")
    r = ipmitool(bmc.port, "chassis", "power", "cycle")
    assert r.returncode != 0  # "not supported in present state", as real BMCs answer
    assert bmc.seen == ["off", "on", "off", "on", "off"]


@pytest.mark.parametrize("suite", [3, 17])
def test_both_cipher_suites(bmc: SimBmc, suite: int) -> None:
    r = ipmitool(bmc.port, "chassis", "power", "status", suite=suite)
    assert r.returncode == 0, r.stderr
    assert "Chassis Power is on" in r.stdout


def test_boot_device(bmc: SimBmc) -> None:
    assert ipmitool(bmc.port, "chassis", "bootdev", "pxe").returncode == 0
    assert bmc.boot_device == "network"
    r = ipmitool(bmc.port, "chassis", "bootparam", "get", "5")
    assert r.returncode == 0, r.stderr
    assert "Force PXE" in r.stdout


def test_sensor_list_shows_the_values_set(bmc: SimBmc) -> None:
    bmc.set_sensor("CPU Temp", value=93)  # above ucr 90
    bmc.set_sensor("FAN1", value=3000, thresholds={"lnc": 3500})  # below the new lnc
    bmc.set_sensor("12V", value=12.06)

    r = ipmitool(bmc.port, "sensor", "list")
    assert r.returncode == 0, r.stderr
    rows = {
        cells[0]: cells
        for cells in ([c.strip() for c in line.split("|")] for line in r.stdout.splitlines())
    }
    assert set(rows) == {s.name for s in bmc.sensors}
    cpu = rows["CPU Temp"]
    assert float(cpu[1]) == 93 and cpu[2] == "degrees C" and cpu[3] == "cr"
    assert [float(v) for v in cpu[7:10]] == [80, 90, 95]  # unc ucr unr
    fan = rows["FAN1"]
    assert float(fan[1]) == 3000 and fan[2] == "RPM" and fan[3] == "nc"
    assert float(fan[6]) == 3500  # lnc
    assert float(rows["12V"][1]) == pytest.approx(12.06) and rows["12V"][3] == "ok"

    # A threshold set by a client (Set Sensor Thresholds) is what the BMC then reports.
    r = ipmitool(bmc.port, "sensor", "thresh", "CPU Temp", "ucr", "94")
    assert r.returncode == 0, r.stderr + r.stdout
    assert bmc.sensor("CPU Temp").thresholds["ucr"] == 94
    assert bmc.sensor("CPU Temp").status() == "nc"
    bmc.set_sensor("CPU Temp", value=45, thresholds={"ucr": 90})
    bmc.set_sensor("FAN1", value=4800, thresholds={"lnc": 1000})
    bmc.set_sensor("12V", value=12.0)


def test_wrong_password_is_an_auth_error(bmc: SimBmc) -> None:
    r = ipmitool(bmc.port, "chassis", "power", "status", password="not-the-password")
    assert r.returncode != 0 and NO_SESSION in r.stderr

    bmc.set_faults(wrong_password=True)  # refuses even the right password
    r = ipmitool(bmc.port, "chassis", "power", "status")
    assert r.returncode != 0 and NO_SESSION in r.stderr
    r = ipmitool(bmc.port, "-v", "chassis", "power", "status")
    assert "RAKP 2 HMAC is invalid" in r.stderr

    bmc.set_faults(wrong_password=False)
    assert ipmitool(bmc.port, "chassis", "power", "status").returncode == 0


def test_unknown_user_is_refused(bmc: SimBmc) -> None:
    r = ipmitool(bmc.port, "-v", "chassis", "power", "status", user="mallory")
    assert r.returncode != 0 and "unauthorized name" in r.stderr


def test_unreachable_times_out(bmc: SimBmc, fleet: BmcFleet) -> None:
    bmc.set_faults(unreachable=True)
    started = time.monotonic()
    r = ipmitool(bmc.port, "chassis", "power", "status")  # -N 1 -R 1
    took = time.monotonic() - started
    assert r.returncode != 0 and NO_SESSION in r.stderr
    assert bmc.serversocket.dropped > 0
    log.info("ipmitool gave up on an unreachable BMC after %.2f s", took)
    # The other BMCs of the process do not notice.
    other = fleet.ports[1]
    assert ipmitool(other, "chassis", "power", "status").returncode == 0

    bmc.set_faults(unreachable=False)
    assert ipmitool(bmc.port, "chassis", "power", "status").returncode == 0


def test_slow_answers_after_the_delay(bmc: SimBmc, fleet: BmcFleet) -> None:
    quick_started = time.monotonic()
    assert ipmitool(bmc.port, "chassis", "power", "status").returncode == 0
    quick = time.monotonic() - quick_started

    bmc.set_faults(slow_ms=150)
    started = time.monotonic()
    r = ipmitool(bmc.port, "chassis", "power", "status", timeout_s=2)
    slow = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    assert "Chassis Power is on" in r.stdout
    # A login is several round trips (auth caps, cipher suites, open session, RAKP 1 and 3,
    # privilege), each answered 150 ms late.
    assert slow >= 5 * 0.150
    log.info("power status: %.3f s normally, %.3f s with 150 ms answers", quick, slow)

    # A slow BMC does not slow its neighbours (answers are delayed off the receive loop).
    started = time.monotonic()
    assert ipmitool(fleet.ports[2], "chassis", "power", "status").returncode == 0
    assert time.monotonic() - started < slow


def test_hundred_bmcs_in_one_process_answer_power_status() -> None:
    count = 100
    first = udp_port_block(count)
    with BmcFleet.create(count, first, USER, PASSWORD) as many:
        many[first + 7].set_power("off")
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(
                pool.map(lambda port: ipmitool(port, "chassis", "power", "status"), many.ports)
            )
        took = time.monotonic() - started
    answers = [r.stdout.strip() for r in results]
    failed = [(p, r.stderr) for p, r in zip(many.ports, results, strict=True) if r.returncode]
    assert not failed
    assert answers.count("Chassis Power is on") == count - 1
    assert answers[7] == "Chassis Power is off"
    msg = f"{count} BMCs in one process: ipmitool power status of all took {took:.2f} s (8 at once)"
    log.info(msg)
    print(msg)
