"""Asking the config service (sysinv) whether a group's member hosts exist.

The config service owns the inventory; this service asks ``GET {url}/v1/hosts/{hostname}`` when
``ROOST_CONFIG_SERVICE_URL`` is set. Without it, member hosts are accepted as given and checked
when the group is placed.
"""

from __future__ import annotations

import asyncio

import httpx
from pydantic import SecretStr

from roost_service.logic import Problem
from roost_shared.problems import RoostError


class ConfigServiceUnavailable(RoostError):
    status = 503
    msg_fmt = "cannot ask the config service whether host {hostname} exists: {reason}"


class HostInventory:
    """Checks hostnames against the config service, if one is configured."""

    def __init__(self, url: str | None, token: SecretStr | None, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/") if url else None
        self.token = token
        self.timeout_s = timeout_s

    @property
    def enabled(self) -> bool:
        return self.url is not None

    async def unknown(self, hostnames: list[str]) -> list[Problem]:
        """A problem naming ``body.members.hosts.<i>`` for each host config does not know."""
        if self.url is None or not hostnames:
            return []
        headers = {"X-Auth-Token": self.token.get_secret_value()} if self.token else {}
        async with httpx.AsyncClient(timeout=self.timeout_s, headers=headers) as client:
            answers = await asyncio.gather(*(self._exists(client, h) for h in hostnames))
        return [
            Problem(f"body.members.hosts.{i}", f"unknown host {h!r}: not in the inventory")
            for i, (h, known) in enumerate(zip(hostnames, answers, strict=True))
            if not known
        ]

    async def _exists(self, client: httpx.AsyncClient, hostname: str) -> bool:
        try:
            response = await client.get(f"{self.url}/v1/hosts/{hostname}")
        except httpx.HTTPError as exc:
            raise ConfigServiceUnavailable(hostname=hostname, reason=type(exc).__name__) from None
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise ConfigServiceUnavailable(
                hostname=hostname, reason=f"it answered HTTP {response.status_code}"
            )
        return True
