"""Agents under test: real ``roost_agent`` processes on simulated hosts (the fleet's own code),
plus helpers to send them commands and to watch what they publish."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel

from roost_shared.bus import COMMANDS_EXCHANGE, EVENTS_EXCHANGE, Bus
from roost_shared.catalog import ConfigApply, Personality
from roost_shared.commands import agent_key, command
from roost_sim.fleet import Fleet, SimHost
from roost_sim.processes import ManagedProcess
from tests.support.releases import write_keys
from tests.support.waiting import eventually


class Events:
    """Envelopes received by a subscriber of our own, in arrival order."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    def of(self, type_: str, mac: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.got
            if e["type"] == type_ and (mac is None or e["data"].get("mgmt_mac") == mac)
        ]

    async def wait_for(
        self,
        type_: str,
        mac: str | None = None,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
        *,
        after: int = 0,
        timeout: float = 15.0,  # noqa: ASYNC109 - a polling deadline
    ) -> dict[str, Any]:
        """The first matching event among those received from index ``after`` on."""

        async def probe() -> dict[str, Any] | None:
            for e in self.got[after:]:
                if e["type"] == type_ and (mac is None or e["data"].get("mgmt_mac") == mac):
                    if where(e["data"]):
                        return e
            return None

        return await eventually(probe, timeout=timeout, what=f"{type_} from {mac}")


async def listen(bus: Bus, pattern: str = "agent.#", *, durable: bool = False) -> Events:
    """Subscribe to ``roost.events``. ``durable`` keeps the queue (and what arrives) through a
    broker restart; the test's vhost is deleted afterwards, and the queue with it."""
    assert bus.connection is not None
    channel = await bus.connection.channel()
    if durable:
        queue = await channel.declare_queue(f"test.listen.{id(bus):x}", durable=True)
    else:
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(EVENTS_EXCHANGE, routing_key=pattern)
    events = Events()

    async def on_message(message: AbstractIncomingMessage) -> None:
        events.got.append(json.loads(message.body))
        await message.ack()

    await queue.consume(on_message)
    return events


async def send(bus: Bus, mac: str, payload: BaseModel, *, deadline_s: float = 30.0) -> str:
    """Send the command ``payload`` to the agent ``mac``, as the control plane does; returns the
    command's id."""
    envelope = command(payload, source="test", subject=mac, deadline_s=deadline_s)
    await bus.publish([envelope], exchange=COMMANDS_EXCHANGE, routing_key=agent_key(mac))
    return envelope.id


async def apply(
    bus: Bus, mac: str, version: int, *, deadline_s: float = 30.0, hostname: str = "worker-0"
) -> str:
    """Send ``config.apply`` to the agent ``mac``; returns the command's id."""
    payload = ConfigApply(
        version=version,
        hostname=hostname,
        personality=Personality.worker,
        config={"ntp": ["10.0.0.1"], "version_note": f"v{version}"},
    )
    return await send(bus, mac, payload, deadline_s=deadline_s)


class AgentUnderTest:
    """One simulated host and its agent process, started the way ``make run``'s fleet does:
    provisioned with the test site's release signing key (``root/release-keys.pub``,
    :data:`tests.support.releases.SITE`); ``ROOST_SOFTWARE_URL`` names where it may download
    releases from (default: ``make run``'s software service, which no test runs)."""

    def __init__(self, amqp_url: str, root: Path, profile: str = "worker", **env: str) -> None:
        self.fleet = Fleet(root)
        if not self.fleet.release_keys.exists():
            write_keys(self.fleet.release_keys)
        self.host: SimHost = self.fleet.add(profile)
        self.amqp_url = amqp_url
        self.env = {"ROOST_LOG_JSON": "false", **env}
        self.proc: ManagedProcess = self.fleet.process(
            self.host, amqp_url, root / "logs", extra_env=self.env
        )

    @property
    def mac(self) -> str:
        return self.host.mac

    @property
    def state_dir(self) -> Path:
        return self.fleet.host_dir(self.host)

    @property
    def profile_path(self) -> Path:
        return self.state_dir / "profile.json"

    def start(self) -> AgentUnderTest:
        self.proc.start()
        return self

    def stop(self) -> int | None:
        self.proc.stop()
        return self.proc.returncode

    def status(self) -> dict[str, str]:
        """``/proc/<pid>/status`` of the agent."""
        assert self.proc.proc is not None
        lines = Path(f"/proc/{self.proc.proc.pid}/status").read_text().splitlines()
        return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}

    def cpu_seconds(self) -> float:
        import os

        assert self.proc.proc is not None
        fields = Path(f"/proc/{self.proc.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metric(self, name: str, **labels: str) -> float:
        """A sample from the agent's ``metrics.prom`` (0 if absent)."""
        path = self.state_dir / "metrics.prom"
        if not path.exists():
            return 0.0
        total = 0.0
        for line in path.read_text().splitlines():
            head, _, value = line.rpartition(" ")
            if head == name or (
                head.startswith(name + "{") and all(f'{k}="{v}"' in head for k, v in labels.items())
            ):
                total += float(value)
        return total
