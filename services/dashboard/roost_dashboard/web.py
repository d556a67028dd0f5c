"""What every page shares: the operator behind a request (session cookie, role), rendering with a
one-time message, API results as page sections, redirects back after an action, and the
handlers that turn a refused token into the login page and other failures into readable pages.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from roost_dashboard import csrf
from roost_dashboard.clients import ApiError, Services, TokenRejected
from roost_dashboard.live import Broadcaster
from roost_dashboard.sessions import Session, SessionStore
from roost_dashboard.settings import DashboardSettings
from roost_shared.auth import Authenticator, Principal, Role
from roost_shared.problems import problem_response

T = TypeVar("T")
log = logging.getLogger(__name__)

#: The session cookie: a random session id (the API token stays in the dashboard's memory).
COOKIE = "roost_session"
FLASH = "roost_flash"
#: Why the login page is shown: codes in the URL, words from here (never words from a link).
LOGIN_REASONS = {
    "refused": "Your token was refused (expired or revoked). Log in again.",
    "logged-out": "Logged out.",
    "expired": "Your session has ended. Log in again.",
}
SEVERITIES = ("critical", "major", "minor", "warning")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
#: Host actions offered, with the administrative state each is offered in (the host service
#: checks the rest: BMC present, power state) and what the confirmation says.
HOST_ACTIONS = {
    "lock": ("unlocked", "Locking takes the host out of service (its workloads move away)."),
    "force-lock": (
        "unlocked",
        "This is a FORCED lock: the host is taken out of service even where a plain lock is "
        "refused (the last unlocked-enabled controller: the site is left without one).",
    ),
    "unlock": ("locked", "Unlocking runs the in-test, then puts the host back in service."),
    "reboot": ("locked", "The host restarts; it stays locked."),
    "reset": (
        "locked",
        "This cuts the host: the BMC resets it at once, with no clean shutdown; it stays locked.",
    ),
    "power-off": (
        "locked",
        "This cuts the host: its power is switched off (by the BMC) with no clean shutdown.",
    ),
    "power-on": ("locked", "The BMC powers the host on."),
    "reinstall": (
        "locked",
        "This cuts the host: it goes down at once and is installed again from scratch (its "
        "disks are rewritten); it stays locked.",
    ),
}
#: Actions that need a BMC (not offered on a host without one).
BMC_ACTIONS = ("reset", "power-off", "power-on")
EVENTS_PAGE = 50

templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    enable_async=False,
)


def when(value: Any) -> str:
    """An API time (ISO 8601) as ``YYYY-MM-DD HH:MM:SS`` (UTC as the APIs give it); empty
    stays empty, anything else is shown as it is."""
    if not value:
        return ""
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    return t.strftime("%Y-%m-%d %H:%M:%S")


templates.filters["when"] = when


def uptime(host: dict[str, Any], now: datetime | None = None) -> str:
    """Time since the host last became unlocked-enabled-available (its ``state_changed_at``
    while it is), ``—`` otherwise: ``3d 4h``, ``2h 5m``, ``4m 10s``."""
    if (host.get("operational"), host.get("availability")) != ("enabled", "available"):
        return "—"
    since = host.get("state_changed_at")
    if not since:
        return "—"
    try:
        t = datetime.fromisoformat(str(since).replace("Z", "+00:00"))
    except ValueError:
        return "—"
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return duration((now or datetime.now(UTC)) - t)


def duration(delta: timedelta) -> str:
    s = max(int(delta.total_seconds()), 0)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {s % 60}s" if m else f"{s}s"


templates.filters["uptime"] = uptime


class NeedLogin(Exception):
    """No session: go to the login page (and back to the page asked for after it)."""


class SessionEnded(Exception):
    """A session cookie the dashboard no longer knows (expired, logged out, restarted)."""


class TokenWatch:
    """The dashboard's view of the tokens file, kept by the shared :class:`Authenticator`
    (``roost_shared.auth.TokenFile``: read again when it changes). A token the file listed and
    no longer lists, or one past its rotation grace (``not_after``), is *revoked*: the
    dashboard refuses it (:class:`TokenRejected`, the login page), even for a session it holds."""

    def __init__(self, settings: DashboardSettings, authenticator: Authenticator) -> None:
        self.settings = settings
        self.authenticator = authenticator

    def is_revoked(self, token: str) -> bool:
        return self.authenticator.is_revoked(token)

    def principal(self, token: str) -> Principal | None:
        """The token's principal as the tokens file says now (None: not listed, the APIs
        decide); :class:`TokenRejected` when it was revoked or expired."""
        if self.is_revoked(token):
            raise TokenRejected("dashboard", "the token was revoked", 401)
        return self.authenticator.principal(token)


@dataclass
class Dashboard:
    """What the routes need, built by the app's lifespan."""

    settings: DashboardSettings
    services: Services
    authenticator: Authenticator
    live: Broadcaster | None = None
    tokens: TokenWatch | None = None
    sessions: SessionStore | None = None

    def __post_init__(self) -> None:
        if self.tokens is None:
            self.tokens = TokenWatch(self.settings, self.authenticator)
        if self.sessions is None:
            self.sessions = SessionStore(self.settings.session_ttl_s)

    def principal(self, token: str) -> Principal | None:
        assert self.tokens is not None
        return self.tokens.principal(token)


@dataclass
class Operator:
    token: str
    role: Role
    csrf: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.admin


def dash(request: Request) -> Dashboard:
    return request.app.state.dashboard


def operator(request: Request) -> Operator:
    """The operator behind the request: the session in the cookie, its token's role as the
    tokens file says (a token the APIs accept that the dashboard does not know is treated as a
    reader: the APIs still decide)."""
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        raise NeedLogin()
    d = dash(request)
    assert d.sessions is not None
    session = d.sessions.get(session_id)
    if session is None:
        raise SessionEnded()
    request.state.session = session
    principal = d.principal(session.token)  # TokenRejected when revoked
    if principal is not None:
        request.state.principal = principal  # the audit's "who" for the dashboard's own posts
    if d.live is not None:
        # Before the page asks any API: its stream replays what happens from here on.
        request.state.live_seq = d.live.seq
    return Operator(session.token, principal.role if principal else Role.reader, session.csrf)


async def check_csrf(request: Request) -> None:
    """Dependency of every form post made in a session: the form's ``csrf`` field must be the
    session's CSRF token (403 problem+json otherwise). No session: the login page."""
    operator(request)
    session: Session = request.state.session
    if not session.csrf_ok(await csrf.sent_token(request)):
        raise csrf.refuse(request, "token", "the form's CSRF token is missing or wrong")


async def check_login_csrf(request: Request) -> None:
    """Dependency of the login form: its ``csrf`` field must match its cookie (double submit)."""
    expected = request.cookies.get(csrf.LOGIN_COOKIE) or ""
    sent = await csrf.sent_token(request) or ""
    if not expected or not Session("", expected, 0).csrf_ok(sent):
        raise csrf.refuse(request, "login_token", "the login form's CSRF token is missing or wrong")


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page, with the message an action left for it (a one-time cookie, never the URL: a
    link someone sends cannot put words on the operator's page)."""
    op: Operator | None = context.pop("op", None)
    flash = _read_flash(request)
    context.setdefault("csrf", op.csrf if op is not None else "")
    html = templates.get_template(name).render(
        op=op,
        path=request.url.path,
        live_seq=getattr(request.state, "live_seq", ""),
        notice=flash.get("notice", ""),
        problem=flash.get("problem", ""),
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    if FLASH in request.cookies:
        response.delete_cookie(FLASH, path="/")
    return response


def _read_flash(request: Request) -> dict[str, str]:
    raw = request.cookies.get(FLASH)
    if not raw:
        return {}
    try:
        value = json.loads(unquote(raw))
    except (ValueError, RecursionError):
        return {}
    if not isinstance(value, dict):  # the browser sends what it likes: not ours, ignore it
        return {}
    return {k: str(v) for k, v in value.items() if k in ("notice", "problem")}


@dataclass
class Section:
    """One API result for a page: the value, or the readable message of its failure."""

    value: Any = None
    error: str = ""
    status: int | None = None


async def section(call: Awaitable[T]) -> Section:
    try:
        return Section(await call)
    except TokenRejected:
        raise
    except ApiError as exc:
        return Section(error=exc.text, status=exc.status)


async def sections(*calls: Awaitable[Any]) -> list[Section]:
    return list(await asyncio.gather(*(section(c) for c in calls)))


async def all_pages(
    services: Services, service: str, path: str, key: str, token: str, **params: Any
) -> list[dict[str, Any]]:
    """Every item of a paged list (``limit`` + ``marker``, the last item's uuid)."""
    items: list[dict[str, Any]] = []
    marker = None
    limit = params.pop("limit", 1000)
    while True:
        body = await services.get(service, path, token, limit=limit, marker=marker, **params)
        batch = body.get(key, [])
        items.extend(batch)
        if not body.get("next") or not batch or len(batch) < limit:
            return items
        marker = batch[-1]["uuid"]


def label(action: str) -> str:
    """``power-off`` → ``Power off``."""
    return action.replace("-", " ").capitalize()


#: Browsers drop a cookie over 4 kB (the message then never shows) and proxies refuse long
#: headers, while a message can quote what was refused at any length (an action 100 kB long).
FLASH_MAX_BYTES = 3_000


def _flash_value(kind: str, text: str) -> str:
    value = quote(json.dumps({kind: text}))
    while len(value) > FLASH_MAX_BYTES:
        text = text[: len(text) // 2] + "…"
        value = quote(json.dumps({kind: text}))
    return value


def back(path: str, *, notice: str = "", problem: str = "") -> RedirectResponse:
    """Back to ``path`` after an action, with its outcome for the next page to show."""
    response = RedirectResponse(path, status_code=303)
    kind, text = ("notice", notice) if notice else ("problem", problem)
    response.set_cookie(
        FLASH, _flash_value(kind, text), max_age=60, httponly=True, samesite="strict", path="/"
    )
    return response


def local_path(target: str) -> str:
    """Where to go after logging in: a path of this site only (never another origin)."""
    ok = target.startswith("/") and not target.startswith("//") and "\\" not in target
    return target if ok and not target.startswith("/login") else "/"


def resume(request: Request) -> str:
    """Where to come back after logging in: the page asked for (a page, not a form post, the
    event stream or a fragment), URL-quoted."""
    path = request.url.path
    if request.method != "GET" or path.startswith(("/events/stream", "/fragments/")):
        path = "/"
    return quote(path, safe="")


def install_handlers(app: FastAPI) -> None:
    """Routes, and the exception handlers that turn a refused token into the login page and any
    other API failure into a readable page."""

    @app.exception_handler(NeedLogin)
    async def _need_login(request: Request, exc: NeedLogin) -> Response:
        return RedirectResponse(f"/login?next={resume(request)}", 303)

    @app.exception_handler(SessionEnded)
    async def _ended(request: Request, exc: SessionEnded) -> Response:
        response = RedirectResponse(f"/login?reason=expired&next={resume(request)}", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.exception_handler(TokenRejected)
    async def _refused(request: Request, exc: TokenRejected) -> Response:
        sessions = dash(request).sessions
        if sessions is not None:
            sessions.end(request.cookies.get(COOKIE))
        response = RedirectResponse(f"/login?reason=refused&next={resume(request)}", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.exception_handler(csrf.CsrfRefused)
    async def _forged(request: Request, exc: csrf.CsrfRefused) -> Response:
        return problem_response(403, exc.detail, request=request)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return render(request, "error.html", 502, message=exc.text)

    problem_handler = app.exception_handlers[StarletteHTTPException]

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        """A page for browsers (404, 405, a form without a field), problem+json for the rest."""
        if "text/html" not in request.headers.get("accept", ""):
            return await problem_handler(request, exc)
        words = {404: "There is no such page.", 405: "That is not something this page does."}
        return render(
            request,
            "error.html",
            exc.status_code,
            message=words.get(exc.status_code, str(exc.detail)),
        )
