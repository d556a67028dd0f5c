"""Dashboard load: page time with 500 hosts and 1,000 alarms, and the time from an alarm event
on the bus to its row visible in a browser (issue 8's targets: first page ≤ 300 ms server time,
alarm visible ≤ 1 s p99).

Starts its own SecantusDB, RabbitMQ vhost, fault, host and dashboard services (127.0.0.1),
announces 500 hosts on the bus as config would and raises 1,000 alarms, then:

* page time: ``BENCH_PAGE_REQUESTS`` (30) GETs of each page with the admin's cookie, timed at the
  client over loopback (server time plus one loopback round trip; the dashboard's own API calls
  to fault and host are inside it);
* alarm visible: ``BENCH_ALARMS`` (50) alarms raised one at a time on the bus while headless
  Chromium (Debian's ``/usr/bin/chromium``) shows ``/alarms`` (1,000+ rows), each timed from the
  publish to the row being visible (fault service, its outbox, the bus, the dashboard's stream,
  the page's script), then cleared the same way.

Bounded: every wait has a deadline; the whole run stays well under five minutes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from common import Result, bench_vhost, percentile, report, result

from roost_shared.auth import Role, new_token, write_tokens_file
from roost_shared.bus import Bus
from roost_shared.catalog import AlarmClear, AlarmSet, HostRecord, Personality, Severity
from roost_shared.events import Envelope
from roost_shared.metrics import Metrics
from roost_shared.producer import ProducerBus
from roost_shared.settings import RoostSettings
from roost_sim.embedded_db import embedded_db, url_for
from roost_sim.ports import free_port, free_udp_port
from roost_sim.processes import ManagedProcess, http_ready, python_module

NAME = "dashboard_load"
HOSTS = 500
ALARMS = 1_000
PAGE_REQUESTS = int(os.environ.get("BENCH_PAGE_REQUESTS", "30"))
LIVE_ALARMS = int(os.environ.get("BENCH_ALARMS", "50"))
PAGES = ("/", "/hosts", "/alarms", "/events", "/hosts/worker-0")
CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
SEVERITIES = (Severity.critical, Severity.major, Severity.minor, Severity.warning)


def log(text: str) -> None:
    print(f"[dashboard_load] {text}", flush=True)


def service(name: str, tmp: Path, env: dict[str, str]) -> tuple[ManagedProcess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = ManagedProcess(
        name,
        python_module(f"roost_{name}.app"),
        env={**env, "ROOST_PORT": str(port), "ROOST_DATABASE": f"roost_{name}"},
        log_path=tmp / f"{name}.log",
        ready=http_ready(f"{url}/readyz"),
    ).start()
    proc.wait_ready(90)
    return proc, url


async def wait_until(probe, what: str, timeout: float) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await probe():
                return
        except httpx.HTTPError:  # a service busy taking the load in: ask again
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:g} s")
        await asyncio.sleep(0.2)


async def load(amqp_url: str, fault_url: str, host_url: str, admin: str) -> Bus:
    # Each event goes out as its owner's broker user: host records as the config service's,
    # the alarms (source "bench") as the host service's.
    bus = ProducerBus(RoostSettings(service="bench", amqp_url=amqp_url), Metrics("bench"))
    await bus.connect(deadline_s=10)
    records = [
        HostRecord(
            uuid=str(uuid.uuid4()),
            hostname=f"worker-{i}",
            personality=Personality.worker,
            mgmt_mac="52:54:{:02x}:{:02x}:{:02x}:{:02x}".format(*i.to_bytes(4, "big")),
            install_state="provisioned",
        )
        for i in range(HOSTS)
    ]
    for start in range(0, HOSTS, 100):
        await bus.publish(
            [
                Envelope.of(r, type="config.host.added", source="bench")
                for r in records[start : start + 100]
            ]
        )
    alarms = [
        Envelope.of(
            AlarmSet(
                alarm_id="100.104",
                entity_instance_id=f"host=worker-{i % HOSTS}.filesystem=/fs{i}",
                severity=SEVERITIES[i % 4],
                reason_text=f"/fs{i} is 91% full",
            ),
            source="bench",
        )
        for i in range(ALARMS)
    ]
    for start in range(0, ALARMS, 250):
        await bus.publish(alarms[start : start + 250])
    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(headers=headers, timeout=10) as http:

        async def hosts_loaded() -> bool:
            r = await http.get(f"{host_url}/v1/hosts", params={"limit": 1000})
            return r.status_code == 200 and len(r.json()["hosts"]) >= HOSTS

        async def alarms_loaded() -> bool:
            r = await http.get(f"{fault_url}/v1/alarms/summary")
            body = r.json() if r.status_code == 200 else {}
            return sum(body.get(k, 0) for k in ("critical", "major", "minor", "warnings")) >= ALARMS

        await wait_until(hosts_loaded, f"{HOSTS} hosts in the host service", 120)
        await wait_until(alarms_loaded, f"{ALARMS} alarms in the fault service", 120)
    return bus


async def api_times(fault_url: str, host_url: str, admin: str) -> list[Result]:
    """The APIs behind the heaviest pages, called directly: the part of a page's time that is
    not the dashboard's own."""
    results: list[Result] = []
    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        for name, url in (
            ("fault /v1/alarms (all)", f"{fault_url}/v1/alarms?limit=2000"),
            ("host /v1/hosts (all)", f"{host_url}/v1/hosts?limit=1000"),
        ):
            times = []
            for _ in range(PAGE_REQUESTS):
                started = time.perf_counter()
                r = await http.get(url)
                times.append((time.perf_counter() - started) * 1000)
                assert r.status_code == 200, r.text[:300]
            results.append(result(f"api {name} p50", percentile(times, 50), "ms"))
            results.append(result(f"api {name} p99", percentile(times, 99), "ms"))
            log(f"{name}: p50 {percentile(times, 50):.0f} ms, p99 {percentile(times, 99):.0f} ms")
    return results


async def page_times(dashboard_url: str, admin: str) -> list[Result]:
    results: list[Result] = []
    async with httpx.AsyncClient(base_url=dashboard_url, timeout=30) as http:
        r = await http.post("/login", data={"token": admin})
        assert r.status_code == 303, r.text
        for path in PAGES:
            times = []
            for _ in range(PAGE_REQUESTS):
                started = time.perf_counter()
                r = await http.get(path)
                times.append((time.perf_counter() - started) * 1000)
                # config and service do not run here: only their sections say so.
                failed = "The fault service" in r.text or "The host service" in r.text
                assert r.status_code == 200 and not failed, (path, r.text[:300])
            label = path if path != "/" else "/ (overview)"
            results.append(result(f"page {label} p50", percentile(times, 50), "ms"))
            results.append(result(f"page {label} p99", percentile(times, 99), "ms"))
            log(f"{label}: p50 {percentile(times, 50):.0f} ms, p99 {percentile(times, 99):.0f} ms")
    return results


async def alarm_visible(bus: Bus, dashboard_url: str, admin: str) -> list[Result]:
    if not HAVE_CHROMIUM:
        log(f"alarm-visible skipped: {CHROMIUM} missing (make test-tools installs chromium)")
        return []
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.async_api import async_playwright

    shown: list[float] = []
    gone: list[float] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(f"{dashboard_url}/login")
        await page.fill("#token", admin)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{dashboard_url}/")
        await page.goto(f"{dashboard_url}/alarms")
        await page.wait_for_selector("body[data-live='1']", timeout=10_000)
        for i in range(LIVE_ALARMS):
            entity = f"host=worker-{i}.bench={uuid.uuid4().hex[:8]}"
            row = page.locator("#alarms tbody tr", has_text=entity)
            set_ = AlarmSet(
                alarm_id="100.101",
                entity_instance_id=entity,
                severity=Severity.critical,
                reason_text="bench",
            )
            started = time.perf_counter()
            await bus.publish([Envelope.of(set_, source="bench")])
            await row.wait_for(state="visible", timeout=10_000)
            shown.append((time.perf_counter() - started) * 1000)
            clear = AlarmClear(alarm_id="100.101", entity_instance_id=entity)
            started = time.perf_counter()
            await bus.publish([Envelope.of(clear, source="bench")])
            await row.wait_for(state="detached", timeout=10_000)
            gone.append((time.perf_counter() - started) * 1000)
        await browser.close()
    log(f"alarm visible: p50 {percentile(shown, 50):.0f} ms, p99 {percentile(shown, 99):.0f} ms")
    return [
        result("alarm event -> visible row p50", percentile(shown, 50), "ms"),
        result("alarm event -> visible row p99", percentile(shown, 99), "ms"),
        result("alarm clear -> row gone p50", percentile(gone, 50), "ms"),
        result("alarm clear -> row gone p99", percentile(gone, 99), "ms"),
    ]


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-dashboard-"))
    procs: list[ManagedProcess] = []
    vhost, amqp_url = bench_vhost(tmp)
    try:
        db_port = free_port()
        db = embedded_db(db_port, tmp / "db", tmp / "db.log").start()
        procs.append(db)
        db.wait_ready(60)
        admin = new_token()
        tokens = tmp / "tokens.json"
        write_tokens_file(tokens, {"admin": (Role.admin, admin)})
        env = {
            "ROOST_AMQP_URL": amqp_url,
            "ROOST_MONGO_URL": url_for(db_port),
            "ROOST_AUTH_TOKENS_FILE": str(tokens),
            "ROOST_STATE_DIR": str(tmp / "state"),
        }
        fault, fault_url = service("fault", tmp, env)
        procs.append(fault)
        host, host_url = service("host", tmp, {**env, "ROOST_HEARTBEAT_PORT": str(free_udp_port())})
        procs.append(host)
        nowhere = f"http://127.0.0.1:{free_port()}"
        dashboard, dashboard_url = service(
            "dashboard",
            tmp,
            {
                **env,
                "ROOST_FAULT_URL": fault_url,
                "ROOST_HOST_URL": host_url,
                "ROOST_CONFIG_URL": nowhere,
                "ROOST_SERVICE_URL": nowhere,
            },
        )
        procs.append(dashboard)
        log(f"services up; loading {HOSTS} hosts and {ALARMS} alarms")

        async def run() -> list[Result]:
            bus = await load(amqp_url, fault_url, host_url, admin)
            try:
                log("loaded; timing pages")
                results = await page_times(dashboard_url, admin)
                results += await api_times(fault_url, host_url, admin)
                log("timing alarm event -> visible row")
                return results + await alarm_visible(bus, dashboard_url, admin)
            finally:
                await bus.close()

        results = asyncio.run(run())
    except BaseException:
        for proc in procs:
            print(f"--- {proc.name} log tail ---\n{proc.log_tail()}", file=sys.stderr)
        raise
    finally:
        for proc in reversed(procs):
            proc.stop()
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, timeout=60)
    report(NAME, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
