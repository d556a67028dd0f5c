"""Sensors, BMC status and their alarms (StarlingX hwmon, run by the host service).

Every ``sensor_poll_s`` the monitor reads, for each named host with an IPMI BMC (all at once,
bounded by the BMC pool), the power state and the sensors. Per host it keeps one document in
``sensors`` (``_id`` = host uuid): the readings, the BMC status and the alarms it has raised.
The document, and the alarms with it through the outbox in the same transaction, are written
only when something changed (a reading, a health, the power state, reachability, an alarm):
1,000 healthy hosts cost no writes. Times that move on every poll (``polled_at``, the last
attempt) live in memory and are merged into the API's answers.

Alarms:

* **200.007** on ``host=<hostname>.sensor=<sensor>`` for a sensor whose health is warning,
  critical or failed (severity minor, major, critical, like hwmon), cleared when it is ok again
  or gone.
* **200.010** on ``host=<hostname>`` when the BMC cannot be reached or refuses the credentials
  (the reason says which), cleared by the next success. Never a host failure: the host's states
  are not touched.

What is raised is kept in the document, so a restart neither raises again nor forgets to clear.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from pymongo import IndexModel

from roost_host.bmc import BmcAccess, BmcError, BmcTarget, SensorReading
from roost_shared.catalog import AlarmClear, AlarmSet, AlarmType, Severity
from roost_shared.db import Database, Session
from roost_shared.events import Envelope, utcnow
from roost_shared.outbox import Outbox

log = logging.getLogger(__name__)

SOURCE = "roost/host"
SENSORS = "sensors"
SENSOR_ALARM = "200.007"
BMC_ALARM = "200.010"
INDEXES: dict[str, list[IndexModel]] = {SENSORS: [IndexModel([("hostname", 1)])]}

#: Sensor health → 200.007 severity (StarlingX hwmon: minor, major, critical).
SEVERITY = {"warning": Severity.minor, "critical": Severity.major, "failed": Severity.critical}
#: Why 200.010 is raised, by BmcError kind.
ACCESS_REASON = {"unreachable": "unreachable", "timeout": "unreachable", "auth": "authentication"}
_NOT_IN_ENTITY = re.compile(r"[^A-Za-z0-9_:/@+-]")


def sensor_entity(hostname: str, sensor: str) -> str:
    """``host=<hostname>.sensor=<name>``, the name made safe for an entity id (spaces, dots and
    equals signs, which separate entity parts, become ``_``: ``CPU Temp`` → ``CPU_Temp``)."""
    return f"host={hostname}.sensor={_NOT_IN_ENTITY.sub('_', sensor) or '_'}"


def host_entity(hostname: str) -> str:
    return f"host={hostname}"


def sensor_alarm(hostname: str, reading: SensorReading, now: datetime) -> AlarmSet:
    """200.007 as fm-doc events.yaml describes it."""
    severity = SEVERITY[reading.health]
    if severity is Severity.minor:
        text = f"Host is reporting a 'minor' out-of-tolerance reading from the '{reading.name}'"
    else:
        text = (
            f"Host is degraded due to a '{severity.value}' out-of-tolerance reading from the "
            f"'{reading.name}'"
        )
    value = "" if reading.value is None else f" ({reading.value:g} {reading.units})".rstrip()
    states = f": {', '.join(reading.states)}" if reading.states else ""
    return AlarmSet(
        alarm_id=SENSOR_ALARM,
        entity_instance_id=sensor_entity(hostname, reading.name),
        entity_type_id="host.sensor",
        severity=severity,
        reason_text=f"{text} sensor{value}{states}",
        alarm_type=AlarmType.operational,
        probable_cause="unspecified-reason",
        proposed_repair_action="If problem consistently occurs after Host is power cycled and "
        "or reset, contact next level of support or lock and replace failing host.",
        service_affecting=severity is Severity.critical,
        suppression=True,
        degrade_affecting=severity is Severity.critical,
        timestamp=now,
    )


def bmc_alarm(hostname: str, reason: str, message: str, now: datetime) -> AlarmSet:
    """200.010 as fm-doc events.yaml describes it (warning, not service-affecting)."""
    why = "authentication failed" if reason == "authentication" else "BMC unreachable"
    return AlarmSet(
        alarm_id=BMC_ALARM,
        entity_instance_id=host_entity(hostname),
        entity_type_id="host",
        severity=Severity.warning,
        reason_text=f"{hostname} access to board management module has failed ({why}: {message})"[
            :2048
        ],
        alarm_type=AlarmType.operational,
        probable_cause="communication-subsystem-failure",
        proposed_repair_action="Check Host's board management configuration and connectivity.",
        service_affecting=False,
        suppression=False,
        timestamp=now,
    )


def wanted_sensor_alarms(readings: list[SensorReading]) -> dict[str, str]:
    """Sensor name → severity for every sensor that should be alarmed."""
    return {r.name: SEVERITY[r.health].value for r in readings if r.health in SEVERITY}


@dataclass
class Poll:
    """One poll of one host's BMC: what it read, or how it failed."""

    power: str | None = None
    readings: list[SensorReading] | None = None
    error: BmcError | None = None


@dataclass
class Live:
    """Per host, what changes every poll and is therefore kept in memory only."""

    polled_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    breaker: str = "closed"


class SensorMonitor:
    """The polling loop and what the API reads (``app.state.sensors``)."""

    def __init__(self, db: Database, outbox: Outbox, bmc: BmcAccess, poll_s: float) -> None:
        self.db = db
        self.docs = db[SENSORS]
        self.hosts = db["hosts"]
        self.outbox = outbox
        self.bmc = bmc
        self.poll_s = poll_s
        self.live: dict[str, Live] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Poll now (tests, and after a host's BMC changed)."""
        self._wake.set()

    async def run(self) -> None:
        """Poll every ``poll_s`` until cancelled."""
        while True:
            started = time.monotonic()
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sensor poll failed")
            self._wake.clear()
            remaining = self.poll_s - (time.monotonic() - started)
            if remaining > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    pass

    async def poll_once(self) -> None:
        """Poll every named host with an IPMI BMC; forget hosts that lost theirs."""
        hosts = await self.hosts.find(
            {"bmc_type": "ipmi", "hostname": {"$ne": None}},
            {"uuid": 1, "hostname": 1, "bmc_type": 1, "bmc_address": 1, "bmc_port": 1}
            | {"bmc_username": 1, "bmc_password_enc": 1},
        ).to_list()
        await asyncio.gather(*(self._poll_host(h) for h in hosts))
        polled = {h["uuid"] for h in hosts}
        for stale in await self.docs.find({"_id": {"$nin": list(polled)}}).to_list():
            await self._forget(stale)

    async def view(self, host_uuid: str) -> tuple[dict[str, Any] | None, Live]:
        """The stored document and the in-memory times of one host."""
        return await self.docs.find_one({"_id": host_uuid}), self.live.get(host_uuid, Live())

    # One host ------------------------------------------------------------------------------

    async def _poll_host(self, host: dict[str, Any]) -> None:
        live = self.live.setdefault(host["uuid"], Live())
        result = await self._read(host)
        now = utcnow()
        live.last_attempt_at = live.polled_at = now
        if result.error is None:
            live.last_success_at = now
        target = self._target_or_none(host)
        live.breaker = self.bmc.pool.breaker(target) if target else "closed"
        try:
            await self._record(host, result, live, now)
        except Exception:
            log.exception("could not record the BMC poll of %s", host.get("hostname"))

    def _target_or_none(self, host: dict[str, Any]) -> BmcTarget | None:
        try:
            return self.bmc.target(host)
        except BmcError:
            return None

    async def _read(self, host: dict[str, Any]) -> Poll:
        try:
            target = self.bmc.target(host)
            if target is None:
                return Poll(error=BmcError("error", "the BMC is not fully configured"))
            power = await self.bmc.pool.power_state(target)
            readings = await self.bmc.pool.sensors(target)
        except BmcError as err:
            return Poll(error=err)
        return Poll(power=power, readings=readings)

    async def _record(self, host: dict[str, Any], result: Poll, live: Live, now: datetime) -> None:
        old = await self.docs.find_one({"_id": host["uuid"]}) or {}
        hostname = host["hostname"]
        alarms: list[BaseModel] = []
        raised: dict[str, str] = dict(old.get("raised") or {})
        access: dict[str, Any] | None = old.get("access_alarm")
        old_name = old.get("hostname")
        if old_name and old_name != hostname:
            # Renamed: the alarms follow the host to its new name.
            alarms += [
                AlarmClear(alarm_id=SENSOR_ALARM, entity_instance_id=sensor_entity(old_name, s))
                for s in raised
            ]
            if access:
                alarms.append(
                    AlarmClear(alarm_id=BMC_ALARM, entity_instance_id=host_entity(old_name))
                )
            raised, access = {}, None
        status = dict(old.get("bmc") or {})
        readings = old.get("readings") or []
        if result.error is None:
            assert result.readings is not None
            readings = [r.model_dump() for r in result.readings]
            status.update(reachable=True, power=result.power, error_kind=None, error=None)
            wanted = wanted_sensor_alarms(result.readings)
            by_name = {r.name: r for r in result.readings}
            for name, severity in wanted.items():
                if raised.get(name) != severity:
                    alarms.append(sensor_alarm(hostname, by_name[name], now))
            for name in set(raised) - set(wanted):
                alarms.append(
                    AlarmClear(
                        alarm_id=SENSOR_ALARM,
                        entity_instance_id=sensor_entity(hostname, name),
                        timestamp=now,
                    )
                )
            raised = wanted
            if access:
                alarms.append(
                    AlarmClear(
                        alarm_id=BMC_ALARM, entity_instance_id=host_entity(hostname), timestamp=now
                    )
                )
                access = None
        else:
            err = result.error
            kind = err.kind
            if kind == "circuit-open":
                # The breaker only repeats an earlier failure: keep its reason.
                kind = status.get("error_kind") or "unreachable"
                message = status.get("error") or str(err)
            else:
                message = str(err)
            status.update(reachable=kind == "error", error_kind=kind, error=message)
            reason = ACCESS_REASON.get(kind)
            if reason and (access or {}).get("reason") != reason:
                alarms.append(bmc_alarm(hostname, reason, message, now))
                access = {"reason": reason, "since": now}
        status["breaker"] = live.breaker
        doc = {
            "_id": host["uuid"],
            "hostname": hostname,
            "readings": readings,
            "bmc": status,
            "raised": raised,
            "access_alarm": access,
        }
        if not alarms and _same(old, doc):
            return
        doc.update(
            polled_at=live.polled_at,
            last_attempt_at=live.last_attempt_at,
            last_success_at=live.last_success_at or old.get("last_success_at"),
            changed_at=now,
        )

        async def work(session: Session) -> None:
            await self.docs.replace_one({"_id": host["uuid"]}, doc, upsert=True, session=session)
            await self._emit(session, alarms, host_entity(hostname))

        await self.db.in_transaction(work)
        self.outbox.wake()

    async def _forget(self, doc: dict[str, Any]) -> None:
        """A host deleted, renamed away from IPMI or stripped of its BMC: clear its alarms."""
        hostname = doc.get("hostname")
        alarms: list[BaseModel] = []
        if hostname:
            alarms += [
                AlarmClear(alarm_id=SENSOR_ALARM, entity_instance_id=sensor_entity(hostname, s))
                for s in doc.get("raised") or {}
            ]
            if doc.get("access_alarm"):
                alarms.append(
                    AlarmClear(alarm_id=BMC_ALARM, entity_instance_id=host_entity(hostname))
                )

        async def work(session: Session) -> None:
            await self.docs.delete_one({"_id": doc["_id"]}, session=session)
            await self._emit(session, alarms, host_entity(hostname or doc["_id"]))

        await self.db.in_transaction(work)
        self.live.pop(doc["_id"], None)
        self.outbox.wake()

    async def _emit(self, session: Session, items: list[BaseModel], subject: str) -> None:
        if items:
            await self.outbox.add(
                session, [Envelope.of(i, source=SOURCE, subject=subject) for i in items]
            )


_COMPARED = ("hostname", "readings", "raised", "access_alarm")  # access_alarm: set in one write
_STATUS_COMPARED = ("reachable", "power", "error_kind", "error", "breaker")


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a poll changed nothing worth a write (times excluded)."""
    if not old:
        return False
    if any(old.get(k) != new.get(k) for k in _COMPARED):
        return False
    o, n = old.get("bmc") or {}, new.get("bmc") or {}
    return all(o.get(k) == n.get(k) for k in _STATUS_COMPARED)
