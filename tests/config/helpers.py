"""Helpers for config-service tests: play the agent on the bus, watch commands and events."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from aio_pika.abc import AbstractIncomingMessage

from roost_shared.bus import COMMANDS_EXCHANGE, EVENTS_EXCHANGE, Bus
from roost_shared.catalog import (
    ConfigApplied,
    CpuInventory,
    DiskInventory,
    HostAnnounced,
    InventoryReported,
    PortInventory,
)
from roost_shared.commands import agent_key
from roost_shared.events import Envelope
from tests.support.waiting import eventually


def new_mac() -> str:
    raw = uuid.uuid4().hex[:10]
    return "52:" + ":".join(raw[i : i + 2] for i in range(0, 10, 2))


@dataclass
class Tap:
    """Every message that reached one exclusive queue of our own, as raw text and as JSON."""

    raw: list[str] = field(default_factory=list)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(r) for r in self.raw]

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == event_type]

    async def wait_for(self, predicate, what: str, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        async def probe():
            return next((m for m in self.messages if predicate(m)), None)

        return await eventually(probe, timeout=timeout, what=what)


async def tap(bus: Bus, exchange: str, key: str) -> Tap:
    assert bus.connection is not None
    channel = await bus.connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key=key)
    got = Tap()

    async def on_message(message: AbstractIncomingMessage) -> None:
        got.raw.append(message.body.decode())
        await message.ack()

    await queue.consume(on_message)
    return got


async def tap_events(bus: Bus, key: str = "#") -> Tap:
    return await tap(bus, EVENTS_EXCHANGE, key)


async def tap_commands(bus: Bus, mac: str) -> Tap:
    return await tap(bus, COMMANDS_EXCHANGE, agent_key(mac))


class Agent:
    """Plays one host's agent: announces, reports inventory and config outcomes."""

    def __init__(self, bus: Bus, mac: str, hostname: str = "localhost") -> None:
        self.bus, self.mac, self.hostname = bus, mac, hostname
        self.boot_id = uuid.uuid4().hex

    async def _send(self, payload) -> None:
        await self.bus.publish([Envelope.of(payload, source=f"agent/{self.mac}")])

    async def announce(self, config_applied: int = 0, hostname: str | None = None) -> None:
        await self._send(
            HostAnnounced(
                mgmt_mac=self.mac,
                hostname=hostname or self.hostname,
                mgmt_ip="192.168.204.10",
                boot_id=self.boot_id,
                config_applied=config_applied,
            )
        )

    async def applied(self, version: int, ok: bool = True, error: str | None = None) -> None:
        await self._send(ConfigApplied(mgmt_mac=self.mac, version=version, ok=ok, error=error))

    async def inventory(self, memory_mb: int = 65536, disks: int = 1) -> None:
        await self._send(
            InventoryReported(
                mgmt_mac=self.mac,
                cpu=CpuInventory(model="Xeon D-2187NT", sockets=1, cores=16, threads=32),
                memory_mb=memory_mb,
                disks=[
                    DiskInventory(device=f"/dev/nvme{i}n1", size_gb=512, type="nvme")
                    for i in range(disks)
                ],
                ports=[PortInventory(name="eno1", mac=self.mac, speed_mbps=10000, link=True)],
            )
        )


async def host_where(http: httpx.AsyncClient, ref: str, check, what: str) -> dict[str, Any]:
    """Wait until GET /v1/hosts/{ref} satisfies ``check``."""

    async def probe():
        r = await http.get(f"/v1/hosts/{ref}")
        return r.json() if r.status_code == 200 and check(r.json()) else None

    return await eventually(probe, what=what)


async def all_hosts(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await http.get("/v1/hosts", params=params)
    r.raise_for_status()
    return r.json()["hosts"]
