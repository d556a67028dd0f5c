"""The dashboard's pure parts: bus events shaped for browsers, API errors in words, the live
fan-out's bound, and what `make run` tells it."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest

from roost_dashboard import events, pages, web
from roost_dashboard.clients import ApiError, Services, TokenRejected
from roost_dashboard.live import Broadcaster, sse
from roost_dashboard.settings import DashboardSettings
from roost_shared.catalog import HostStateChanged
from roost_shared.events import Envelope
from roost_shared.metrics import Metrics
from roost_sim.aio import service_env

NOTICE = {
    "uuid": "a1",
    "alarm_id": "100.104",
    "alarm_state": "set",
    "entity_instance_id": "host=worker-1.filesystem=/var",
    "entity_type_id": "host.filesystem",
    "severity": "major",
    "reason_text": "<b>/var</b> is 91% full",
    "timestamp": "2026-01-01T00:00:00Z",
}


def test_an_alarm_notice_becomes_an_escaped_row_and_a_clear_a_removal():
    item = events.shape({"type": "fault.alarm.raised", "data": NOTICE})
    assert item is not None and item["kind"] == "alarm" and item["action"] == "raised"
    assert item["rank"] == 1 and 'id="alarm-a1"' in item["html"]
    assert "&lt;b&gt;/var&lt;/b&gt;" in item["html"] and "<b>" not in item["html"]
    cleared = events.shape({"type": "fault.alarm.cleared", "data": NOTICE})
    assert cleared is not None and cleared["action"] == "cleared" and "html" not in cleared


def test_host_and_group_events_carry_the_new_states():
    host = events.shape(
        {
            "type": "host.state.changed",
            "data": {
                "uuid": "h1",
                "hostname": "worker-0",
                "to_administrative": "locked",
                "to_operational": "disabled",
                "to_availability": "online",
                "cause": "lock requested",
            },
        }
    )
    assert host is not None
    assert (host["hostname"], host["administrative"], host["availability"]) == (
        "worker-0",
        "locked",
        "online",
    )
    group = events.shape(
        {"type": "service.group.updated", "data": {"name": "g", "state": "failed"}}
    )
    assert group == {"kind": "group", "action": "updated", "name": "g", "state": "failed"}
    report = {"group": "g", "hostname": "worker-0", "state": "running"}
    assert events.shape({"type": "agent.instance.changed", "data": report}) == {
        "kind": "instance",
        "group": "g",
        "host": "worker-0",
    }
    assert events.shape({"type": "agent.inventory.reported", "data": {}}) is None
    assert sse({"kind": "x", "v": 1}) == 'event: x\ndata: {"kind": "x", "v": 1}\n\n'


def _services(handler) -> Services:
    return Services(DashboardSettings(), httpx.AsyncClient(transport=httpx.MockTransport(handler)))


async def test_api_failures_become_sentences():
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"detail": "invalid token"})

    with pytest.raises(TokenRejected):
        await _services(refuse).get("fault", "/v1/alarms", "t")

    def conflict(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer t"
        return httpx.Response(409, json={"title": "Conflict", "detail": "lock it first"})

    with pytest.raises(ApiError) as err:
        await _services(conflict).post("host", "/v1/hosts/w/actions", "t", {"action": "reboot"})
    assert err.value.text == "The host service: lock it first" and err.value.status == 409

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(ApiError) as err:
        await _services(down).get("service", "/v1/service-groups", "t")
    assert "cannot be reached at http://127.0.0.1:8104" in err.value.text


async def test_a_browser_that_falls_behind_is_told_to_reload():
    class NoBus:
        connection = None

    b = Broadcaster(NoBus(), Metrics("dashboard-test"), (), events.shape)  # type: ignore[arg-type]
    async with b.subscribe() as q:
        for i in range(q.maxsize + 3):
            b.publish({"kind": "alarm", "n": i})
        items = [q.get_nowait() for _ in range(q.qsize())]
        assert items[-1] == {"kind": "reload"} and len(items) == q.maxsize
    assert not b.subscribers
    await asyncio.sleep(0)


async def test_a_page_gets_what_happened_while_it_loaded_or_is_told_to_reload():
    class NoBus:
        connection = None

    b = Broadcaster(NoBus(), Metrics("dashboard-test"), (), events.shape)  # type: ignore[arg-type]
    rendered_at = b.seq
    b.publish({"kind": "strategy", "state": "applying"})
    b.publish({"kind": "strategy", "state": "apply-failed"})
    async with b.subscribe(rendered_at) as q:  # the events after the page's number, in order
        assert [q.get_nowait()["state"] for _ in range(q.qsize())] == ["applying", "apply-failed"]
    async with b.subscribe(b.seq) as q:  # up to date: nothing replayed
        assert q.empty()
    async with b.subscribe(b.seq + 7) as q:  # a page of an earlier dashboard process
        assert q.get_nowait() == {"kind": "reload"} and q.empty()
    for i in range(q.maxsize + 1):
        b.publish({"kind": "alarm", "n": i})
    async with b.subscribe(rendered_at) as q:  # older than what is kept
        assert q.get_nowait() == {"kind": "reload"} and q.empty()


async def test_live_pages_show_only_events_from_their_owner():
    class NoBus:
        connection = None

    @dataclass
    class Message:
        body: bytes
        user_id: str | None
        routing_key: str = "host.state.changed"

    b = Broadcaster(NoBus(), Metrics("dashboard-test"), (), events.shape)  # type: ignore[arg-type]
    change = Envelope.of(
        HostStateChanged(
            uuid=str(uuid.uuid4()),
            hostname="worker-0",
            from_administrative="locked",
            from_operational="disabled",
            from_availability="online",
            to_administrative="unlocked",
            to_operational="enabled",
            to_availability="available",
            cause="test",
            reason="operator-request",
            time=datetime.now(UTC),
        ),
        source="roost/host",
    )
    body = change.model_dump_json().encode()
    async with b.subscribe() as q:
        for forger in (None, "guest", "roost-config", "roost-agent"):
            await b._on_message(Message(body, forger))  # type: ignore[arg-type]
        assert q.empty()
        await b._on_message(Message(body, "roost-host"))  # type: ignore[arg-type]
        assert q.get_nowait()["kind"] == "host"


def test_make_run_points_the_dashboard_at_every_service():
    env = service_env("dashboard", ["dashboard", "config", "fault", "host", "service"], {})
    assert env == {
        "ROOST_FAULT_URL": "http://127.0.0.1:8102",
        "ROOST_CONFIG_URL": "http://127.0.0.1:8101",
        "ROOST_HOST_URL": "http://127.0.0.1:8103",
        "ROOST_SERVICE_URL": "http://127.0.0.1:8104",
    }


def test_after_login_only_a_local_path():
    assert web.local_path("/hosts/worker-0") == "/hosts/worker-0"
    for bad in ("//evil.example/x", "https://evil.example/", "/login?next=/", "\\\\x", ""):
        assert web.local_path(bad) == "/"


def test_the_timeline_becomes_availability_segments_up_to_now():
    def entry(t: str, availability: str) -> dict:
        return {"time": f"2026-01-01T00:00:{t}Z", "to": {"availability": availability}}

    now = datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    chart = pages.availability_chart(
        [
            entry("05", "available"),
            entry("00", "online"),
            entry("04", "intest"),
            entry("08", "available"),
        ],
        now,
    )
    assert [(c["availability"], c["x"], c["width"]) for c in chart] == [
        ("online", 0.0, 40.0),
        ("intest", 40.0, 10.0),
        ("available", 50.0, 50.0),
    ]
    assert pages.availability_chart([], now) == []


def test_login_resumes_pages_only():
    from starlette.requests import Request

    def request(method: str, path: str) -> Request:
        return Request({"type": "http", "method": method, "path": path, "headers": []})

    assert web.resume(request("GET", "/hosts/worker-0")) == "%2Fhosts%2Fworker-0"
    assert web.resume(request("POST", "/hosts/worker-0/actions")) == "%2F"
    assert web.resume(request("GET", "/events/stream")) == "%2F"


STRATEGY = {
    "uuid": "s1",
    "release": "roost-1.1.0",
    "version": "1.1.0",
    "state": "apply-failed",
    "controller_apply_type": "serial",
    "worker_apply_type": "parallel",
    "max_parallel_worker_hosts": 2,
    "default_instance_action": "migrate",
    "alarm_restrictions": "strict",
    "stop_on_failure": True,
    "reason": "worker-0: <b>no space</b>",
    "current_stage": 1,
    "steps_done": 3,
    "steps_total": 5,
    "created_at": "2026-01-01T00:00:00.123456Z",
    "started_at": "2026-01-01T00:00:01Z",
    "finished_at": None,
    "stages": [
        {
            "index": 0,
            "name": "deploy-start",
            "hosts": [],
            "state": "done",
            "reason": "",
            "steps": [{"name": "start-deploy", "hosts": [], "state": "done", "reason": ""}],
        },
        {
            "index": 1,
            "name": "workers",
            "hosts": ["worker-0", "worker-1"],
            "state": "failed",
            "reason": "install failed",
            "steps": [
                {"name": "lock", "hosts": ["worker-0"], "state": "done", "reason": ""},
                {"name": "install", "hosts": ["worker-0"], "state": "in-progress", "reason": ""},
                {"name": "unlock", "hosts": ["worker-0"], "state": "failed", "reason": "no"},
            ],
        },
    ],
}


def test_software_events_carry_what_the_pages_patch():
    data = {
        "uuid": "s1",
        "release_id": "roost-1.1.0",
        "state": "applying",
        "stage": 1,
        "stages": 3,
        "steps_done": 4,
        "steps_total": 9,
        "current": "workers worker-0: lock",
        "reason": "",
    }
    item = events.shape({"type": "software.strategy.changed", "data": data})
    assert item is not None and item["kind"] == "strategy"
    assert (item["release"], item["steps_done"], item["steps_total"], item["current"]) == (
        "roost-1.1.0",
        4,
        9,
        "workers worker-0: lock",
    )
    host = events.shape(
        {
            "type": "software.host.changed",
            "data": {"hostname": "worker-0", "release_id": "r", "state": "installed"},
        }
    )
    assert host is not None and (host["kind"], host["hostname"]) == ("swhost", "worker-0")
    release = events.shape(
        {"type": "software.release.changed", "data": {"id": "r", "version": "1", "state": "x"}}
    )
    assert release is not None and release["kind"] == "release"
    assert "software.strategy.changed" in events.BINDINGS


def test_the_step_in_progress_in_words_as_the_software_service_says_it():
    assert pages.current_step(STRATEGY) == "workers worker-0, worker-1: install"
    assert pages.current_step({**STRATEGY, "current_stage": None}) == ""
    assert pages.current_step(None) == ""


async def test_an_unset_software_url_is_not_configured_not_an_error_trace():
    services = Services.create(DashboardSettings(software_url=None))
    try:
        assert not services.configured("software")
        with pytest.raises(ApiError) as caught:
            await services.get("software", "/v1/strategy", "t")
        assert caught.value.text == "The software service is not configured (ROOST_SOFTWARE_URL)."
    finally:
        await services.close()


def test_the_strategy_marks_failures_and_offers_readers_no_controls():
    from roost_shared.auth import Role

    def rendered(role: Role) -> str:
        return web.templates.get_template("_software_strategy.html").render(
            op=web.Operator("t", role),
            strategy=web.Section(STRATEGY),
            current=pages.current_step(STRATEGY),
            strategy_actions={k: v[0] for k, v in pages.STRATEGY_ACTIONS.items()},
        )

    admin = rendered(Role.admin)
    assert 'value="3"' in admin and 'max="5"' in admin
    assert admin.count('class="step-row failed"') == 1 and 'class="stage failed current"' in admin
    assert "&lt;b&gt;no space&lt;/b&gt;" in admin and "<b>" not in admin
    assert "2026-01-01 00:00:00" in admin and "(up to 2 at a time)" in admin
    assert 'action="/software/strategy/confirm"' in admin
    # apply-failed: Apply (resume) offered, Abort hidden
    assert 'data-when-strategy="applying" hidden' in admin
    reader = rendered(Role.reader)
    assert "/software/strategy/confirm" not in reader and "<button" not in reader


def test_every_host_action_the_host_service_offers_is_offered_with_its_warning():
    from roost_host.models import Action

    assert set(web.HOST_ACTIONS) == {a.value for a in Action}
    assert "FORCED" in web.HOST_ACTIONS["force-lock"][1]
    for cut in ("reset", "power-off", "reinstall"):
        assert "cuts the host" in web.HOST_ACTIONS[cut][1], cut


def test_uptime_is_time_since_the_host_became_enabled_available():
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    up = {"operational": "enabled", "availability": "available"}
    assert web.uptime({**up, "state_changed_at": "2026-01-02T03:04:00Z"}, now) == "5s"
    assert web.uptime({**up, "state_changed_at": "2026-01-02T02:00:00+00:00"}, now) == "1h 4m"
    assert web.uptime({**up, "state_changed_at": "2025-12-30T03:00:00"}, now) == "3d 0h"
    assert web.uptime({**up, "state_changed_at": "2026-01-02T03:00:00Z"}, now) == "4m 5s"
    down = {"operational": "disabled", "availability": "online", "state_changed_at": "2026-01-02"}
    assert web.uptime(down, now) == "—"
    assert web.uptime({**up, "state_changed_at": None}, now) == "—"


def test_reason_search_filters_the_fetched_page_in_any_case():
    records = [{"reason_text": "Disk /var FULL"}, {"reason_text": "fan"}, {"reason_text": None}]
    assert pages.reason_matches(records, "var full") == [records[0]]
    assert pages.reason_matches(records, "nothing") == []


def test_a_token_removed_from_the_tokens_file_is_revoked(tmp_path):
    from roost_shared.auth import Authenticator, Role, write_tokens_file

    path = tmp_path / "tokens.json"
    write_tokens_file(path, {"admin": (Role.admin, "a" * 20), "reader": (Role.reader, "r" * 20)})
    settings = DashboardSettings(auth_tokens_file=path)
    watch = web.TokenWatch(settings, Authenticator(settings))
    assert watch.principal("r" * 20).role is Role.reader
    assert watch.principal("someone-else") is None  # unknown: not revoked (the APIs decide)
    write_tokens_file(path, {"admin": (Role.admin, "a" * 20)})
    with pytest.raises(TokenRejected):
        watch.principal("r" * 20)
    assert watch.principal("a" * 20).role is Role.admin
    path.write_text("[{half")  # being rewritten: the previous tokens stay
    assert watch.principal("a" * 20).role is Role.admin
    write_tokens_file(path, {"admin": (Role.admin, "a" * 20), "reader": (Role.reader, "r" * 20)})
    assert watch.principal("r" * 20).role is Role.reader  # listed again: no longer revoked


def test_sessions_expire_end_and_are_bounded():
    from roost_dashboard.sessions import SessionStore

    now = [0.0]
    store = SessionStore(10.0, max_sessions=3, clock=lambda: now[0])
    sid, session = store.create("the-token")
    assert store.get(sid) is session and session.token == "the-token"
    assert sid != "the-token" and len(sid) >= 43 and session.csrf_ok(session.csrf)
    assert not session.csrf_ok("") and not session.csrf_ok(None) and not session.csrf_ok("x")
    assert store.get("guess") is None and store.get(None) is None
    now[0] = 10.0
    assert store.get(sid) is None  # expired: gone
    ids = [store.create(f"t{i}")[0] for i in range(4)]
    assert len(store) == 3 and store.get(ids[0]) is None  # the oldest ended for the newest
    store.end(ids[3])
    assert store.get(ids[3]) is None and store.get(ids[2]) is not None


def test_throttled_log_says_how_many_it_left_out(caplog):
    import logging

    from roost_shared.bodylimit import ThrottledLog

    now = [0.0]
    throttled = ThrottledLog(logging.getLogger("t"), every_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(5):
            throttled.warning("10.0.0.1", "refused %s", "x")
        now[0] = 61
        throttled.warning("10.0.0.1", "refused %s", "x")
    assert [r.getMessage() for r in caplog.records] == [
        "refused x",
        "refused x (4 more like it not logged since)",
    ]
