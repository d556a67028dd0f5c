"""The host service reading BMCs as a real process, against simulated BMCs in a child process:
sensors and BMC status through the API and the CLI, 200.007 for a sensor over threshold and
200.010 for an unreachable BMC or refused credentials (raised and cleared on the bus, once),
host states untouched, and the password never returned."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.host.test_host_service import record
from tests.sim.conftest import PASSWORD, USER, SimProcess, start_sim
from tests.support.cli import clean_env, run_cli
from tests.support.events import Listener
from tests.support.hosts import publish, states
from tests.support.waiting import eventually

KEY = Fernet.generate_key()
FAST_BMC = {
    "ROOST_SECRET_KEY": KEY.decode(),
    "ROOST_SENSOR_POLL_S": "0.3",
    "ROOST_BMC_TIMEOUT_S": "1.5",
    "ROOST_BMC_RETRIES": "0",
    "ROOST_BMC_BREAKER_FAILURES": "2",
    "ROOST_BMC_BREAKER_RESET_S": "0.5",
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    s = start_sim(2, log_path=tmp_path_factory.mktemp("bmc") / "bmc.log")
    yield s
    s.stop()


def with_bmc(hostname: str, port: int, password: str = PASSWORD):
    return record(
        hostname,
        "worker",
        bmc_type="ipmi",
        bmc_address="127.0.0.1",
        bmc_port=port,
        bmc_username=USER,
        bmc_password_enc=Fernet(KEY).encrypt(password.encode()).decode(),
    )


def alarms_of(listener: Listener, verb: str, alarm_id: str, entity: str) -> list[dict]:
    return [
        e
        for e in listener.got
        if e["type"] == f"fault.alarm.{verb}"
        and e["data"].get("alarm_id") == alarm_id
        and e["data"]["entity_instance_id"] == entity
    ]


async def test_sensors_bmc_status_and_alarms(stack, sim: SimProcess, tmp_path: Path) -> None:
    host = stack.start("host", **FAST_BMC)
    bus = await stack.bus()
    events = await Listener.on(bus, "fault.alarm.*")
    w0, w1 = with_bmc("worker-0", sim.ports[0]), with_bmc("worker-1", sim.ports[1])
    plain = record("worker-2", "worker", bmc_type="none", bmc_address=None)
    for r in (w0, w1, plain):
        await publish(bus, "added", r)

    async with (
        host.client(stack.tokens.reader) as http,
    ):

        async def bmc_of(ref: str, check) -> dict:
            async def probe():
                r = await http.get(f"/v1/hosts/{ref}/bmc")
                return r.json() if r.status_code == 200 and check(r.json()) else None

            return await eventually(probe, timeout=15, what=f"{ref}'s BMC status")

        b = await bmc_of("worker-0", lambda b: b["reachable"] is True)
        assert b["bmc_type"] == "ipmi" and b["address"] == "127.0.0.1"
        assert b["port"] == sim.ports[0] and b["username"] == USER
        assert b["password_set"] is True and b["power_state"] == "on"
        assert b["breaker"] == "closed" and b["last_error"] is None and b["polled_at"]
        r = await http.get("/v1/hosts/worker-0/sensors")
        assert r.status_code == 200
        sensors = {s["name"]: s for s in r.json()["sensors"]}
        assert set(sensors) == {"CPU Temp", "Inlet Temp", "FAN1", "12V", "3.3V"}
        assert all(s["health"] == "ok" for s in sensors.values())
        for path in ("/v1/hosts/worker-0/bmc", "/v1/hosts/worker-0", "/v1/hosts"):
            text = (await http.get(path)).text
            assert PASSWORD not in text and w0.bmc_password_enc not in text
            assert "bmc_password_enc" not in text
        # No BMC: 200 with bmc_type none and no sensors; unknown host: 404 problem.
        r = await http.get("/v1/hosts/worker-2/bmc")
        assert r.status_code == 200 and r.json()["bmc_type"] == "none"
        r = await http.get("/v1/hosts/worker-2/sensors")
        assert r.json()["sensors"] == [] and r.json()["bmc_type"] == "none"
        r = await http.get("/v1/hosts/worker-9/sensors")
        assert r.status_code == 404
        assert r.headers["content-type"].startswith("application/problem+json")
        assert (await http.get("/v1/hosts/worker-9/bmc")).status_code == 404

        # A sensor over its critical threshold: 200.007 major, then cleared when back.
        sim.post(f"/bmcs/{sim.ports[0]}/sensors/CPU Temp", {"value": 93, "thresholds": {"ucr": 90}})
        entity = "host=worker-0.sensor=CPU_Temp"
        raised = await events.wait_for(
            "200.007 raised", type="fault.alarm.set", alarm_id="200.007", entity_instance_id=entity
        )
        assert raised["data"]["severity"] == "major"
        assert "CPU Temp" in raised["data"]["reason_text"]
        r = await http.get("/v1/hosts/worker-0/sensors")
        assert {s["name"]: s["health"] for s in r.json()["sensors"]}["CPU Temp"] == "critical"

        # The CLI shows it (one table, no colour), and the BMC status.
        env = clean_env(tmp_path, ROOST_TOKEN=stack.tokens.reader, ROOST_HOST_URL=host.url)
        run = await run_cli(["host-sensor-list", "worker-0"], env)
        assert run.code == 0, run.err
        line = next(x for x in run.out.splitlines() if "CPU Temp" in x)
        assert "Temperature" in line and "93" in line and "critical" in line
        assert "\x1b[" not in run.out
        run = await run_cli(["host-bmc-show", "worker-0"], env)
        assert run.code == 0 and "password_set" in run.out and PASSWORD not in run.out
        run = await run_cli(["host-sensor-list", "worker-9"], env)
        assert run.code != 0 and "404" in run.error_line

        sim.post(f"/bmcs/{sim.ports[0]}/sensors/CPU Temp", {"value": 45})
        await events.wait_for(
            "200.007 cleared",
            type="fault.alarm.clear",
            alarm_id="200.007",
            entity_instance_id=entity,
        )
        assert len(alarms_of(events, "set", "200.007", entity)) == 1  # raised once, not per poll

        # The BMC unreachable while the host is fine: 200.010, host states unchanged.
        before = states((await http.get("/v1/hosts/worker-1")).json())
        seen = len(events.got)
        sim.post(f"/bmcs/{sim.ports[1]}/faults", {"unreachable": True})
        try:

            async def access_alarm():
                return next(
                    (
                        e
                        for e in events.got[seen:]
                        if e["type"] == "fault.alarm.set"
                        and e["data"].get("alarm_id") == "200.010"
                        and e["data"]["entity_instance_id"] == "host=worker-1"
                    ),
                    None,
                )

            raised = await eventually(access_alarm, timeout=15, what="200.010 raised")
            assert "unreachable" in raised["data"]["reason_text"]
            assert raised["data"]["severity"] == "warning"
            b = await bmc_of(
                "worker-1", lambda b: b["breaker"] == "open" or b["reachable"] is False
            )
            assert b["reachable"] is False and b["last_error"]["kind"] in ("unreachable", "timeout")
            assert states((await http.get("/v1/hosts/worker-1")).json()) == before
        finally:
            sim.post(f"/bmcs/{sim.ports[1]}/faults", {"unreachable": False})

        def episode() -> list[str]:
            return [
                e["type"]
                for e in events.got[seen:]
                if e["data"].get("alarm_id") == "200.010"
                and e["data"]["entity_instance_id"] == "host=worker-1"
            ]

        async def cleared():
            return "fault.alarm.clear" in episode()

        await eventually(cleared, timeout=15, what="200.010 cleared once the BMC answers")
        assert episode() == ["fault.alarm.set", "fault.alarm.clear"]  # once, not every poll
        assert states((await http.get("/v1/hosts/worker-1")).json()) == before

        # Wrong credentials: 200.010 says so.
        sim.post(f"/bmcs/{sim.ports[1]}/faults", {"wrong_password": True})
        try:

            async def auth_alarm():
                found = alarms_of(events, "set", "200.010", "host=worker-1")
                return [e for e in found if "authentication failed" in e["data"]["reason_text"]]

            await eventually(auth_alarm, timeout=15, what="200.010 for refused credentials")
        finally:
            sim.post(f"/bmcs/{sim.ports[1]}/faults", {"wrong_password": False})
        b = await bmc_of("worker-1", lambda b: b["reachable"] is True)
        assert json.dumps(b).count(PASSWORD) == 0
