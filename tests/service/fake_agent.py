"""A fake agent on the bus: takes ``service.instance.*`` commands from its own command queue
(``agent.<mac hex>`` on ``roost.commands``) and answers with ``agent.instance.changed``.

By default every assign is reported ``healthy`` at once with the assigned role and token; a
test can make it report something else (``fail``) or stay silent (``frozen``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from roost_shared.bus import COMMANDS_EXCHANGE, Bus
from roost_shared.catalog import InstanceChanged
from roost_shared.commands import agent_key
from roost_shared.events import Envelope, utcnow


@dataclass
class FakeAgent:
    bus: Bus
    hostname: str
    mac: str
    commands: list[dict[str, Any]] = field(default_factory=list)
    running: dict[str, dict[str, Any]] = field(default_factory=dict)
    frozen: bool = False

    async def start(self) -> FakeAgent:
        assert self.bus.connection is not None
        channel = await self.bus.connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(COMMANDS_EXCHANGE, routing_key=agent_key(self.mac))
        await queue.consume(self._on_command)
        return self

    async def _on_command(self, message: AbstractIncomingMessage) -> None:
        env = json.loads(message.body)
        env["received_at"] = time.time()
        self.commands.append(env)
        await message.ack()
        if self.frozen:
            return
        data = env["data"]
        if env["type"] == "service.instance.assign":
            self.running[data["instance_id"]] = data
            await self.report(data["instance_id"], "healthy")
        elif env["type"] == "service.instance.remove":
            inst = self.running.pop(data["instance_id"], None)
            if inst is not None:
                await self.report(data["instance_id"], "stopped", inst=inst)

    async def report(
        self, iid: str, state: str, reason: str = "", inst: dict[str, Any] | None = None
    ) -> None:
        inst = inst or self.running[iid]
        payload = InstanceChanged(
            mgmt_mac=self.mac,
            hostname=self.hostname,
            group=inst["group"],
            service=inst["service"],
            instance_id=iid,
            role=inst["role"],
            fencing_token=inst.get("fencing_token"),
            state=state,
            reason=reason,
            time=utcnow(),
        )
        await self.bus.publish([Envelope.of(payload, source=f"roost/agent/{self.hostname}")])

    def assigns(self, role: str | None = None, group: str = "gw") -> list[dict[str, Any]]:
        """Assign commands received for ``group`` (with ``role``, if given), oldest first."""
        return [
            c
            for c in self.commands
            if c["type"] == "service.instance.assign"
            and c["data"]["group"] == group
            and role in (None, c["data"]["role"])
        ]
