"""Talking to the host service in tests: config's host events, actions, states, timelines."""

from __future__ import annotations

from typing import Any

import httpx

from roost_shared.bus import Bus
from roost_shared.catalog import HostRecord
from roost_shared.events import Envelope
from tests.support.waiting import eventually


async def publish(bus: Bus, verb: str, rec: HostRecord) -> None:
    """``config.host.<verb>`` as the config service would send it."""
    await bus.publish([Envelope.of(rec, type=f"config.host.{verb}", source="test/config")])


async def host_where(http: httpx.AsyncClient, ref: str, check, what: str) -> dict[str, Any]:
    """The host once ``check(host)`` holds (deadline: ``eventually``'s)."""

    async def probe():
        r = await http.get(f"/v1/hosts/{ref}")
        return r.json() if r.status_code == 200 and check(r.json()) else None

    return await eventually(probe, what=what)


def states(h: dict[str, Any]) -> str:
    return f"{h['administrative']}-{h['operational']}-{h['availability']}"


async def act(http: httpx.AsyncClient, ref: str, action: str, **body: Any) -> httpx.Response:
    return await http.post(f"/v1/hosts/{ref}/actions", json={"action": action, **body})


async def timeline(http: httpx.AsyncClient, ref: str) -> list[dict[str, Any]]:
    r = await http.get(f"/v1/hosts/{ref}/timeline")
    assert r.status_code == 200, r.text
    return r.json()["timeline"]
