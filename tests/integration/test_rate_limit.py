"""Rate limits on every API (issue 9): a token bucket per caller, in a running fault service.

The service runs with a small limit (one request per 2 s, bursts of 5) so the test is quick; the
defaults (50/s, bursts of 200) are the same mechanism. A caller over its bucket gets 429
problem+json with ``Retry-After``; other callers (other tokens, another address's guesses) keep
their own buckets; health, readiness and metrics are never limited, nor are peer tokens; a
refused mutating request is still audited; the refusals are counted in the metrics.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import pytest

from roost_shared.auth import Role, TokenRecord, digest, new_token, save_tokens_file
from roost_shared.ratelimit import TokenBuckets
from tests.integration.test_audit_log import refusal_audited
from tests.support.problems import problem
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

#: One request every 2 s: slow enough that a loaded CI machine cannot refill a bucket between
#: two requests of the test.
RATE, BURST = 0.5, 5


@pytest.fixture
def fault(stack, tmp_path: Path):
    """A fault service with a small limit, and tokens: admin, reader, a peer."""
    tokens = {"admin": new_token(), "reader": new_token(), "peer": new_token()}
    save_tokens_file(
        tmp_path / "tokens.json",
        [
            TokenRecord(name="admin", role=Role.admin, sha256=digest(tokens["admin"])),
            TokenRecord(name="reader", role=Role.reader, sha256=digest(tokens["reader"])),
            TokenRecord(name="svc", role=Role.admin, sha256=digest(tokens["peer"]), peer=True),
        ],
    )
    svc = stack.start(
        "fault",
        ROOST_AUTH_TOKENS_FILE=str(tmp_path / "tokens.json"),
        ROOST_RATE_LIMIT_PER_S=str(RATE),
        ROOST_RATE_LIMIT_BURST=str(BURST),
        ROOST_AUDIT_REFUSALS_WINDOW_S="0.5",
    )
    return svc, tokens


def client(url: str, token: str | None) -> httpx.AsyncClient:
    headers = {"X-Auth-Token": token} if token else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=10)


async def test_burst_then_429_with_retry_after_other_callers_and_health_unaffected(fault):
    svc, tokens = fault
    async with (
        client(svc.url, tokens["reader"]) as reader,
        client(svc.url, tokens["admin"]) as admin,
        client(svc.url, tokens["peer"]) as peer,
        client(svc.url, None) as anonymous,
    ):
        started = time.monotonic()
        codes = [(await reader.get("/v1/alarms")).status_code for _ in range(BURST)]
        assert codes == [200] * BURST
        r = await reader.get("/v1/alarms")
        body = problem(r, 429)
        assert "too many requests from reader token 'reader'" in body["detail"], body
        assert body["instance"] == "/v1/alarms"
        retry_after = int(r.headers["Retry-After"])
        assert 1 <= retry_after <= math.ceil(1 / RATE), r.headers
        assert (await reader.get("/v1/alarms")).status_code == 429  # still, until it refills

        # Another token has its own bucket; the peer token has none; the probes are free.
        assert (await admin.get("/v1/alarms")).status_code == 200
        assert {(await peer.get("/v1/alarms")).status_code for _ in range(3 * BURST)} == {200}
        for path in ("/healthz", "/readyz", "/metrics"):
            codes = {(await anonymous.get(path)).status_code for _ in range(2 * BURST)}
            assert codes == {200}, path

        # Allowed again once the bucket refills (1/RATE s for one request).
        await eventually(
            lambda: _ok(reader), timeout=retry_after + 2, interval=0.2, what="reader allowed again"
        )
        print(f"reader allowed again {time.monotonic() - started:.2f}s after its first request")

        metrics = (await anonymous.get("/metrics")).text
        assert 'roost_http_rate_limited_total{caller="token"}' in metrics
        line = next(
            x for x in metrics.splitlines() if x.startswith("roost_http_rate_limited_total")
        )
        assert float(line.split()[-1]) >= 2, line
    assert "rate limit: reader token 'reader' is over" in svc.log_path.read_text()


async def _ok(http: httpx.AsyncClient) -> bool:
    return (await http.get("/v1/alarms")).status_code == 200


async def test_token_guesses_are_limited_per_address_not_per_guess(fault):
    svc, tokens = fault
    async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
        codes = [
            (await http.get("/v1/alarms", headers={"X-Auth-Token": new_token()})).status_code
            for _ in range(BURST + 3)
        ]
        assert codes[:BURST] == [401] * BURST
        assert codes[BURST:] == [429] * 3, codes
        r = await http.get("/v1/alarms")  # no token at all: the same address, the same bucket
        problem(r, 429)
        # A valid token from the same address is its own caller.
        ok = await http.get("/v1/alarms", headers={"X-Auth-Token": tokens["reader"]})
        assert ok.status_code == 200
        metrics = (await http.get("/metrics")).text
    assert 'roost_http_rate_limited_total{caller="address"}' in metrics


async def test_refused_mutating_request_is_audited(fault):
    svc, tokens = fault
    # The audit log is read with the peer token (never limited): the aggregate record shows
    # only after its window, and polling with the admin token would empty its bucket.
    async with client(svc.url, tokens["reader"]) as reader, client(svc.url, tokens["peer"]) as ev:
        for _ in range(BURST):
            await reader.get("/v1/alarms")
        r = await reader.post("/v1/alarms", json={})
        problem(r, 429)
        await refusal_audited(
            ev,
            "reader token 'reader'",
            "POST /v1/alarms -> 429",
            "the rate-limited POST in the audit log",
        )


def test_buckets_of_idle_callers_are_forgotten_and_their_number_is_capped():
    now = [0.0]
    buckets = TokenBuckets(RATE, BURST, max_callers=100, clock=lambda: now[0])
    for i in range(100):
        assert buckets.take(f"address:10.0.0.{i}") == (0.0, False)
    assert len(buckets) == 100
    buckets.take("address:one-more")  # at the cap: the least recently seen is forgotten
    assert len(buckets) == 100
    for _ in range(BURST - 1):
        assert buckets.take("address:one-more")[0] == 0.0
    wait, first = buckets.take("address:one-more")
    assert first and wait == pytest.approx(1 / RATE)
    assert buckets.take("address:one-more")[1] is False  # logged once per episode
    now[0] += BURST / RATE  # idle long enough to be full again: nothing to remember
    buckets.take("address:late")
    assert len(buckets) == 1
