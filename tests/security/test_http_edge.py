"""The HTTP edge as an attacker without a token meets it, against real service processes.

- A 500 MB POST, streamed chunk by chunk (generated on the fly, never held by the attacker
  either), is refused with 413 at the body cap, before authentication and parsing: the
  service's resident memory (``VmRSS`` in ``/proc/<pid>/status``) does not grow. A declared
  ``Content-Length`` of 500 MB is refused before a byte of the body is sent.
- 10,000 junk unauthenticated POSTs (bounded loop, a few at a time) leave every real alarm in
  the event log: refusals are audited as per-address aggregates, and audit records have their
  own retention, apart from alarms (the fault service keeps only 1,000 alarm and log records
  here, so one record per junk request would have pruned them all).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest

from roost_shared.api import AUDIT_LOG_ID
from tests.support.fault import alarm, metric
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

MB = 1024 * 1024
ATTACK_BYTES = 500 * MB
#: Resident memory the process may gain while refusing (allocator noise, a few chunks).
RSS_SLACK_KB = 40 * 1024


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def chunked_post(port: int, path: str, total: int, chunk: int = 256 * 1024):
    """POST ``total`` junk bytes with ``Transfer-Encoding: chunked`` over a raw socket, as fast
    as the server takes them, reading the answer as it comes: (status line, bytes sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    block = b"[" * chunk
    frame = b"%x\r\n" % len(block) + block + b"\r\n"
    answer = asyncio.ensure_future(reader.readline())
    sent = 0
    try:
        while sent < total and not answer.done():
            writer.write(frame)
            await writer.drain()
            sent += len(block)
        if not answer.done():
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except ConnectionError:
        pass  # the server closed the connection on us: its answer is already there
    try:
        status = (await asyncio.wait_for(answer, 120)).decode(errors="replace").strip()
    except ConnectionResetError:
        # The server closed with our unread chunks in its buffer: the kernel's reset can beat
        # its 413 to us (the classic lingering-close race). A refusal all the same.
        status = "reset"
    writer.close()
    return status, sent


async def declared_post(
    port: int,
    path: str,
    length: int,
    *,
    token: str | None = None,
    content_type: str = "application/json",
) -> tuple[str, bytes]:
    """Send only the headers of a POST declaring ``length`` bytes; the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    rest = await asyncio.wait_for(reader.read(), 10)  # the server closes after its answer
    writer.close()
    return status.decode().strip(), rest


async def test_500_mb_unauthenticated_post_is_refused_without_the_process_growing(stack):
    config = stack.start("config")
    pid = config.proc.proc.pid
    async with config.client(None) as http:  # warm up: the routes, the problem handler
        for _ in range(3):
            assert (await http.post("/v1/hosts", json={})).status_code == 401
    before = rss_kb(pid)
    started = time.monotonic()
    status, sent = await chunked_post(config.port, "/v1/hosts", ATTACK_BYTES)
    took = time.monotonic() - started
    after = rss_kb(pid)
    print(
        f"chunked: {status!r} after {sent / MB:.1f} MB sent in {took:.2f} s; "
        f"VmRSS {before} kB -> {after} kB"
    )
    assert status.startswith("HTTP/1.1 413") or status == "reset", status
    assert sent < 64 * MB, f"the server took {sent / MB:.0f} MB before refusing"
    assert after - before < RSS_SLACK_KB, f"VmRSS grew {before} -> {after} kB"

    status, body = await declared_post(config.port, "/v1/hosts", ATTACK_BYTES)
    assert status.startswith("HTTP/1.1 413"), status
    assert b"application/problem+json" in body and b'"field":"body"' in body, body
    assert rss_kb(pid) - before < RSS_SLACK_KB

    # The service still answers, and counted both refusals.
    async with config.client(stack.tokens.admin) as http:
        assert (await http.get("/v1/hosts")).status_code == 200
        metrics = (await http.get("/metrics")).text
    assert 'roost_http_body_refused_total{reason="streamed"} 1.0' in metrics, metrics
    assert 'roost_http_body_refused_total{reason="declared"} 1.0' in metrics


async def test_release_upload_has_its_own_larger_cap(stack):
    """The software service's upload route takes more than the default cap (streamed to disk
    up to ``max_release_bytes``), and refuses past it."""
    sw = stack.start(
        "software",
        ROOST_ALLOW_UNSIGNED_RELEASES="true",
        ROOST_MAX_RELEASE_BYTES=str(4 * MB),
    )
    async with sw.client(stack.tokens.admin) as http:
        junk = b"\x1f\x8b" + b"x" * (2 * MB)  # over the 1 MiB default, under 4 MB
        r = await http.post("/v1/releases", content=junk)
        assert r.status_code == 422, r.text  # read in full, then refused as no archive
    status, body = await declared_post(
        sw.port, "/v1/releases", 5 * MB, token=stack.tokens.admin, content_type="application/gzip"
    )
    assert status.startswith("HTTP/1.1 413"), status
    assert str(4 * MB).encode() in body, body
    leftovers = list((Path(sw.env["ROOST_STATE_DIR"]) / "releases").glob(".*part"))
    assert leftovers == [], leftovers


JUNK_POSTS = 10_000
ALARMS = 20


@pytest.mark.timeout(600)  # 10,000 requests on a loaded 2-core machine
async def test_ten_thousand_junk_posts_leave_the_alarm_history_intact(stack):
    fault = stack.start(
        "fault",
        ROOST_EVENT_LOG_MAX_COUNT="1000",
        ROOST_RETENTION_PERIOD_S="1",
        ROOST_AUDIT_REFUSALS_WINDOW_S="2",
    )
    config = stack.start("config", ROOST_FAULT_URL=fault.url, ROOST_AUDIT_REFUSALS_WINDOW_S="2")
    run = uuid.uuid4().hex[:8]
    entities = [f"host=victim-{run}-{i}" for i in range(ALARMS)]
    bus = await stack.bus()
    await bus.publish([alarm(e, "100.101", reason_text=f"real alarm {e}") for e in entities])

    async with fault.client(stack.tokens.reader) as http:

        async def raised() -> list[dict]:
            r = await http.get(
                "/v1/event_log", params={"alarms": "True", "limit": 1000, "expand": "True"}
            )
            assert r.status_code == 200, r.text
            return [e for e in r.json()["event_log"] if e["entity_instance_id"] in entities]

        history = await eventually(
            lambda: _all(raised, ALARMS), timeout=20, what="the real alarms in the event log"
        )
        assert len(history) == ALARMS

        # The attack: junk POSTs with no token, to the fault service and to config.
        started = time.monotonic()
        counts: dict[int, int] = {}
        targets = [fault.url, config.url]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(JUNK_POSTS):
            queue.put_nowait(i)

        async def attacker(n: int) -> None:
            async with httpx.AsyncClient(base_url=targets[n % 2], timeout=30) as junk:
                while not queue.empty():
                    i = queue.get_nowait()
                    path = "/v1/event_log" if n % 2 == 0 else "/v1/hosts"
                    r = await junk.post(path, content=b'{"junk": %d}' % i)
                    counts[r.status_code] = counts.get(r.status_code, 0) + 1

        await asyncio.gather(*(attacker(n) for n in range(4)))
        took = time.monotonic() - started
        print(f"{JUNK_POSTS} junk POSTs in {took:.1f} s: {counts}")
        assert sum(counts.values()) == JUNK_POSTS
        assert set(counts) <= {401, 429}, counts

        # Wait until the attack is in the event log: every refusal counted in an audit record
        # (or, were each one a record of its own, retention already pruning for them).
        async def audit_records() -> list[dict]:
            r = await http.get(
                "/v1/event_log",
                params={"logs": "True", "limit": 1000, "expand": "True"},
            )
            assert r.status_code == 200, r.text
            return [e for e in r.json()["event_log"] if e["event_log_id"] == AUDIT_LOG_ID]

        async def attack_logged() -> list[dict] | bool:
            records = await audit_records()
            if sum(_refused_count(e["reason_text"]) for e in records) >= JUNK_POSTS:
                return records
            return await metric(http, "roost_fault_event_log_pruned_total", reason="count") > 0

        await eventually(attack_logged, timeout=60, what="the refusals in the event log")
        records = await audit_records()

        # Retention runs every second; once its size gauge counts these records it has run
        # since they were stored, and every real alarm must still be in the event log.
        async def retention_ran() -> bool:
            size = await metric(http, "roost_fault_event_log_records")
            return size >= ALARMS + min(len(records), 100)

        await eventually(retention_ran, timeout=15, what="a retention run after the attack")
        still = await raised()
        assert len(still) == ALARMS, f"{ALARMS - len(still)} real alarm records were pruned"

        # The refusals are audited as a few aggregate records (not thousands).
        print(f"audit records for the attack: {len(records)}; e.g. {records[0]['reason_text']}")
        assert len(records) < 100, len(records)
        assert all(r["reason_text"].startswith("anonymous from 127.0.0.1: ") for r in records)
        assert sum(_refused_count(e["reason_text"]) for e in records) == JUNK_POSTS


async def _all(probe, n: int):
    found = await probe()
    return found if len(found) >= n else []


def _refused_count(text: str) -> int:
    """``anonymous from 1.2.3.4: 9650 refused requests in ...`` → 9650 (else 1)."""
    _head, sep, rest = text.partition(": ")
    if not sep:
        return 1
    number = rest.split(" ", 1)[0]
    return int(number) if number.isdigit() else 1
