"""schemathesis against every service's OpenAPI finds no 500s (issue 9).

Every service (and the dashboard's JSON routes) runs as a real process; its live
``/openapi.json`` is loaded with schemathesis and every operation gets a bounded number of
generated requests, valid and invalid, with the admin token:

* no 5xx, ever (``not_a_server_error``);
* the status code, content type and body of every answer are the ones the spec documents;
* every 4xx is RFC 9457 problem+json with a ``title`` and a ``detail``.

Each operation gets schemathesis's deterministic boundary cases (missing and extra fields,
limits, wrong types, unexpected methods), then ``ROOST_FUZZ_EXAMPLES`` random ones (valid and
invalid; half aimed at things that exist, made again before each operation), then a copy of
each JSON body with lone surrogates in its strings (schemathesis only generates valid UTF-8).
Then a cheaper pass without a token: no 5xx, and every refusal is problem+json. The dashboard's
pages and form posts are not in its spec: they get hostile form and query values by hand.

Generation is derandomized (hypothesis picks the same cases on every run), so a failure in CI
reproduces here. Every finding is collected with a curl command that replays it, and printed
before the one assertion, so one run shows them all. Bugs it found are pinned by plain requests
in test_openapi_regressions.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from roost_dashboard.app import build_app
from roost_dashboard.settings import DashboardSettings
from roost_shared.problems import install_problem_handlers
from roost_sim.ports import free_port
from tests.conftest import Stack
from tests.integration.test_api_authz import PUBLIC, route_table, start_everything
from tests.service.test_service_logic import group
from tests.support.dashboard import csrf_in
from tests.support.releases import build
from tests.support.stack import Tokens, Vhost
from tests.support.waiting import eventually

#: Generated requests per operation with the admin token (valid and invalid ones together),
#: and without a token (every answer is the same 401, so a few suffice).
ADMIN_EXAMPLES = int(os.environ.get("ROOST_FUZZ_EXAMPLES", "30"))  # more for a deeper run
ANONYMOUS_EXAMPLES = 4
#: A request that takes longer is a finding too (nothing here waits on a real BMC or host).
REQUEST_TIMEOUT_S = 10.0

#: Operations not fuzzed, and why. Empty means every operation of every spec is.
EXCLUDED: dict[tuple[str, str, str], str] = {}

# Release archives (POST /v1/releases) are bytes, as application/octet-stream is.
schemathesis.serializer.alias("application/gzip", "application/octet-stream")

PROBLEM = "application/problem+json"
HOST = "worker-1"
OTHER = "worker-2"
HOST_BODIES = [
    {"hostname": HOST, "personality": "worker", "mgmt_mac": "52:54:00:aa:bb:01"},
    {"hostname": OTHER, "personality": "worker", "mgmt_mac": "52:54:00:aa:bb:02"},
]
GROUP = "web"
RELEASE = "roost-1.1"
ALARM = {
    "alarm_id": "100.104",
    "entity_instance_id": f"host={HOST}.filesystem=/var",
    "severity": "major",
    "reason_text": "/var is 91% full",
}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Findings:
    """What the fuzzing saw, per service."""

    failures: dict[str, str] = field(default_factory=dict)  # one per (operation, kind)
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def add(self, key: str, text: str) -> None:
        self.failures.setdefault(key, text)


def problem_failure(response: schemathesis.Response) -> str | None:
    """Why a 4xx answer is not problem+json with a title and detail (None: it is)."""
    if not 400 <= response.status_code < 500:
        return None
    kind = (response.headers.get("content-type") or [""])[0]
    text = response.content[:160].decode(errors="replace")
    if not kind.startswith("application/problem+json"):
        return f"{response.status_code} with content-type {kind!r}: {text!r}"
    try:
        body = json.loads(response.content)
    except ValueError:
        return f"{response.status_code} problem+json that is not JSON: {text!r}"
    if not isinstance(body, dict) or not body.get("title") or not body.get("detail"):
        return f"{response.status_code} problem without title/detail: {text!r}"
    if body.get("status") != response.status_code:
        return f"{response.status_code} problem says status {body.get('status')!r}"
    return None


def aim_at(case: schemathesis.Case, known: dict[str, str]) -> None:
    """Point the case's path at things that exist, so lookups go deeper than a 404."""
    for name in list(case.path_parameters or {}):
        if name in known:
            case.path_parameters[name] = known[name]


def strategy_for(operation: Any) -> st.SearchStrategy[tuple[Any, bool]]:
    """Valid and invalid cases for one operation, each maybe aimed at a known path."""
    modes = [operation.as_strategy(GenerationMode.POSITIVE)]
    try:
        modes.append(operation.as_strategy(GenerationMode.NEGATIVE))
    except Exception:  # nothing in this operation can be made invalid
        pass
    return st.tuples(st.one_of(modes), st.booleans())


@dataclass
class Caller:
    """Sends cases to one service as one caller and records what comes back."""

    found: Findings
    service: str
    token: str | None
    checks: list[Callable[..., Any]]
    session: requests.Session = field(default_factory=requests.Session)

    def send(self, case: schemathesis.Case) -> None:
        """One request: transport errors, non-problem 4xx and failed checks are findings."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        operation = case.operation
        who = "admin" if self.token else "anonymous"
        where = f"{self.service} {operation.method.upper()} {operation.path} ({who})"
        found = self.found
        try:
            response = case.call(session=self.session, headers=headers, timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as exc:
            found.add(f"{where} transport", f"{where}: {exc!r}\n    {case.as_curl_command()}")
            return
        found.requests += 1
        found.statuses[response.status_code] = found.statuses.get(response.status_code, 0) + 1
        why = problem_failure(response)
        if why:
            found.add(f"{where} problem", f"{where}: {why}\n    {case.as_curl_command(headers)}")
        try:
            case.validate_response(response, checks=self.checks, headers=headers)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis raises a FailureGroup
            text = str(exc).strip().splitlines()
            summary = " | ".join(line for line in text[:6] if line.strip())
            found.add(
                f"{where} {type(exc).__name__} {response.status_code}",
                f"{where}: {response.status_code} {summary[:400]}\n"
                f"    {case.as_curl_command(headers)}",
            )

    def send_lone_surrogates(self, case: schemathesis.Case) -> None:
        """The case's JSON body with lone surrogates in its strings (see
        :func:`with_lone_surrogates`): refused with a 4xx problem, never a 5xx. Sent by hand:
        schemathesis cannot validate such a body against the spec, nor need it."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = case.as_transport_kwargs(headers=headers)
        request.pop("json", None)
        # json.dumps escapes the surrogates ("\\ud800"): valid JSON text, invalid Unicode.
        request["data"] = json.dumps(with_lone_surrogates(case.body)).encode()
        request["headers"] = {**request.get("headers", {}), "Content-Type": "application/json"}
        operation = case.operation
        where = f"{self.service} {operation.method.upper()} {operation.path} (lone surrogates)"
        try:
            r = self.session.request(**request, timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as exc:
            self.found.add(f"{where} transport", f"{where}: {exc!r}")
            return
        self.found.requests += 1
        self.found.statuses[r.status_code] = self.found.statuses.get(r.status_code, 0) + 1
        kind = r.headers.get("content-type", "")
        if r.status_code >= 500 or (r.status_code >= 400 and PROBLEM not in kind):
            self.found.add(
                f"{where} {r.status_code}",
                f"{where}: {r.status_code} {kind} {r.text[:160]!r}\n"
                f"    {request['method']} {request['url']} {request['data'][:300]!r}",
            )


def with_lone_surrogates(value: Any) -> Any:
    """``value`` with a lone surrogate after every string value in it (keys stay, so that
    checks of the names pass and the values get further). JSON can carry one
    (``"\\ud800"``), Python decodes it, and it cannot be encoded again (e.g. into BSON);
    schemathesis only ever generates valid UTF-8, so this is the fuzzer's own addition."""
    if isinstance(value, str):
        return value + "\ud800"
    if isinstance(value, dict):
        return {k: with_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_lone_surrogates(v) for v in value]
    return value


def has_text(value: Any) -> bool:
    """Whether a JSON value holds a string anywhere."""
    if isinstance(value, str):
        return True
    if isinstance(value, dict):
        return any(has_text(v) for v in value.values())
    if isinstance(value, list):
        return any(has_text(v) for v in value)
    return False


def coverage_cases(schema: Any, operation: Any) -> list[schemathesis.Case]:
    """schemathesis's deterministic boundary cases for one operation (valid and invalid:
    missing/extra fields, minimum and maximum, empty strings, wrong types, unexpected
    methods), which random generation reaches only by luck."""
    return list(
        schema.iter_coverage_cases(
            operation,
            generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
            generation_config=schema.config.generation_for(operation=operation),
        )
    )


def fuzz_operation(caller: Caller, operation: Any, known: dict[str, str], examples: int) -> None:
    """Run ``examples`` generated cases against one operation, recording every finding."""

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(drawn=strategy_for(operation))
    def run(drawn: tuple[Any, bool]) -> None:
        case, aim = drawn
        if aim:
            aim_at(case, known)
        caller.send(case)
        if (case.media_type or "").endswith("json") and has_text(case.body):
            caller.send_lone_surrogates(case)

    run()


def fuzz_service(
    name: str, url: str, tokens: Tokens, reseed: Callable[[], dict[str, str]]
) -> Findings:
    """Every operation of one service's live spec, with the admin token (boundary cases, then
    random ones), then without a token (a few random ones). ``reseed`` makes the things the
    paths may name exist again (an earlier operation may have deleted them) and names them."""
    found = Findings()
    auth = {"Authorization": f"Bearer {tokens.admin}"}
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=auth, timeout=10)
    schema.config.base_url = url
    admin = Caller(found, name, tokens.admin, CHECKS)
    anonymous = Caller(found, name, None, [not_a_server_error])
    for result in schema.get_all_operations():
        operation = result.ok()
        if (name, operation.method.lower(), operation.path) in EXCLUDED:
            continue
        known = reseed()
        for i, case in enumerate(coverage_cases(schema, operation)):
            if i % 2:  # every other one at things that exist
                aim_at(case, known)
            admin.send(case)
        fuzz_operation(admin, operation, known, ADMIN_EXAMPLES)
        if operation.path not in PUBLIC:
            fuzz_operation(anonymous, operation, known, ANONYMOUS_EXAMPLES)
    return found


class FuzzStack(Stack):
    """The test stack, with the API rate limit off: the fuzzer is one caller sending
    hundreds of requests a second, which is what the limit is there to refuse."""

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "ROOST_RATE_LIMIT_PER_S": "0",
            # Config asks the host service whether a host may be deleted (a 503 without it).
            "ROOST_HOST_SERVICE_TOKEN": self.tokens.peers["config"],
        }


@pytest.fixture(scope="module")
async def services(
    mongo_url: str, tokens: Tokens, workdir: Path
) -> AsyncIterator[tuple[Stack, dict[str, Any]]]:
    """Every service once for the module (starting six processes is most of the cost)."""
    stack = FuzzStack(Vhost.create(), mongo_url, tokens, workdir)
    try:
        yield stack, start_everything(stack)
    finally:
        for svc in stack.services:
            svc.stop()
        stack.vhost.delete()


async def seed(name: str, running: dict[str, Any], tokens: Tokens, workdir: Path) -> dict[str, str]:
    """Things for the fuzzed lookups to find, by path parameter name (made again before each
    operation is fuzzed: the one before may have deleted them)."""
    known = {"host_ref": HOST, "hostname": HOST, "host": HOST, "name": GROUP, "id": RELEASE}
    async with running["config"].client(tokens.admin) as config:
        for body in HOST_BODIES:
            r = await config.post("/v1/hosts", json=body)
            assert r.status_code in (201, 409), r.text
    if name == "fault":
        async with running["fault"].client(tokens.admin) as fault:
            r = await fault.post("/v1/alarms", json=ALARM)
            assert r.status_code in (200, 201), r.text
            known["alarm_uuid"] = r.json()["uuid"]
            r = await fault.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook"})
            assert r.status_code in (200, 201), r.text
            known["sub_uuid"] = r.json()["uuid"]
            r = await fault.get("/v1/event_log", params={"limit": 1})
            known["event_uuid"] = r.json()["event_log"][0]["uuid"]
            r = await fault.get("/v1/event_suppression")
            known["entry_uuid"] = r.json()["event_suppression"][0]["uuid"]
    if name == "service":
        async with running["service"].client(tokens.admin) as service:
            body = group(members={"hosts": [HOST, OTHER]}, preferred=[HOST])

            async def declared() -> bool:  # once the service has heard of both hosts
                r = await service.put(f"/v1/service-groups/{GROUP}", json=body)
                return r.status_code in (200, 201)

            await eventually(declared, what=f"service group {GROUP} declared")
    if name == "software":
        archive = build(workdir / f"fuzz-{uuid.uuid4().hex[:6]}", RELEASE, "1.1", None)
        async with running["software"].client(tokens.admin) as software:
            r = await software.post(
                "/v1/releases", content=archive, headers={"Content-Type": "application/gzip"}
            )
            assert r.status_code in (200, 201, 409), r.text
    return known


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", ["config", "fault", "host", "service", "software", "dashboard"])
async def test_fuzzing_finds_no_server_errors(
    services: tuple[Stack, dict[str, Any]], name: str, tokens: Tokens, workdir: Path
) -> None:
    _, running = services

    def reseed() -> dict[str, str]:  # called from the fuzzing thread
        return asyncio.run(seed(name, running, tokens, workdir))

    started = time.monotonic()
    found = await asyncio.to_thread(fuzz_service, name, running[name].url, tokens, reseed)
    took = time.monotonic() - started
    print(
        f"\n{name}: {found.requests} requests in {took:.1f} s, statuses "
        f"{dict(sorted(found.statuses.items()))}, {len(found.failures)} findings"
    )
    for text in found.failures.values():
        print(f"  {text}")
    assert found.requests > 0
    assert not found.failures, "\n".join(found.failures.values())


#: Hostile values for the dashboard's form fields and query parameters (its pages and form
#: posts are not in its OpenAPI spec, so schemathesis never sees them).
HOSTILE = ["", "\x00", "x" * 100_000, "%ff", "-1", "9" * 30, "[", "tökén", "lock", "abort"]
#: Path parameters for the dashboard's routes: things that exist, and things that cannot.
HOSTILE_REFS = [HOST, GROUP, RELEASE, "%ED%A0%80", "x" * 300]
HOSTILE_QUERY = ("limit", "marker", "since", "q", "next", "reason")


def hostile_dashboard(url: str, token: str) -> tuple[dict[int, int], list[str]]:
    """Every page and form post of the dashboard (walked from its app, as test_api_authz
    does) with an admin session and hostile values: (statuses seen, failures)."""
    routes = route_table(build_app(DashboardSettings()).routes)
    statuses: dict[int, int] = {}
    failures: list[str] = []
    with requests.Session() as browser:
        page = browser.get(url + "/login", timeout=REQUEST_TIMEOUT_S)
        r = browser.post(
            url + "/login",
            data={"token": token, "next": "/", "csrf": csrf_in(page.text)},
            headers={"Origin": url},
            allow_redirects=False,
            timeout=REQUEST_TIMEOUT_S,
        )
        assert r.status_code == 303, r.text[:300]
        for method, path, fields in routes:
            if path.startswith(("/static/", "/events/stream")) or method not in ("get", "post"):
                continue  # files, and the endless event stream
            for ref in HOSTILE_REFS:
                where = re.sub(r"\{[^}]+\}", ref, path)
                for value in HOSTILE:
                    what = f"dashboard {method.upper()} {where[:80]} {repr(value)[:20]}"
                    try:
                        r = browser.request(
                            method.upper(),
                            url + where,
                            data=dict.fromkeys(fields, value) if method == "post" else None,
                            params=dict.fromkeys(HOSTILE_QUERY, value) if method == "get" else None,
                            allow_redirects=False,
                            timeout=REQUEST_TIMEOUT_S,
                        )
                    except requests.RequestException as exc:  # e.g. a header too long to read
                        failures.append(f"{what}: {exc!r}"[:300])
                        continue
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code >= 500:
                        failures.append(f"{what}: {r.status_code} {r.text[:120]!r}")
                if "{" not in path:
                    break  # one pass is enough for a path without parameters
    return statuses, failures


@pytest.mark.timeout(240)
async def test_dashboard_pages_and_forms_give_no_server_errors(
    services: tuple[Stack, dict[str, Any]], tokens: Tokens, workdir: Path
) -> None:
    _, running = services
    await seed("service", running, tokens, workdir)
    started = time.monotonic()
    statuses, failures = await asyncio.to_thread(
        hostile_dashboard, running["dashboard"].url, tokens.admin
    )
    took = time.monotonic() - started
    print(f"\ndashboard pages and forms in {took:.1f} s: {dict(sorted(statuses.items()))}")
    for line in failures:
        print(f"  {line}")
    assert sum(statuses.values()) > 100 and statuses.get(200), statuses
    assert not failures, "\n".join(failures)


def buggy_app() -> FastAPI:
    """An API with the bugs the fuzzer is there to find: a 500 on some input, and an answer
    the spec does not document."""
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/v1/ratio/{n}")
    async def ratio(n: int) -> dict[str, float]:
        return {"ratio": 1 / n}  # n == 0: ZeroDivisionError, a 500

    @app.get("/v1/count", response_model=dict[str, int])
    async def count(limit: int = 10) -> Any:
        if limit > 100:  # a body that is not what the spec documents (and not validated)
            return JSONResponse({"count": "many"})
        return {"count": limit}

    return app


async def test_the_fuzzer_reports_what_it_is_there_to_find(tokens: Tokens) -> None:
    """The harness itself, against an API served over real HTTP: a 500 and an undocumented
    body are findings (so the tests above can fail)."""
    server = uvicorn.Server(
        uvicorn.Config(buggy_app(), host="127.0.0.1", port=free_port(), log_level="critical")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        await eventually(lambda: server.started, what="the buggy API listening")
        url = f"http://127.0.0.1:{server.config.port}"
        found = await asyncio.to_thread(fuzz_service, "buggy", url, tokens, dict)
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 10)
    text = "\n".join(found.failures.values())
    assert found.statuses.get(500), found.statuses
    assert "buggy GET /v1/ratio/{n} (admin): 500" in text, text
    assert "GET /v1/count (admin)" in text, text
