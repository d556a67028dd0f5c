"""Host power through its BMC, as the heartbeat monitor and auto-recovery need it.

Host documents in the monitor's memory carry no credentials, so every call reads the host's
stored BMC fields (address, port, user, password ciphertext) and decrypts in memory
(:class:`~roost_host.bmc.BmcAccess`). The failure **confirmation** is one quick question with
its own short deadline: the pool's retries are for recovery's power actions, not for a
decision the whole detection budget waits on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from roost_host.bmc import BmcAccess, BmcError, BmcTarget
from roost_host.store import HostStore


class BmcPower:
    def __init__(self, bmc: BmcAccess, store: HostStore, *, confirm_timeout_s: float) -> None:
        self.bmc = bmc
        self.store = store
        self.confirm_timeout_s = confirm_timeout_s

    def has_bmc(self, doc: dict[str, Any]) -> bool:
        """Whether the host has an IPMI BMC configured (credentials are checked on use)."""
        return doc.get("bmc_type") == "ipmi" and bool(doc.get("bmc_address"))

    async def _target(self, doc: dict[str, Any]) -> BmcTarget:
        full = doc if "bmc_password_enc" in doc else await self.store.by_uuid(doc["uuid"])
        target = self.bmc.target(full or {})
        if target is None:
            raise BmcError("error", "no IPMI BMC with credentials is configured for this host")
        return target

    async def confirm(self, doc: dict[str, Any]) -> str | None:
        """The power state ("on"/"off") within ``confirm_timeout_s``; None without a BMC;
        raises when the BMC cannot say (unreachable, wrong credentials, too slow)."""
        if not self.has_bmc(doc):
            return None
        target = await self._target(doc)
        try:
            return await asyncio.wait_for(self.bmc.pool.power_state(target), self.confirm_timeout_s)
        except TimeoutError:
            raise BmcError(
                "timeout", f"BMC {target.key} did not answer within {self.confirm_timeout_s:g} s"
            ) from None

    async def power_state(self, doc: dict[str, Any]) -> str:
        return await self.bmc.pool.power_state(await self._target(doc))

    async def set_power(self, doc: dict[str, Any], state: str) -> str:
        return await self.bmc.pool.set_power(await self._target(doc), state)

    async def set_boot_device(self, doc: dict[str, Any], device: str) -> None:
        await self.bmc.pool.set_boot_device(await self._target(doc), device)
