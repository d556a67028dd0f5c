"""What every page shares: the operator behind a request (token cookie, role), rendering with a
one-time message, API results as page sections, redirects back after an action, and the
handlers that turn a refused token into the login page and other failures into readable pages.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from roost_dashboard.clients import ApiError, Services, TokenRejected
from roost_dashboard.live import Broadcaster
from roost_dashboard.settings import DashboardSettings
from roost_shared.auth import Authenticator, Role

T = TypeVar("T")

COOKIE = "roost_token"
FLASH = "roost_flash"
#: Why the login page is shown: codes in the URL, words from here (never words from a link).
LOGIN_REASONS = {
    "refused": "Your token was refused (expired or revoked). Log in again.",
    "logged-out": "Logged out.",
}
SEVERITIES = ("critical", "major", "minor", "warning")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
#: Host actions offered, with the administrative state each is offered in (the host service
#: checks the rest: BMC present, power state) and what the confirmation says.
HOST_ACTIONS = {
    "lock": ("unlocked", "Locking takes the host out of service (its workloads move away)."),
    "unlock": ("locked", "Unlocking runs the in-test, then puts the host back in service."),
    "reboot": ("locked", "The host restarts; it stays locked."),
    "reset": ("locked", "The BMC resets the host at once (no clean shutdown)."),
    "power-off": ("locked", "The BMC powers the host off."),
    "power-on": ("locked", "The BMC powers the host on."),
}
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


class NeedLogin(Exception):
    """No token: go to the login page (and back to the page asked for after it)."""


@dataclass
class Dashboard:
    """What the routes need, built by the app's lifespan."""

    settings: DashboardSettings
    services: Services
    authenticator: Authenticator
    live: Broadcaster | None = None


@dataclass
class Operator:
    token: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.admin


def dash(request: Request) -> Dashboard:
    return request.app.state.dashboard


def operator(request: Request) -> Operator:
    """The operator behind the request: the token in the cookie, its role as the tokens file
    says (a token the APIs accept that the dashboard does not know is treated as a reader: the
    APIs still decide)."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise NeedLogin()
    principal = dash(request).authenticator.principal(token)
    return Operator(token, principal.role if principal else Role.reader)


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page, with the message an action left for it (a one-time cookie, never the URL: a
    link someone sends cannot put words on the operator's page)."""
    op: Operator | None = context.pop("op", None)
    flash = _read_flash(request)
    html = templates.get_template(name).render(
        op=op,
        path=request.url.path,
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
    except ValueError:
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


def back(path: str, *, notice: str = "", problem: str = "") -> RedirectResponse:
    """Back to ``path`` after an action, with its outcome for the next page to show."""
    response = RedirectResponse(path, status_code=303)
    message = {"notice": notice} if notice else {"problem": problem}
    response.set_cookie(
        FLASH, quote(json.dumps(message)), max_age=60, httponly=True, samesite="strict", path="/"
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

    @app.exception_handler(TokenRejected)
    async def _refused(request: Request, exc: TokenRejected) -> Response:
        response = RedirectResponse(f"/login?reason=refused&next={resume(request)}", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

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
