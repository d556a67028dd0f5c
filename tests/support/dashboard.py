"""Logging in to the dashboard and posting its forms as a browser does (session cookie, the
form's CSRF token, the page's own Origin)."""

from __future__ import annotations

import re

import httpx

_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


def csrf_in(html: str) -> str:
    """The CSRF token of the first form in a page ("" when it has none)."""
    found = _CSRF.search(html)
    return found.group(1) if found else ""


def origin_of(http: httpx.AsyncClient) -> str:
    return str(http.base_url).rstrip("/")


async def login(http: httpx.AsyncClient, token: str, next: str = "/") -> httpx.Response:
    """Log in through the login form (its CSRF token, the dashboard's Origin)."""
    page = await http.get("/login")
    return await http.post(
        "/login",
        data={"token": token, "next": next, "csrf": csrf_in(page.text)},
        headers={"Origin": origin_of(http)},
    )


async def session_csrf(http: httpx.AsyncClient) -> str:
    """The CSRF token of the client's session (from a page's forms)."""
    return csrf_in((await http.get("/", headers={"accept": "text/html"})).text)


async def post_form(
    http: httpx.AsyncClient, path: str, data: dict[str, str] | None = None
) -> httpx.Response:
    """A form post of the session, as its page would send it."""
    body = {"csrf": await session_csrf(http), **(data or {})}
    return await http.post(path, data=body, headers={"Origin": origin_of(http)})
