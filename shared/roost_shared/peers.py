"""Calling another Roost service's HTTP API (services never read each other's collections).

One :class:`Peer` per peer service, owning one ``httpx.AsyncClient`` (connection reuse) for the
life of the app. Transport errors and 5xx answers become :class:`PeerUnavailable` (503 to our own
caller, naming the peer and why); a 4xx answer is returned to the caller, who knows what it
means (404: unknown; 409: refused, with the peer's own reason in :func:`detail`).
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import SecretStr

from roost_shared.problems import RoostError


class PeerUnavailable(RoostError):
    status = 503
    msg_fmt = "cannot {what}: the {peer} service {reason}"


class PeerNotConfigured(RoostError):
    status = 503
    msg_fmt = "cannot {what}: no {peer} service is configured (set ROOST_{env})"


def detail(response: httpx.Response) -> str:
    """The reason a Roost API gave for a refusal (problem+json ``detail``), else the status."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return f"HTTP {response.status_code}"


class Peer:
    """A peer service's API at ``url`` (``None``: not configured), called with ``token``."""

    def __init__(
        self, name: str, url: str | None, token: SecretStr | None, timeout_s: float = 10.0
    ) -> None:
        self.name = name
        self.url = url.rstrip("/") if url else None
        headers = {"X-Auth-Token": token.get_secret_value()} if token is not None else {}
        self._client = (
            httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s)
            if self.url
            else None
        )

    @property
    def configured(self) -> bool:
        return self._client is not None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def request(
        self, method: str, path: str, *, what: str, json: Any = None, params: Any = None
    ) -> httpx.Response:
        """Send one request; 2xx and 4xx answers are returned, the rest raise
        :class:`PeerUnavailable` (``what`` says what we were trying to do, for the message)."""
        if self._client is None:
            raise PeerNotConfigured(what=what, peer=self.name, env=f"{self.name.upper()}_URL")
        try:
            response = await self._client.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            reason = f"is unreachable ({type(exc).__name__})"
            raise PeerUnavailable(what=what, peer=self.name, reason=reason) from None
        if response.status_code >= 500 or response.status_code in (401, 403):
            reason = f"answered HTTP {response.status_code}: {detail(response)}"
            raise PeerUnavailable(what=what, peer=self.name, reason=reason)
        return response

    async def get(self, path: str, *, what: str, params: Any = None) -> dict[str, Any] | None:
        """GET a JSON document; ``None`` for a 404."""
        response = await self.request("GET", path, what=what, params=params)
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            reason = f"answered HTTP {response.status_code}: {detail(response)}"
            raise PeerUnavailable(what=what, peer=self.name, reason=reason)
        return response.json()

    async def get_all(self, path: str, key: str, *, what: str, params: Any = None) -> list[Any]:
        """Every item of a paged Roost list (``{key: [...], next: marker}``)."""
        items: list[Any] = []
        query = dict(params or {})
        query.setdefault("limit", 1000)
        while True:
            body = await self.get(path, what=what, params=query)
            if body is None:
                return items
            items.extend(body.get(key, []))
            link = body.get("next")
            if not link:
                return items
            # ``next`` is StarlingX's href form (``...?limit=N&marker=M``) or a bare marker.
            marker = httpx.URL(link).params.get("marker") if "?" in link else link
            if not marker:
                return items
            query["marker"] = marker
