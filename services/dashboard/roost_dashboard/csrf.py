"""Cross-site request forgery defences for the dashboard's form posts.

Two checks, both on every POST (and any other unsafe method):

- **Origin** (:class:`OriginCheckMiddleware`, before anything else runs): a request whose
  ``Origin`` (or, without one, ``Referer``) is not the dashboard's own origin (the scheme and
  ``Host`` it was asked under, or one of ``ROOST_DASHBOARD_ORIGINS``) is refused with 403
  problem+json. ``Origin: null`` (sandboxed frames, some redirects) is refused too. A request
  with neither header is left to the token check (browsers send ``Origin`` on every form post;
  a tool without a browser carries no victim's cookies).
- **CSRF token** (:func:`check_csrf`, a dependency of every form post): the form's ``csrf``
  field must equal the session's own CSRF token (made at login, never in a URL), or for the
  login form itself the value of its ``roost_login_csrf`` cookie (double submit). Otherwise 403
  problem+json.

Each refusal counts ``roost_dashboard_csrf_refused_total{reason}`` (``origin``, ``token``,
``login_token``) and is logged (at most once a minute per client address).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from fastapi import Request
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from roost_shared.bodylimit import ThrottledLog
from roost_shared.metrics import Metrics
from roost_shared.problems import problem_response

log = logging.getLogger(__name__)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FIELD = "csrf"
LOGIN_COOKIE = "roost_login_csrf"
_throttled = ThrottledLog(log)


class CsrfRefused(Exception):
    """A form post without the right CSRF token (rendered as 403 problem+json)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def count(metrics: Metrics | None, reason: str, address: str, detail: str) -> None:
    _throttled.warning(address, "dashboard: refused a form post from %s: %s", address, detail)
    if metrics is not None:
        metrics.counter(
            "dashboard_csrf_refused",
            "Dashboard posts refused as cross-site (bad origin or CSRF token).",
            ["reason"],
        ).labels(reason).inc()


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


class OriginCheckMiddleware:
    """Refuses unsafe requests from another origin (see the module doc); pure ASGI."""

    def __init__(
        self, app: ASGIApp, *, allowed: Iterable[str], metrics_of: Callable[[], Metrics | None]
    ) -> None:
        self.app = app
        self.allowed = {o.rstrip("/").lower() for o in allowed}
        self.metrics_of = metrics_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        sent = conn.headers.get("origin")
        if sent is None and conn.headers.get("referer"):
            sent = _origin_of(conn.headers["referer"]) or "null"
        if sent is None:
            await self.app(scope, receive, send)
            return
        own = f"{scope.get('scheme', 'http')}://{conn.headers.get('host', '')}".lower()
        if sent.rstrip("/").lower() in self.allowed | {own}:
            await self.app(scope, receive, send)
            return
        address = conn.client.host if conn.client else "unknown"
        detail = f"cross-origin {scope['method']} refused: origin {sent[:200]!r} is not {own!r}"
        count(self.metrics_of(), "origin", address, detail)
        response = problem_response(403, detail, request=Request(scope))
        await response(scope, receive, send)


async def sent_token(request: Request) -> str | None:
    """The ``csrf`` field of the posted form (None without one)."""
    try:
        form = await request.form()
    except Exception:  # not a form at all
        return None
    value = form.get(FIELD)
    return value if isinstance(value, str) else None


def refuse(request: Request, reason: str, detail: str) -> CsrfRefused:
    address = request.client.host if request.client else "unknown"
    count(getattr(request.app.state, "metrics", None), reason, address, detail)
    return CsrfRefused(reason, detail)
