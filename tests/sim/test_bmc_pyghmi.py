"""``python -m roost_sim.bmc serve`` in a child process, driven by pyghmi's client (as the host
service will use it) and by the simulator's HTTP control channel."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyghmi.exceptions import IpmiException
from pyghmi.ipmi.command import Command

from tests.sim.conftest import PASSWORD, USER, SimProcess, ipmitool, start_sim

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    s = start_sim(6, log_path=tmp_path_factory.mktemp("bmc") / "bmc.log")
    yield s
    s.stop()


def client(port: int, password: str = PASSWORD) -> Command:
    # Credentials as bytes: with str, pyghmi 1.6.19 never clears its "initting" entry (str key
    # in, bytes key out) and a second Command for the same BMC waits forever (also against
    # real BMCs). Bytes keep the keys equal, and the second Command reuses the session.
    return Command(bmc="127.0.0.1", port=port, userid=USER.encode(), password=password.encode())


def test_power_with_pyghmi_and_the_event_log(sim: SimProcess) -> None:
    port = sim.ports[0]
    last = sim.get("/events")["last"]  # type: ignore[index]
    ipmi = client(port)  # pyghmi proposes cipher suite 17 (SHA-256) and gets it
    assert ipmi.get_power() == {"powerstate": "on"}

    ipmi.set_power("off")
    assert ipmi.get_power() == {"powerstate": "off"}
    assert sim.get(f"/bmcs/{port}")["power"] == "off"  # type: ignore[index]
    ipmi.set_power("on")
    assert ipmi.get_power() == {"powerstate": "on"}
    ipmi.set_power("reset")

    events = sim.get(f"/events?after={last}")["events"]  # type: ignore[index]
    assert [(e["port"], e["state"]) for e in events] == [
        (port, "off"),
        (port, "on"),
        (port, "off"),
        (port, "on"),
    ]


def test_power_through_the_control_channel(sim: SimProcess) -> None:
    port = sim.ports[1]
    sim.post(f"/bmcs/{port}/power", {"action": "off"})
    assert client(port).get_power() == {"powerstate": "off"}
    r = ipmitool(port, "chassis", "power", "status")
    assert r.stdout.strip() == "Chassis Power is off"
    sim.post(f"/bmcs/{port}/power", {"action": "on"})
    assert client(port).get_power() == {"powerstate": "on"}
    assert sim.control.post(f"/bmcs/{port}/power", json={"action": "melt"}).status_code == 400
    assert sim.control.get("/bmcs/1").status_code == 404


def test_boot_device_with_pyghmi(sim: SimProcess) -> None:
    ipmi = client(sim.ports[1])
    ipmi.set_bootdev("network")
    assert ipmi.get_bootdev()["bootdev"] == "network"
    ipmi.set_bootdev("hd")
    assert ipmi.get_bootdev()["bootdev"] == "hd"


def test_sensors_with_pyghmi(sim: SimProcess) -> None:
    port = sim.ports[2]
    sim.post(f"/bmcs/{port}/sensors/CPU Temp", {"value": 91})
    sim.post(f"/bmcs/{port}/sensors/FAN1", {"value": 2100})
    sim.post(f"/bmcs/{port}/sensors/12V", {"value": 11.94, "thresholds": {"lnc": 12.0}})

    readings = {r.name: r for r in client(port).get_sensor_data()}
    assert set(readings) == {"CPU Temp", "Inlet Temp", "FAN1", "12V", "3.3V"}
    cpu = readings["CPU Temp"]
    assert cpu.value == 91 and cpu.units == "°C" and cpu.type == "Temperature"
    assert "upper critical threshold" in cpu.states  # 91 >= ucr 90
    assert readings["Inlet Temp"].value == 24 and not readings["Inlet Temp"].states
    assert readings["FAN1"].value == 2100 and readings["FAN1"].units == "RPM"
    assert readings["12V"].value == pytest.approx(11.94)
    assert readings["12V"].states == ["lower non-critical threshold"]
    assert readings["3.3V"].value == pytest.approx(3.3)

    # ipmitool reads the same thing.
    r = ipmitool(port, "sensor", "list")
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("CPU Temp") and "| cr " in line for line in r.stdout.splitlines())


def test_wrong_password_raises(sim: SimProcess) -> None:
    port = sim.ports[3]
    with pytest.raises(IpmiException, match="Incorrect password"):
        client(port, password="not-the-password").get_power()
    sim.post(f"/bmcs/{port}/faults", {"wrong_password": True})
    try:
        with pytest.raises(IpmiException, match="Incorrect password"):
            client(port).get_power()
    finally:
        sim.post(f"/bmcs/{port}/faults", {"wrong_password": False})
    assert client(port).get_power() == {"powerstate": "on"}


def test_unreachable_raises_after_the_client_timeout(sim: SimProcess) -> None:
    port = sim.ports[4]
    sim.post(f"/bmcs/{port}/faults", {"unreachable": True})
    started = time.monotonic()
    try:
        with pytest.raises(IpmiException):
            client(port).get_power()
    finally:
        sim.post(f"/bmcs/{port}/faults", {"unreachable": False})
    log.info("pyghmi gave up on an unreachable BMC after %.2f s", time.monotonic() - started)
    assert client(port).get_power() == {"powerstate": "on"}


def test_slow_answers_after_the_delay(sim: SimProcess) -> None:
    port = sim.ports[5]
    sim.post(f"/bmcs/{port}/faults", {"slow_ms": 200})
    try:
        started = time.monotonic()
        ipmi = client(port)  # login: auth caps, open session, RAKP 1 and 3, privilege
        login = time.monotonic() - started
        started = time.monotonic()
        assert ipmi.get_power() == {"powerstate": "on"}
        one = time.monotonic() - started
    finally:
        sim.post(f"/bmcs/{port}/faults", {"slow_ms": 0})
    log.info("pyghmi with 200 ms answers: login %.2f s, get_power %.2f s", login, one)
    assert login >= 4 * 0.2
    assert one >= 0.2


def test_pyghmi_falls_back_to_suite_3(tmp_path: Path) -> None:
    """A BMC serving only suite 3 (like pyghmi's own server) refuses 17; pyghmi retries with 3."""
    only3 = start_sim(1, "--cipher-suites", "3", log_path=tmp_path / "bmc.log")
    try:
        port = only3.ports[0]
        # What is under test is the simulator refusing 17 and serving 3 (ipmitool proves both
        # deterministically). pyghmi's own fallback from 17 to 3 rides on its login timeouts and
        # once in ~20 runs did not complete on the first Command, so it gets a second chance.
        assert ipmitool(port, "chassis", "power", "status", suite=17).returncode != 0
        assert ipmitool(port, "chassis", "power", "status").returncode == 0  # picks 3
        assert _power_with_one_retry(port) == {"powerstate": "on"}
    finally:
        only3.stop()


def _power_with_one_retry(port: int) -> dict:
    try:
        return client(port).get_power()
    except IpmiException:
        return client(port).get_power()
