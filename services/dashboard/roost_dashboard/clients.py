"""Calls to the service APIs with the operator's own token (the dashboard holds no power of
its own: every action goes through the same API, roles and audit as the CLI).

Errors become :class:`ApiError` with a sentence an operator can read; a token the API refuses
(401) becomes :class:`TokenRejected`, which the pages turn into a redirect to the login page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from roost_dashboard.settings import DashboardSettings


class ApiError(Exception):
    """A service API failed or could not be reached; ``message`` is for the page."""

    def __init__(self, service: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.message = message
        self.status = status

    @property
    def text(self) -> str:
        return f"The {self.service} service: {self.message}"


class TokenRejected(ApiError):
    """The API answered 401: the token is unknown, revoked or expired."""


class NotConfigured(ApiError):
    """The dashboard was not told where this service is (its ``ROOST_*_URL`` is unset)."""

    def __init__(self, service: str) -> None:
        super().__init__(service, f"is not configured (ROOST_{service.upper()}_URL is not set)")

    @property
    def text(self) -> str:
        return f"The {self.service} service is not configured (ROOST_{self.service.upper()}_URL)."


def _detail(response: httpx.Response) -> str:
    """problem+json's ``detail`` (or ``title``), else the status line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("detail", "title"):
            if isinstance(body.get(key), str) and body[key]:
                return body[key]
    return f"HTTP {response.status_code} {response.reason_phrase}"


@dataclass
class Services:
    """One pooled HTTP client for every service API; a call names the service and the token."""

    settings: DashboardSettings
    http: httpx.AsyncClient

    @classmethod
    def create(cls, settings: DashboardSettings) -> Services:
        return cls(settings, httpx.AsyncClient(timeout=settings.api_timeout_s))

    async def close(self) -> None:
        await self.http.aclose()

    def configured(self, service: str) -> bool:
        return bool(getattr(self.settings, f"{service}_url"))

    def base(self, service: str) -> str:
        url = getattr(self.settings, f"{service}_url")
        if not url:
            raise NotConfigured(service)
        return str(url).rstrip("/")

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        token: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        url = f"{self.base(service)}{path}"  # NotConfigured before any request
        try:
            response = await self.http.request(
                method,
                url,
                params={k: v for k, v in (params or {}).items() if v not in (None, "")},
                json=json,
                headers={"Authorization": f"Bearer {token}"},
            )
        except httpx.TimeoutException:
            raise ApiError(
                service, f"no answer within {self.settings.api_timeout_s:g} s ({url})"
            ) from None
        except httpx.HTTPError as exc:
            raise ApiError(
                service, f"cannot be reached at {self.base(service)} ({type(exc).__name__})"
            ) from None
        if response.status_code == 401:
            raise TokenRejected(service, "the token was refused", 401)
        if response.status_code == 403:
            raise ApiError(service, f"not allowed: {_detail(response)}", 403)
        if response.status_code >= 400:
            raise ApiError(service, _detail(response), response.status_code)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    async def get(self, service: str, path: str, token: str, **params: Any) -> Any:
        return await self.call(service, "GET", path, token, params=params)

    async def post(self, service: str, path: str, token: str, body: Any = None) -> Any:
        return await self.call(service, "POST", path, token, json=body)
