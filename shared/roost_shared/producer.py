"""A bus for tools that stand in for several senders (tests, benchmarks, the simulator's
scripts): each message is published as its owner's broker user, as that service would.

Consumers believe an event only from its owner (:mod:`roost_shared.publishers`), so a tool that
feeds the fault service alarms and the host service inventory must hold each sender's password
(the site's broker passwords directory): it has no more power than those services together.
Its own connection (for listening) is ``amqp_url``'s user.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from roost_shared.bus import Bus, Destined
from roost_shared.publishers import SERVICES, TO_FAULT

if TYPE_CHECKING:
    from roost_shared.metrics import Metrics
    from roost_shared.settings import RoostSettings
    from roost_shared.signing import Signer


def owner_of(event_type: str, source: str) -> str:
    """The service (or ``agent``) a message of this type is published as."""
    if event_type in TO_FAULT:
        named = source.removeprefix("roost/").split("/", 1)[0]
        return named if named in SERVICES else "host"
    return event_type.split(".", 1)[0]


class ProducerBus(Bus):
    """A :class:`Bus` whose publishes go out through one connection per owner."""

    def __init__(
        self,
        settings: RoostSettings,
        metrics: Metrics,
        *,
        signers: dict[str, Signer] | None = None,
    ) -> None:
        super().__init__(settings, metrics, signers=signers)
        self._signers = signers
        self._owners: dict[str, Bus] = {}
        # Two publishes for a new owner at once must not both connect: the loser's connection
        # would never be closed and would reconnect for ever once its vhost is gone.
        self._connecting = asyncio.Lock()

    async def _owner(self, owner: str) -> Bus:
        bus = self._owners.get(owner)
        if bus is not None:
            return bus
        async with self._connecting:
            bus = self._owners.get(owner)
            if bus is None:
                settings = self.settings.model_copy(update={"service": owner})
                bus = Bus(settings, self.metrics, signers=self._signers)
                await bus.connect(deadline_s=10)
                self._owners[owner] = bus
        return bus

    async def _publish_once(self, items: Sequence[Destined]) -> None:
        groups: dict[str, list[Destined]] = {}
        for item in items:
            groups.setdefault(owner_of(item[0].type, item[0].source), []).append(item)
        for owner, group in groups.items():
            await (await self._owner(owner))._publish_once(group)

    async def close(self) -> None:
        for bus in self._owners.values():
            await bus.close()
        self._owners.clear()
        await super().close()
