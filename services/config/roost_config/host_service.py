"""Asking the host service (mtce) whether a host may be deleted.

StarlingX refuses to delete an unlocked host. Roost's host service owns the administrative state;
config asks it over HTTP (``GET {url}/v1/hosts/{hostname}``) when ``ROOST_HOST_SERVICE_URL`` is
set. Without it (the host service does not exist yet) every delete is allowed.
"""

from __future__ import annotations

import logging

import httpx
from pydantic import SecretStr

from roost_shared.problems import Conflict, RoostError

log = logging.getLogger(__name__)


class HostServiceUnavailable(RoostError):
    status = 503
    msg_fmt = "cannot ask the host service whether {hostname} is locked: {reason}"


class DeleteGuard:
    """Refuses deleting a host that the host service reports as unlocked."""

    def __init__(self, url: str | None, token: SecretStr | None, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/") if url else None
        self.token = token
        self.timeout_s = timeout_s

    @property
    def enabled(self) -> bool:
        return self.url is not None

    async def check(self, hostname: str | None) -> None:
        """Raise ``Conflict`` if the host is unlocked, ``HostServiceUnavailable`` if unknowable."""
        if self.url is None or not hostname:
            return
        headers = {}
        if self.token is not None:
            headers["X-Auth-Token"] = self.token.get_secret_value()
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, headers=headers) as client:
                response = await client.get(f"{self.url}/v1/hosts/{hostname}")
        except httpx.HTTPError as exc:
            raise HostServiceUnavailable(hostname=hostname, reason=type(exc).__name__) from None
        if response.status_code == 404:
            return  # the host service never heard of it: nothing runs there
        if response.status_code != 200:
            raise HostServiceUnavailable(
                hostname=hostname, reason=f"it answered HTTP {response.status_code}"
            )
        administrative = response.json().get("administrative")
        if administrative == "unlocked":
            raise Conflict(
                kind="Host",
                id=hostname,
                reason="its administrative state is unlocked (in service); lock it first",
                field="administrative",
            )
