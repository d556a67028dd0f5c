"""The pages: thin routes that call the service APIs with the operator's token and render.

Each page gathers its sections concurrently; a section whose API fails shows a readable message
in its place (the rest of the page still renders). A token an API refuses sends the browser to
the login page. Mutations go through a confirmation page, then the same API call the CLI makes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from roost_dashboard import csrf
from roost_dashboard.clients import ApiError, TokenRejected
from roost_dashboard.live import sse
from roost_dashboard.web import (
    BMC_ACTIONS,
    COOKIE,
    EVENTS_PAGE,
    HOST_ACTIONS,
    LOGIN_REASONS,
    SEVERITIES,
    Dashboard,
    Operator,
    Section,
    all_pages,
    back,
    check_csrf,
    check_login_csrf,
    dash,
    label,
    local_path,
    operator,
    render,
    sections,
)

router = APIRouter(include_in_schema=False)


# Actions ----------------------------------------------------------------------------------------


async def act(work: Awaitable[Any], *, failed: tuple[str, str], done: tuple[str, str]) -> Response:
    """Run one API action and go back to a page with its outcome: ``failed`` = (page, message)
    with the API's reason appended, ``done`` = (page, message). A refused token propagates (to
    the login page)."""
    try:
        await work
    except TokenRejected:
        raise
    except ApiError as exc:
        return back(failed[0], problem=f"{failed[1]} {exc.text}")
    return back(done[0], notice=done[1])


# Login ------------------------------------------------------------------------------------------


def login_form(request: Request, status: int = 200, *, reason: str, next: str) -> Response:
    """The login page, with the login form's CSRF token (in a cookie and in the form)."""
    token = request.cookies.get(csrf.LOGIN_COOKIE) or secrets.token_urlsafe(32)
    response = render(request, "login.html", status, reason=reason, next=next, csrf=token)
    response.set_cookie(
        csrf.LOGIN_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=dash(request).settings.cookie_secure,
        path="/login",
    )
    return response


@router.get("/login")
async def login_page(request: Request, reason: str = "", next: str = "/") -> Response:
    words = LOGIN_REASONS.get(reason, "")
    return login_form(request, reason=words, next=local_path(next))


@router.post("/login", dependencies=[Depends(check_login_csrf)])
async def login(request: Request, token: str = Form(""), next: str = Form("/")) -> Response:
    token = token.strip()
    if not token:
        return login_form(request, 400, reason="Paste a token to log in.", next=local_path(next))
    if len(token) > 1024 or not (token.isascii() and token.isprintable()):
        # No token looks like this, and it cannot even be sent on to an API as a header (it
        # was "could not be checked", a 503, as if the APIs were down).
        return login_form(request, 401, reason="That token was refused.", next=local_path(next))
    d = dash(request)
    try:
        d.principal(token)  # revoked since the dashboard started: refused here
        await d.services.get("fault", "/v1/alarms/summary", token)
    except TokenRejected:
        return login_form(request, 401, reason="That token was refused.", next=local_path(next))
    except ApiError as exc:
        if d.principal(token) is None:
            return login_form(
                request,
                503,
                reason=f"The token could not be checked. {exc.text}",
                next=local_path(next),
            )
    assert d.sessions is not None
    d.sessions.end(request.cookies.get(COOKIE))  # a new login replaces the old session
    session_id, _ = d.sessions.create(token)
    response = RedirectResponse(local_path(next), status_code=303)
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(d.settings.session_ttl_s),
        httponly=True,
        samesite="strict",
        secure=d.settings.cookie_secure,
        path="/",
    )
    response.delete_cookie(csrf.LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout", dependencies=[Depends(check_csrf)])
async def logout(request: Request) -> Response:
    sessions = dash(request).sessions
    assert sessions is not None
    sessions.end(request.cookies.get(COOKIE))
    response = RedirectResponse("/login?reason=logged-out", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# Overview ---------------------------------------------------------------------------------------


async def overview_data(d: Dashboard, op: Operator) -> dict[str, Any]:
    software = d.services.configured("software")
    hosts, summary, groups, update = await sections(
        all_pages(d.services, "host", "/v1/hosts", "hosts", op.token),
        d.services.get("fault", "/v1/alarms/summary", op.token),
        all_pages(d.services, "service", "/v1/service-groups", "service_groups", op.token),
        d.services.get("software", "/v1/strategy", op.token) if software else _nothing(),
    )
    if update.status == 404:  # no strategy: no update in progress
        update = Section()
    by_availability = Counter(h["availability"] for h in hosts.value or [])
    by_admin = Counter(h["administrative"] for h in hosts.value or [])
    troubled = [g for g in groups.value or [] if g.get("state") in ("degraded", "failed")]
    return {
        "hosts": hosts,
        "by_availability": sorted(by_availability.items()),
        "by_admin": sorted(by_admin.items()),
        "summary": summary,
        "groups": groups,
        "group_states": sorted(Counter(g.get("state") for g in groups.value or []).items()),
        "troubled": troubled,
        "software_configured": software,
        "update": update,
        "update_current": current_step(update.value),
        "update_shown": UPDATE_SHOWN,
    }


async def _nothing() -> None:
    return None


@router.get("/")
async def overview(request: Request) -> HTMLResponse:
    op = operator(request)
    data = await overview_data(dash(request), op)
    return render(request, "overview.html", op=op, **data)


@router.get("/fragments/overview")
async def overview_fragment(request: Request) -> HTMLResponse:
    """The live part of the overview (the page's script fetches it after an event)."""
    op = operator(request)
    data = await overview_data(dash(request), op)
    return render(request, "_overview_counts.html", op=op, **data)


# Hosts ------------------------------------------------------------------------------------------


@router.get("/hosts")
async def hosts_page(request: Request) -> HTMLResponse:
    op = operator(request)
    d = dash(request)
    hosts, config = await sections(
        all_pages(d.services, "host", "/v1/hosts", "hosts", op.token),
        all_pages(d.services, "config", "/v1/hosts", "hosts", op.token),
    )
    by_uuid = {h["uuid"]: h for h in config.value or []}
    return render(request, "hosts.html", op=op, hosts=hosts, config=config, by_uuid=by_uuid)


@router.get("/fragments/hosts/{ref}/timeline")
async def host_timeline_fragment(request: Request, ref: str) -> HTMLResponse:
    """A host's timeline section (chart and table): the host page's script fetches it again
    after a ``host.state.changed`` event for that host."""
    op = operator(request)
    (timeline,) = await sections(
        dash(request).services.get("host", f"/v1/hosts/{quote(ref)}/timeline", op.token, limit=100)
    )
    chart = availability_chart((timeline.value or {}).get("timeline", []))
    return render(request, "_host_timeline.html", op=op, ref=ref, timeline=timeline, chart=chart)


@router.get("/hosts/{ref}")
async def host_page(request: Request, ref: str) -> HTMLResponse:
    op = operator(request)
    d = dash(request)
    host, timeline, config, inventory, sensors, alarms = await sections(
        d.services.get("host", f"/v1/hosts/{quote(ref)}", op.token),
        d.services.get("host", f"/v1/hosts/{quote(ref)}/timeline", op.token, limit=100),
        d.services.get("config", f"/v1/hosts/{quote(ref)}/config", op.token),
        d.services.get("config", f"/v1/hosts/{quote(ref)}/inventory", op.token),
        d.services.get("host", f"/v1/hosts/{quote(ref)}/sensors", op.token),
        d.services.get(
            "fault",
            "/v1/alarms",
            op.token,
            **{"q.field": "entity_instance_id", "q.op": "eq", "q.value": f"host={ref}"},
        ),
    )
    if alarms.value:  # FM's eq is a substring match: host=worker-1 would find worker-10's
        entity = f"host={(host.value or {}).get('hostname') or ref}"
        alarms.value["alarms"] = [
            a
            for a in alarms.value.get("alarms", [])
            if a["entity_instance_id"] == entity or a["entity_instance_id"].startswith(entity + ".")
        ]
    chart = availability_chart((timeline.value or {}).get("timeline", []))
    # Not there (a host known to the host service only, no inventory reported yet): no error.
    config, inventory, sensors = (
        Section() if x.status == 404 else x for x in (config, inventory, sensors)
    )
    return render(
        request,
        "host.html",
        op=op,
        ref=ref,
        host=host,
        timeline=timeline,
        config=config,
        inventory=inventory,
        sensors=sensors,
        alarms=alarms,
        actions=HOST_ACTIONS,
        bmc_actions=BMC_ACTIONS,
        chart=chart,
    )


def availability_chart(entries: list[dict[str, Any]], now: datetime | None = None) -> list[dict]:
    """The timeline as availability segments for a time bar: each ``{availability, start, end,
    x, width}`` with x and width in percent of the span from the first entry to now."""
    points = sorted(
        (datetime.fromisoformat(e["time"].replace("Z", "+00:00")), e["to"]["availability"])
        for e in entries
    )
    if not points:
        return []
    now = now or datetime.now(UTC)
    span = max((now - points[0][0]).total_seconds(), 1e-3)
    segments = []
    for i, (start, availability) in enumerate(points):
        end = points[i + 1][0] if i + 1 < len(points) else now
        if segments and segments[-1]["availability"] == availability:
            segments[-1]["end"] = end
            continue
        segments.append({"availability": availability, "start": start, "end": end})
    for seg in segments:
        seg["x"] = round((seg["start"] - points[0][0]).total_seconds() / span * 100, 3)
        seg["width"] = round(max((seg["end"] - seg["start"]).total_seconds() / span * 100, 0.2), 3)
    return segments


#: Routes with required form or query fields check the session first: without it FastAPI would
#: answer 422 for the missing fields before the handler could send the caller to the login page.
SESSION_FIRST = [Depends(operator)]
#: Every form post: the session first (else the login page), then its CSRF token.
FORM_POST = [Depends(check_csrf)]


@router.get("/hosts/{ref}/confirm", dependencies=SESSION_FIRST)
async def host_confirm(request: Request, ref: str, action: str) -> Response:
    op = operator(request)
    if action not in HOST_ACTIONS:
        return back(f"/hosts/{quote(ref)}", problem=f"Unknown action {action!r}.")
    if not op.is_admin:
        return back(f"/hosts/{quote(ref)}", problem="Only an admin can act on hosts.")
    return render(
        request,
        "confirm.html",
        op=op,
        title=f"{label(action)} {ref}?",
        question=f"{label(action)} host {ref}?",
        explain=HOST_ACTIONS[action][1],
        form_action=f"/hosts/{quote(ref)}/actions",
        fields={"action": action},
        confirm_label=f"Yes, {action.replace('-', ' ')} {ref}",
        cancel=f"/hosts/{quote(ref)}",
        danger=action in ("force-lock", "reset", "power-off", "reinstall"),
    )


@router.post("/hosts/{ref}/actions", dependencies=FORM_POST)
async def host_action(request: Request, ref: str, action: str = Form(...)) -> Response:
    op = operator(request)
    where = f"/hosts/{quote(ref)}"
    if action not in HOST_ACTIONS:
        return back(where, problem=f"Unknown action {action!r}.")
    return await act(
        dash(request).services.post(
            "host", f"/v1/hosts/{quote(ref)}/actions", op.token, {"action": action}
        ),
        failed=(where, f"{label(action)} failed."),
        done=(where, f"{label(action)} requested for {ref}."),
    )


# Alarms and events ------------------------------------------------------------------------------


@router.get("/alarms")
async def alarms_page(
    request: Request, severity: str = "", suppressed: str = "", marker: str = ""
) -> HTMLResponse:
    op = operator(request)
    d = dash(request)
    severity = severity if severity in SEVERITIES else ""
    size = d.settings.alarms_page_size
    q: dict[str, Any] = {"limit": size, "marker": marker or None}
    if severity:
        q |= {"q.field": "severity", "q.op": "eq", "q.value": severity}
    if suppressed:
        q["include_suppress"] = "True"
    (alarms,) = await sections(d.services.get("fault", "/v1/alarms", op.token, **q))
    shown = (alarms.value or {}).get("alarms", [])
    more = bool((alarms.value or {}).get("next")) and len(shown) == size
    return render(
        request,
        "alarms.html",
        op=op,
        alarms=alarms,
        severity=severity,
        suppressed=bool(suppressed),
        severities=SEVERITIES,
        marker=marker,
        next_marker=shown[-1]["uuid"] if more else "",
    )


@router.get("/alarms/{uuid}")
async def alarm_page(request: Request, uuid: str) -> HTMLResponse:
    op = operator(request)
    (alarm,) = await sections(
        dash(request).services.get("fault", f"/v1/alarms/{quote(uuid)}", op.token)
    )
    return render(request, "alarm.html", op=op, alarm=alarm, uuid=uuid)


async def suppression_entry(d: Dashboard, op: Operator, alarm_id: str) -> dict[str, Any] | None:
    body = await d.services.get("fault", "/v1/event_suppression", op.token)
    return next((e for e in body["event_suppression"] if e["alarm_id"] == alarm_id), None)


@router.get("/alarms/{uuid}/confirm-suppression", dependencies=SESSION_FIRST)
async def suppression_confirm(request: Request, uuid: str, alarm_id: str, to: str) -> Response:
    op = operator(request)
    if to not in ("suppressed", "unsuppressed"):
        return back(f"/alarms/{quote(uuid)}", problem=f"Unknown suppression state {to!r}.")
    verb = "Suppress" if to == "suppressed" else "Unsuppress"
    return render(
        request,
        "confirm.html",
        op=op,
        title=f"{verb} alarm id {alarm_id}?",
        question=f"{verb} every alarm and log with id {alarm_id}?",
        explain=(
            "They stay stored and counted apart, but leave the default lists."
            if to == "suppressed"
            else "They show in the default lists again."
        ),
        form_action=f"/alarms/{quote(uuid)}/suppression",
        fields={"alarm_id": alarm_id, "to": to},
        confirm_label=f"Yes, {verb.lower()} {alarm_id}",
        cancel=f"/alarms/{quote(uuid)}",
    )


@router.post("/alarms/{uuid}/suppression", dependencies=FORM_POST)
async def suppression(
    request: Request, uuid: str, alarm_id: str = Form(...), to: str = Form(...)
) -> Response:
    op = operator(request)
    d = dash(request)
    where = f"/alarms/{quote(uuid)}"
    if to not in ("suppressed", "unsuppressed"):
        return back(where, problem=f"Unknown suppression state {to!r}.")
    patch = [{"op": "replace", "path": "/suppression_status", "value": to}]
    try:
        entry = await suppression_entry(d, op, alarm_id)
        if entry is None:
            return back(where, problem=f"Alarm id {alarm_id} has no suppression entry.")
        await d.services.call(
            "fault", "PATCH", f"/v1/event_suppression/{quote(entry['uuid'])}", op.token, json=patch
        )
    except TokenRejected:
        raise
    except ApiError as exc:
        return back(where, problem=f"Changing the suppression failed. {exc.text}")
    return back(where, notice=f"Alarm id {alarm_id} is now {to}.")


@router.get("/alarms/{uuid}/confirm-delete")
async def alarm_delete_confirm(request: Request, uuid: str) -> HTMLResponse:
    op = operator(request)
    return render(
        request,
        "confirm.html",
        op=op,
        title="Delete this alarm?",
        question=f"Clear alarm {uuid} by hand?",
        explain="It leaves the active list and the event log records the clear. If its cause "
        "remains, whatever raised it may raise it again.",
        form_action=f"/alarms/{quote(uuid)}/delete",
        fields={},
        confirm_label="Yes, delete the alarm",
        cancel=f"/alarms/{quote(uuid)}",
    )


@router.post("/alarms/{uuid}/delete", dependencies=FORM_POST)
async def alarm_delete(request: Request, uuid: str) -> Response:
    op = operator(request)
    return await act(
        dash(request).services.call("fault", "DELETE", f"/v1/alarms/{quote(uuid)}", op.token),
        failed=(f"/alarms/{quote(uuid)}", "Delete failed."),
        done=("/alarms", f"Alarm {uuid} deleted."),
    )


def reason_matches(records: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The records whose reason text contains ``text`` (any case)."""
    needle = text.casefold()
    return [r for r in records if needle in str(r.get("reason_text") or "").casefold()]


@router.get("/events")
async def events_page(
    request: Request,
    marker: str = "",
    kind: str = "",
    entity: str = "",
    event_id: str = "",
    text: str = "",
) -> HTMLResponse:
    """The event log, newest first, 50 a page. Kind, entity and event id are the fault API's
    own filters (server-side; its ``eq`` is a substring match, several are ANDed). The fault
    API cannot search reason text: with ``text`` the dashboard fetches one page of
    ``events_search_scan`` events (after the other filters) and keeps those whose reason
    contains it; "Older" continues the search after what was looked through."""
    op = operator(request)
    d = dash(request)
    kind = kind if kind in ("alarms", "logs") else ""
    entity, event_id, text = entity.strip(), event_id.strip(), text.strip()
    scan = d.settings.events_search_scan if text else EVENTS_PAGE
    params: dict[str, Any] = {"limit": scan, "marker": marker or None}
    if kind:
        params[kind] = "True"
    fields, values = [], []
    if entity:  # FM's eq on entity_instance_id matches a substring
        fields.append("entity_instance_id")
        values.append(entity)
    if event_id:
        fields.append("event_log_id")
        values.append(event_id)
    if fields:
        params |= {"q.field": fields, "q.op": ["eq"] * len(fields), "q.value": values}
    (log,) = await sections(d.services.get("fault", "/v1/event_log", op.token, **params))
    fetched = (log.value or {}).get("event_log", [])
    more = bool((log.value or {}).get("next")) and len(fetched) == scan
    records = fetched
    next_marker = fetched[-1]["uuid"] if more else ""
    if text:
        records = reason_matches(fetched, text)
        if len(records) > EVENTS_PAGE:  # the next page starts after the last match shown
            records = records[:EVENTS_PAGE]
            next_marker = records[-1]["uuid"]
    return render(
        request,
        "events.html",
        op=op,
        log=log,
        records=records,
        kind=kind,
        entity=entity,
        event_id=event_id,
        text=text,
        scanned=len(fetched),
        scan=scan,
        marker=marker,
        next_marker=next_marker,
    )


# Services ----------------------------------------------------------------------------------


@router.get("/services")
async def services_page(request: Request) -> HTMLResponse:
    op = operator(request)
    d = dash(request)
    (groups,) = await sections(
        all_pages(d.services, "service", "/v1/service-groups", "service_groups", op.token)
    )
    instances = await sections(
        *(
            d.services.get("service", f"/v1/service-groups/{quote(g['name'])}/instances", op.token)
            for g in groups.value or []
        )
    )
    rows = list(zip(groups.value or [], instances, strict=True))
    return render(request, "services.html", op=op, groups=groups, rows=rows)


@router.get("/services/{name}/confirm-swact")
async def swact_confirm(request: Request, name: str) -> HTMLResponse:
    op = operator(request)
    return render(
        request,
        "confirm.html",
        op=op,
        title=f"Swact {name}?",
        question=f"Switch activity of service group {name} to its standby?",
        explain="The active instances stop and the standby host takes over.",
        form_action=f"/services/{quote(name)}/swact",
        fields={},
        confirm_label=f"Yes, swact {name}",
        cancel="/services",
    )


@router.post("/services/{name}/swact", dependencies=FORM_POST)
async def swact(request: Request, name: str) -> Response:
    op = operator(request)
    return await act(
        dash(request).services.post("service", f"/v1/service-groups/{quote(name)}/swact", op.token),
        failed=("/services", f"Swact of {name} failed."),
        done=("/services", f"Swact of {name} requested."),
    )


# Software ---------------------------------------------------------------------------------------

#: Strategy actions offered: the strategy states each is offered in, and what the confirmation
#: says (the software service checks again).
STRATEGY_ACTIONS = {
    "apply": (
        ("ready-to-apply", "aborted", "apply-failed"),
        "The strategy runs stage by stage: hosts are locked, updated and unlocked in turn "
        "(an aborted or failed one resumes from its first step not done).",
    ),
    "abort": (
        ("applying",),
        "The stage in flight finishes (its hosts come back in service), then the strategy stops.",
    ),
}
#: Strategy states the overview's update card shows (otherwise: no update in progress).
UPDATE_SHOWN = ("applying", "aborting", "apply-failed")
SOFTWARE_PARTS = ("strategy", "deploy", "releases")


def current_step(strategy: dict[str, Any] | None) -> str:
    """The step in progress in words, as the software service's progress events say it:
    ``<stage> <hosts>: <step>``."""
    if not strategy or strategy.get("current_stage") is None:
        return ""
    stages = strategy.get("stages") or []
    index = strategy["current_stage"]
    if not 0 <= index < len(stages):
        return ""
    stage = stages[index]
    step = next((s for s in stage.get("steps", []) if s.get("state") == "in-progress"), None)
    hosts = ", ".join(stage.get("hosts") or [])
    words = stage.get("name", "") + (f" {hosts}" if hosts else "")
    return words + (f": {step['name']}" if step else "")


async def software_data(d: Dashboard, op: Operator, parts: tuple[str, ...]) -> dict[str, Any]:
    """What the software page (or one of its live parts) shows."""
    if not d.services.configured("software"):
        return {"configured": False}
    calls: dict[str, Awaitable[Any]] = {}
    if "strategy" in parts:
        calls["strategy"] = d.services.get("software", "/v1/strategy", op.token)
    if "deploy" in parts:
        calls["deploy"] = d.services.get("software", "/v1/deploy", op.token)
        calls["sw_hosts"] = d.services.get("software", "/v1/hosts", op.token)
    if "releases" in parts:
        calls["releases"] = all_pages(d.services, "software", "/v1/releases", "releases", op.token)
    got = dict(zip(calls, await sections(*calls.values()), strict=True))
    for key in ("strategy", "deploy"):  # none is not an error
        if key in got and got[key].status == 404:
            got[key] = Section()
    strategy = got.get("strategy", Section()).value
    return {
        "configured": True,
        **got,
        "current": current_step(strategy),
        "strategy_actions": {k: v[0] for k, v in STRATEGY_ACTIONS.items()},
        "update_shown": UPDATE_SHOWN,
    }


@router.get("/software")
async def software_page(request: Request) -> HTMLResponse:
    op = operator(request)
    data = await software_data(dash(request), op, SOFTWARE_PARTS)
    return render(request, "software.html", op=op, **data)


@router.get("/fragments/software/{part}")
async def software_fragment(request: Request, part: str) -> Response:
    """One live part of the software page (its script fetches it after an event)."""
    op = operator(request)
    if part not in SOFTWARE_PARTS:
        return Response(status_code=404)
    data = await software_data(dash(request), op, (part,))
    if not data["configured"]:
        return Response(status_code=404)
    return render(request, f"_software_{part}.html", op=op, **data)


@router.get("/software/strategy/confirm", dependencies=SESSION_FIRST)
async def strategy_confirm(request: Request, action: str) -> Response:
    op = operator(request)
    if action not in STRATEGY_ACTIONS:
        return back("/software", problem=f"Unknown action {action!r}.")
    return render(
        request,
        "confirm.html",
        op=op,
        title=f"{label(action)} the update strategy?",
        question=f"{label(action)} the software update strategy?",
        explain=STRATEGY_ACTIONS[action][1],
        form_action="/software/strategy/actions",
        fields={"action": action},
        confirm_label=f"Yes, {action} the strategy",
        cancel="/software",
    )


@router.post("/software/strategy/actions", dependencies=FORM_POST)
async def strategy_action(request: Request, action: str = Form(...)) -> Response:
    op = operator(request)
    if action not in STRATEGY_ACTIONS:
        return back("/software", problem=f"Unknown action {action!r}.")
    return await act(
        dash(request).services.post("software", f"/v1/strategy/{action}", op.token),
        failed=("/software", f"{label(action)} of the strategy failed."),
        done=("/software", f"{label(action)} of the strategy requested."),
    )


# Live -------------------------------------------------------------------------------------------


@router.get("/events/stream")
async def stream(request: Request, since: int | None = None) -> Response:
    """Server-sent events: alarms raised/changed/cleared, host transitions, service groups.

    The session and its token are checked again every ``stream_token_check_s`` (the tokens
    file re-read; a token the dashboard does not list is asked of the fault API): when the
    session has ended or the token is revoked or refused, the stream sends ``revoked`` and
    ends (the page's script then reloads, which lands on the login page).
    ``since``: the page's ``live_seq``; the events after it are sent first (see ``live``).
    """
    op = operator(request)
    d = dash(request)
    listed = d.principal(op.token) is not None
    if not listed:
        await d.services.get("fault", "/v1/alarms/summary", op.token)  # 401 → login
    assert d.live is not None
    keepalive = d.settings.stream_keepalive_s
    every = d.settings.stream_token_check_s

    session_id = request.cookies.get(COOKIE)

    async def still_valid() -> bool:
        assert d.sessions is not None
        if d.sessions.get(session_id) is None:  # expired or logged out meanwhile
            return False
        try:
            if d.principal(op.token) is not None:
                return True
            if listed:  # listed at start, gone from the file now
                return False
            await d.services.get("fault", "/v1/alarms/summary", op.token)
        except TokenRejected:
            return False
        except ApiError:
            return True  # cannot tell now: the next check decides
        return True

    async def events():
        async with d.live.subscribe(since) as queue:
            yield "retry: 1000\nevent: hello\ndata: {}\n\n"
            checked = time.monotonic()
            while True:
                wait = max(min(keepalive, checked + every - time.monotonic()), 0.01)
                try:
                    item = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    item = None
                if time.monotonic() - checked >= every:
                    checked = time.monotonic()
                    if not await still_valid():
                        yield 'event: revoked\ndata: {"kind": "revoked"}\n\n'
                        return
                if item is None:  # idle: a keep-alive (at least every ``keepalive`` s)
                    yield ": keepalive\n\n"
                    continue
                if item["kind"] == "bye":
                    return
                yield sse(item)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
