"""The dashboard as a cross-site attacker and a cookie thief meet it (real fault and
dashboard processes, a real alarm raised on the bus, plain HTTP as a browser sends it).

- A cross-origin form post (``Origin`` or ``Referer`` of another site) carrying the operator's
  session cookie and even the right CSRF token is refused: 403 problem+json, nothing done.
- A form post without the CSRF token, or with a wrong one, is refused: 403, nothing done.
- The cookie holds a session id, never the API token; logging out ends the session (the old
  cookie is worth nothing), and so does its expiry.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support.dashboard import csrf_in, login, origin_of, session_csrf
from tests.support.fault import alarm
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow


async def raise_alarm(stack, fault) -> str:
    """A real alarm through the bus; its uuid."""
    entity = f"host=csrf-victim-{uuid.uuid4().hex[:8]}"
    bus = await stack.bus()
    await bus.publish([alarm(entity, "100.101")])
    async with fault.client(stack.tokens.admin) as http:

        async def found() -> str | None:
            r = await http.get("/v1/alarms", params={"limit": 1000})
            return next(
                (a["uuid"] for a in r.json()["alarms"] if a["entity_instance_id"] == entity), None
            )

        return await eventually(found, timeout=15, what="the alarm raised")


async def alarm_exists(stack, fault, alarm_uuid: str) -> bool:
    async with fault.client(stack.tokens.admin) as http:
        return (await http.get(f"/v1/alarms/{alarm_uuid}")).status_code == 200


def browser(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, timeout=10, follow_redirects=False, headers={"accept": "text/html"}
    )


@pytest.fixture
def console(stack):
    fault = stack.start("fault")
    dashboard = stack.start("dashboard", ROOST_FAULT_URL=fault.url)
    return fault, dashboard


async def test_cross_origin_and_tokenless_form_posts_are_refused(stack, console):
    fault, dashboard = console
    victim = await raise_alarm(stack, fault)
    path = f"/alarms/{victim}/delete"
    async with browser(dashboard.url) as http:
        r = await login(http, stack.tokens.admin)
        assert r.status_code == 303, r.text
        token = await session_csrf(http)

        # Another site's page posting the form with the operator's cookie (and, worst case, a
        # CSRF token it somehow learnt): refused on its Origin, or its Referer without one.
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Referer": "http://evil.example/page"},
        ):
            r = await http.post(path, data={"csrf": token}, headers=headers)
            assert r.status_code == 403, (headers, r.status_code, r.text[:300])
            assert r.headers["content-type"].startswith("application/problem+json"), headers
            assert "cross-origin" in r.json()["detail"]

        # Same origin, but no CSRF token / a wrong one / another session's.
        async with browser(dashboard.url) as other:
            await login(other, stack.tokens.admin)
            theirs = await session_csrf(other)
        for data in ({}, {"csrf": ""}, {"csrf": "x" * 43}, {"csrf": theirs}):
            r = await http.post(path, data=data, headers={"Origin": origin_of(http)})
            assert r.status_code == 403, (data, r.status_code, r.text[:300])
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "CSRF" in r.json()["detail"]
        assert await alarm_exists(stack, fault, victim), "a refused post deleted the alarm"

        # The login form itself needs its token too.
        async with browser(dashboard.url) as anon:
            r = await anon.post(
                "/login",
                data={"token": stack.tokens.admin, "next": "/"},
                headers={"Origin": dashboard.url},
            )
            assert r.status_code == 403, r.text[:300]
            assert "roost_session" not in r.headers.get("set-cookie", "")

        # The page's own form post works.
        r = await http.post(path, data={"csrf": token}, headers={"Origin": origin_of(http)})
        assert r.status_code == 303 and r.headers["location"] == "/alarms", r.text[:300]
        assert not await alarm_exists(stack, fault, victim)

        metrics = (await http.get("/metrics")).text
        assert 'roost_dashboard_csrf_refused_total{reason="origin"} 3.0' in metrics
        assert 'roost_dashboard_csrf_refused_total{reason="token"} 4.0' in metrics


async def test_the_cookie_holds_a_session_not_the_token_and_logout_ends_it(stack, console):
    _, dashboard = console
    async with browser(dashboard.url) as http:
        r = await login(http, stack.tokens.admin)
        assert r.status_code == 303, r.text
        set_cookie = r.headers.get("set-cookie", "")
        assert stack.tokens.admin not in set_cookie, "the API token is in a cookie"
        for cookie in http.cookies.jar:
            assert stack.tokens.admin not in (cookie.value or ""), cookie.name
        session = http.cookies.get("roost_session")
        assert session, set_cookie
        assert "httponly" in set_cookie.lower() and "samesite=strict" in set_cookie.lower()
        assert (await http.get("/alarms")).status_code == 200

        page = await http.get("/")
        r = await http.post(
            "/logout", data={"csrf": csrf_in(page.text)}, headers={"Origin": origin_of(http)}
        )
        assert r.status_code == 303, r.text[:300]

    # The stolen cookie after logout: nothing.
    async with browser(dashboard.url) as thief:
        thief.cookies.set("roost_session", session)
        r = await thief.get("/alarms")
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), r.text[:200]
        # And the API token itself is no session either.
        thief.cookies.set("roost_session", stack.tokens.admin)
        r = await thief.get("/alarms")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


async def test_an_expired_session_is_refused(stack):
    fault = stack.start("fault")
    dashboard = stack.start("dashboard", ROOST_FAULT_URL=fault.url, ROOST_SESSION_TTL_S="3")
    victim = await raise_alarm(stack, fault)
    async with browser(dashboard.url) as http:
        r = await login(http, stack.tokens.admin)
        assert r.status_code == 303, r.text
        token = await session_csrf(http)
        assert (await http.get("/alarms")).status_code == 200
        session = http.cookies.get("roost_session")

    async with browser(dashboard.url) as late:
        late.cookies.set("roost_session", session)

        async def ended() -> bool:
            r = await late.get("/alarms")
            return r.status_code == 303 and "reason=expired" in r.headers["location"]

        await eventually(ended, timeout=15, interval=0.5, what="the session to expire")
        late.cookies.set("roost_session", session)  # the browser keeps sending it
        r = await late.post(
            f"/alarms/{victim}/delete", data={"csrf": token}, headers={"Origin": dashboard.url}
        )
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), r.text[:200]
    assert await alarm_exists(stack, fault, victim), "an expired session deleted the alarm"
