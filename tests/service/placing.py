"""The service service with fake agents on the bus, as its placement tests and the CLI's
`sm-*` tests drive it: two in-service hosts (``HOSTS``), a group declaration, the host records
and state transitions config and the host service would publish, and reads of a group's
instances."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from roost_shared.bus import Bus
from roost_shared.catalog import HostRecord, HostStateChanged
from roost_shared.events import Envelope, utcnow
from tests.service.fake_agent import FakeAgent
from tests.support.waiting import eventually

HOSTS = {"controller-0": "52:54:00:00:00:10", "controller-1": "52:54:00:00:00:11"}


def host_uuid(hostname: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, hostname))


def group(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "redundancy": {"model": "active-standby"},
        "members": {"hosts": ["controller-0", "controller-1"]},
        "preferred": ["controller-1"],
        "failure_policy": {"max_restarts": 2, "window_s": 30},
        "services": [
            {"name": "api", "start": ["/usr/bin/api"], "depends_on": ["db"]},
            {"name": "db", "start": ["/usr/bin/db", "--data", "/var/db"]},
        ],
    }
    body.update(changes)
    return body


async def learn(
    bus: Bus, hostname: str, states: tuple[str, str, str] | None, mac: str | None = None
) -> None:
    """Tell the service about a host (config) and, if given, its states (host service)."""
    record = HostRecord(
        uuid=host_uuid(hostname),
        hostname=hostname,
        mgmt_mac=mac or HOSTS[hostname],
        install_state="done",
    )
    await bus.publish([Envelope.of(record, type="config.host.added", source="roost/config")])
    if states is not None:
        await set_state(bus, hostname, *states)


async def set_state(bus: Bus, hostname: str, adm: str, op: str, avail: str) -> None:
    change = HostStateChanged(
        uuid=host_uuid(hostname),
        hostname=hostname,
        from_administrative="locked",
        from_operational="disabled",
        from_availability="online",
        to_administrative=adm,
        to_operational=op,
        to_availability=avail,
        cause="test",
        reason="test",
        time=utcnow(),
    )
    await bus.publish([Envelope.of(change, source="roost/host")])


IN_SERVICE = ("unlocked", "enabled", "available")


class Watch:
    """Reads the instances API continuously; records every read's active instances."""

    def __init__(self, http: httpx.AsyncClient, name: str) -> None:
        self.http, self.name = http, name
        self.reads = 0
        self.double: list[dict[str, Any]] = []
        self.actives: list[str | None] = []

    async def run(self) -> None:
        while True:
            r = await self.http.get(f"/v1/service-groups/{self.name}/instances")
            body = r.json()
            self.reads += 1
            hosts = {i["host"] for i in body["instances"] if i["state"] == "enabled-active"}
            if len(hosts) > 1:
                self.double.append(body)
            active = next(iter(hosts)) if hosts else None
            if not self.actives or self.actives[-1] != active:
                self.actives.append(active)
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def watching(http: httpx.AsyncClient, name: str) -> AsyncIterator[Watch]:
    watch = Watch(http, name)
    task = asyncio.create_task(watch.run())
    try:
        yield watch
        # A few more looks after the scenario ended (a fast one may take only a few reads).
        target = watch.reads + 3
        await eventually(
            lambda: asyncio.sleep(0, watch.reads >= target), timeout=5, what="more reads"
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert watch.reads >= 4
    assert not watch.double, f"two enabled-active instances seen: {watch.double[0]}"


async def instances(http: httpx.AsyncClient, name: str = "gw") -> dict[str, Any]:
    r = await http.get(f"/v1/service-groups/{name}/instances")
    assert r.status_code == 200, r.text
    return r.json()


def roles(body: dict[str, Any]) -> dict[tuple[str, str], tuple[str | None, str]]:
    return {(i["host"], i["service"]): (i["role"], i["state"]) for i in body["instances"]}


async def placed(stack, **env: str):
    """The service, two in-service hosts with fake agents, group ``gw`` placed and active."""
    svc = stack.start("service", **env)
    bus = await stack.bus()
    agents = {h: await FakeAgent(bus, h, mac).start() for h, mac in HOSTS.items()}
    for h in HOSTS:
        await learn(bus, h, IN_SERVICE)
    return svc, bus, agents


async def until_state(http: httpx.AsyncClient, state: str, within: float = 10.0) -> dict:
    async def probe() -> dict | None:
        body = await instances(http)
        return body if body["state"] == state else None

    return await eventually(probe, timeout=within, what=f"group state {state}")


async def hosts_known(
    http: httpx.AsyncClient, n: int = 2, hosts: tuple[str, ...] = ("controller-0", "controller-1")
) -> bool:
    # A scratch group shows what the service knows: its failure reason names each host.
    scratch = group(preferred=[], members={"hosts": list(hosts)})
    r = await http.put("/v1/service-groups/probe", json=scratch)
    assert r.status_code in (200, 201), r.text
    body = await instances(http, "probe")
    known = [i for i in body["instances"] if "unknown" not in i["reason"]]
    if len({i["host"] for i in known}) >= n:
        assert (await http.delete("/v1/service-groups/probe")).status_code == 204
        return True
    return False


async def active_on(http: httpx.AsyncClient, host: str) -> dict | None:
    body = await instances(http)
    mine = [i for i in body["instances"] if i["host"] == host]
    return body if mine and all(i["state"] == "enabled-active" for i in mine) else None
