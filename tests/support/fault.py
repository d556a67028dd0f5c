"""Helpers for fault-service tests: build events, publish them, read the API."""

from __future__ import annotations

from typing import Any

import httpx

from roost_shared.catalog import AlarmClear, AlarmSet, LogWrite, Severity
from roost_shared.events import Envelope


def alarm(entity: str, alarm_id: str = "100.101", severity: str = "major", **kw: Any) -> Envelope:
    return Envelope.of(
        AlarmSet(
            alarm_id=alarm_id,
            entity_instance_id=entity,
            severity=Severity(severity),
            reason_text=kw.pop("reason_text", f"{alarm_id} on {entity}"),
            **kw,
        ),
        source="test",
    )


def clear(entity: str, alarm_id: str | None = "100.101") -> Envelope:
    return Envelope.of(AlarmClear(alarm_id=alarm_id, entity_instance_id=entity), source="test")


def log(entity: str, log_id: str = "200.021", text: str = "customer log") -> Envelope:
    return Envelope.of(
        LogWrite(event_log_id=log_id, entity_instance_id=entity, reason_text=text), source="test"
    )


async def alarms(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await http.get("/v1/alarms", params=params)
    response.raise_for_status()
    return response.json()["alarms"]


async def events(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await http.get("/v1/event_log", params=params)
    response.raise_for_status()
    return response.json()["event_log"]


async def metric(http: httpx.AsyncClient, name: str, **labels: str) -> float:
    """A Prometheus sample's value from the service's /metrics (0 if absent)."""
    text = (await http.get("/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head == name or (
            head.startswith(name + "{") and all(f'{k}="{v}"' in head for k, v in labels.items())
        ):
            total += float(value)
    return total
