"""Heartbeat failure detection: how fast the host service fails a dead host, whether a lossy
path ever fails a live one, and what 1,000 hosts at 10 Hz cost it — against StarlingX's default
(100 ms x 10 misses).

For N = 10, 100, 1,000: a fresh host service (its own database) and N senders in a process of
their own (_heartbeat_fleet.py: the agent's own ``HeartbeatSender``, sharing one
``HeartbeatBus``; each UDP socket bound to its host's 127.1.x.y), so the benchmark's own work
never delays them. Hosts are announced with ``config.host.added`` on the bus and unlocked
through the API. Then (a) K hosts are killed one at a time (both paths stop), the time to their
``host.state.changed`` → failed is measured, and each comes back; (b) nftables drops 2 % then
10 % of UDP heartbeats on the input hook for a window and failures are counted (0 expected),
beside the host service's ``roost_heartbeat_udp_suspicions_total`` (what a single-path
detector with the same threshold would have failed); (c) the host service's CPU and RSS.
Everything is on 127.0.0.1; all waiting is bounded (BUDGET_S) and everything is removed at the
end, also on failure. bench/README.md explains each figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from common import Result, bench_vhost, percentile, report, result
from fault_throughput import cpu_s, prom_value, rabbitmqctl, rss_mb

from roost_shared.auth import Role, new_token, write_tokens_file
from roost_shared.bus import EVENTS_EXCHANGE, Bus
from roost_shared.catalog import HostRecord, Personality
from roost_shared.events import Envelope
from roost_shared.hostkeys import ensure_secret
from roost_shared.metrics import Metrics
from roost_shared.producer import ProducerBus
from roost_shared.settings import RoostSettings
from roost_sim.embedded_db import embedded_db, url_for
from roost_sim.ports import free_port, free_udp_port
from roost_sim.processes import ManagedProcess, http_ready, python_module

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support.nft
from tests.support import nft

NAME = "heartbeat_detection"
SECRET_ENV = "ROOST_HEARTBEAT_SECRET_FILE"
#: False without nft (or root): the loss figures are skipped, detection and footprint still run.
LOSS = True
SIZES = (10, 100, 1_000)
KILLS = {10: 20, 100: 20, 1_000: 30}
LOSS_PERCENTS = (2, 10)
LOSS_WINDOW_S = {10: 10.0, 100: 15.0, 1_000: 30.0}
CPU_WINDOW_S = 10.0
BUDGET_S = 840.0  # hard stop for all waiting (the whole run stays under 15 minutes)
FIRST_INDEX = 0x4000  # simulated host numbers (127.1.x.y, MACs 02:00:00:40:xx:00)
PERIOD_MS = 100
# StarlingX maintenance heartbeat (hbsAgent): 100 ms x 10 misses by default, ~1 s.
STX_DEFAULT_MS = 1_000.0
TARGET_P99_MS = 500.0
HOST_ENV = {
    "ROOST_INTEST_S": "0.3",
    "ROOST_STEP_S": "0.3",
    "ROOST_RECOVERY_ATTEMPTS": "0",  # no BMCs here: a failed host just waits for its return
    "ROOST_LOG_JSON": "false",
}
STARTED = time.monotonic()
#: Every figure measured so far, in order (a size that fails midway keeps what it measured).
PARTIAL: list[Result] = []


def remaining() -> float:
    return BUDGET_S - (time.monotonic() - STARTED)


def log(msg: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {msg}", flush=True)


class OutOfTime(Exception):
    pass


async def wait_until(
    check: Callable[[], Awaitable[bool]], what: str, limit_s: float, interval: float = 0.2
) -> None:
    deadline = time.monotonic() + min(limit_s, max(remaining(), 0))
    while not await check():
        if time.monotonic() > deadline:
            raise OutOfTime(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


def sim_mac(i: int) -> str:
    n = FIRST_INDEX + i
    return f"02:00:00:{n >> 8:02x}:{n & 0xFF:02x}:00"


def sim_ip(i: int) -> str:
    n = FIRST_INDEX + i
    return f"127.1.{n // 250 % 250}.{n % 250 + 1}"


@dataclass
class SimHost:
    index: int
    rec: HostRecord


@dataclass
class Events:
    """host.state.changed events, with the time each was consumed here."""

    got: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def failed(self, hostname: str, since_wall: float) -> dict[str, Any] | None:
        for _, e in self.got:
            d = e["data"]
            if (
                d.get("hostname") == hostname
                and d.get("to_availability") == "failed"
                and _ts(e["time"]) >= since_wall
            ):
                return e
        return None

    def count(self, to: str, since_wall: float) -> int:
        return sum(
            1
            for _, e in self.got
            if e["data"].get("to_availability") == to and _ts(e["time"]) >= since_wall
        )


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def listen(bus: Bus) -> Events:
    assert bus.connection is not None
    channel = await bus.connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(EVENTS_EXCHANGE, routing_key="host.state.changed")
    events = Events()

    async def on_message(message: Any) -> None:
        events.got.append((time.time(), json.loads(message.body)))

    await queue.consume(on_message, no_ack=True)
    return events


class Site:
    """One host service with N simulated hosts heartbeating from this process."""

    def __init__(self, n: int, tmp: Path, env: dict[str, str], bus: Bus) -> None:
        self.n = n
        self.tmp = tmp
        self.bus = bus
        self.hb_port = free_udp_port()
        self.port = free_port()
        self.fleet: asyncio.subprocess.Process | None = None
        db = f"roost_host_bench_{n}_{uuid.uuid4().hex[:6]}"
        self.proc = ManagedProcess(
            f"host-{n}",
            python_module("roost_host.app"),
            env={
                **{k: v for k, v in env.items() if not k.startswith("_")},
                **HOST_ENV,
                "ROOST_DATABASE": db,
                "ROOST_PORT": str(self.port),
                "ROOST_HEARTBEAT_PORT": str(self.hb_port),
                "ROOST_STATE_DIR": str(tmp / db),
            },
            log_path=tmp / f"{db}.log",
            ready=http_ready(f"http://127.0.0.1:{self.port}/readyz"),
        )
        self.hosts = [
            SimHost(
                i,
                HostRecord(
                    uuid=str(uuid.uuid4()),
                    hostname=f"sim-{FIRST_INDEX + i}",
                    personality=Personality.worker,
                    mgmt_mac=sim_mac(i),
                    mgmt_ip=sim_ip(i),
                    install_state="provisioned",
                ),
            )
            for i in range(n)
        ]

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    async def start_fleet(self) -> None:
        """The senders' own process (_heartbeat_fleet.py): nothing this process does (HTTP,
        parsing events) can delay a heartbeat."""
        self.fleet = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("_heartbeat_fleet.py")),
            self.bus.settings.amqp_url,
            str(self.hb_port),
            str(FIRST_INDEX),
            str(self.n),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # The enrolment authority's secret: the senders derive each host's own key from it.
            env={**os.environ, SECRET_ENV: self.proc.env[SECRET_ENV]},
        )
        await self._command("startall")

    async def _command(self, line: str) -> list[str]:
        assert self.fleet is not None and self.fleet.stdin and self.fleet.stdout
        self.fleet.stdin.write(f"{line}\n".encode())
        await self.fleet.stdin.drain()
        answer = await asyncio.wait_for(self.fleet.stdout.readline(), 120)
        words = answer.decode().split()
        if not words or words[0] != "ok":
            raise RuntimeError(f"sender fleet: {line!r} answered {answer!r}")
        return words

    async def start_sender(self, h: SimHost) -> None:
        await self._command(f"start {h.index}")

    async def stop_sender(self, h: SimHost) -> float:
        """Cut both paths of host ``h``; the wall time it happened (the fleet's clock)."""
        return float((await self._command(f"stop {h.index}"))[2])

    async def stop_senders(self) -> None:
        if self.fleet is not None and self.fleet.returncode is None:
            with contextlib.suppress(Exception):
                await self._command("quit")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.fleet.wait(), 10)
            if self.fleet.returncode is None:
                self.fleet.kill()

    async def metric(self, http: httpx.AsyncClient, name: str, **labels: str) -> float:
        return prom_value((await http.get("/metrics")).text, name, **labels)

    async def count(self, http: httpx.AsyncClient, **query: str) -> int:
        total, marker = 0, None
        while True:
            params = {"limit": "1000", **query, **({"marker": marker} if marker else {})}
            page = (await http.get("/v1/hosts", params=params)).json()["hosts"]
            total += len(page)
            if len(page) < 1000:
                return total
            marker = page[-1]["uuid"]


async def bring_up(site: Site, http: httpx.AsyncClient) -> None:
    envelopes = [
        Envelope.of(h.rec, type="config.host.added", source="bench/config") for h in site.hosts
    ]
    for i in range(0, len(envelopes), 500):
        await site.bus.publish(envelopes[i : i + 500])
    await wait_until(lambda: _is(site.count(http), site.n), "hosts learned", 120)
    log(f"  {site.n} hosts learned")
    await site.start_fleet()
    log(f"  {site.n} senders heartbeating (their own process)")
    sem = asyncio.Semaphore(16)

    async def unlock(h: SimHost) -> None:
        async with sem:
            problem = ""
            for _ in range(5):
                try:
                    r = await http.post(
                        f"/v1/hosts/{h.rec.hostname}/actions", json={"action": "unlock"}
                    )
                except httpx.TimeoutException as exc:
                    problem = repr(exc)
                    continue
                if r.status_code == 200:
                    return
                problem = f"{r.status_code} {r.text[:200]}"
                await asyncio.sleep(0.5)
            raise RuntimeError(f"unlock {h.rec.hostname}: {problem}")

    await asyncio.gather(*(unlock(h) for h in site.hosts))
    await wait_until(
        lambda: _is(site.count(http, availability="available"), site.n),
        "all hosts available",
        180,
        interval=0.5,
    )
    log(f"  all {site.n} unlocked-enabled-available")


async def _is(count: Awaitable[int], n: int) -> bool:
    return await count == n


async def detection(site: Site, http: httpx.AsyncClient, events: Events, k: int) -> list[float]:
    """Kill K hosts one at a time (waiting for each to fail and return: killing the next one
    while another is silent would be a multi-node failure, held degraded by design)."""
    latencies: list[float] = []
    victims = random.Random(site.n).sample(site.hosts, min(k, site.n))
    for h in victims:
        stopped_wall = await site.stop_sender(h)
        found: dict[str, Any] = {}

        async def failed(
            h: SimHost = h, t: float = stopped_wall, found: dict[str, Any] = found
        ) -> bool:
            e = events.failed(h.rec.hostname or "", t)
            if e:
                found["e"] = e
            return e is not None

        await wait_until(failed, f"{h.rec.hostname} failed", 15, interval=0.01)
        latencies.append((_ts(found["e"]["time"]) - stopped_wall) * 1000)
        await site.start_sender(h)

        async def back(h: SimHost = h) -> bool:
            r = await http.get(f"/v1/hosts/{h.rec.hostname}")
            return r.json().get("availability") == "available"

        await wait_until(back, f"{h.rec.hostname} available again", 30, interval=0.1)
    return latencies


async def lossy(
    site: Site, http: httpx.AsyncClient, events: Events, percent: int, window: float
) -> dict[str, float]:
    suspicions = await site.metric(http, "roost_heartbeat_udp_suspicions_total")
    probes = await site.metric(http, "roost_heartbeat_probes_total")
    since = time.time()
    with nft.nft_table() as table:
        table.drop_udp(site.hb_port, percent=percent)
        await asyncio.sleep(min(window, max(remaining() - 60, 1)))  # the measured window
        dropped = table.dropped()
    await asyncio.sleep(1.0)  # decisions already under way land in the event stream
    return {
        "failed": events.count("failed", since),
        "degraded": events.count("degraded", since),
        "single_path": await site.metric(http, "roost_heartbeat_udp_suspicions_total") - suspicions,
        "probes": await site.metric(http, "roost_heartbeat_probes_total") - probes,
        "dropped": dropped,
    }


async def footprint(site: Site, seconds: float) -> dict[str, float]:
    assert site.fleet is not None
    me = site.fleet.pid  # the senders' process
    c0, b0, t0 = cpu_s(site.pid), cpu_s(me), time.monotonic()
    rss = []
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(1)
        rss.append(rss_mb(site.pid))
    wall = time.monotonic() - t0
    return {
        "cpu": 100 * (cpu_s(site.pid) - c0) / wall,
        "rss": sum(rss) / len(rss),
        "senders_cpu": 100 * (cpu_s(me) - b0) / wall,
    }


async def one_size(
    n: int, tmp: Path, env: dict[str, str], bus: Bus, events: Events
) -> list[Result]:
    """Figures for one fleet size; on a failure midway the ones measured so far are kept
    (``out`` is extended in place and returned by the caller's ``partial``)."""
    out: list[Result] = PARTIAL
    site = Site(n, tmp, env, bus)
    site.proc.start()
    try:
        await asyncio.to_thread(site.proc.wait_ready, 90)
        headers = {"Authorization": f"Bearer {env['_ADMIN']}"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{site.port}", headers=headers, timeout=30
        ) as http:
            await bring_up(site, http)
            await asyncio.sleep(2)  # settle: first heartbeats, alarms cleared
            fp = await footprint(site, CPU_WINDOW_S)
            log(
                f"  idle with heartbeats: host service {fp['cpu']:.1f} % CPU, "
                f"{fp['rss']:.0f} MB; senders' process {fp['senders_cpu']:.1f} % CPU"
            )
            out += [
                result(f"host_cpu_pct_{n}", fp["cpu"], "%", higher_is_better=False),
                result(f"host_rss_mb_{n}", fp["rss"], "MB", higher_is_better=False),
                result(f"diag_senders_cpu_pct_{n}", fp["senders_cpu"], "%", higher_is_better=False),
            ]
            lat = await detection(site, http, events, KILLS[n])
            p50, p99 = percentile(lat, 50), percentile(lat, 99)
            log(f"  detection over {len(lat)} kills: p50 {p50:.0f} ms, p99 {p99:.0f} ms")
            out += [
                result(f"detect_p50_ms_{n}", p50, "ms", "stx-default", STX_DEFAULT_MS, False),
                result(f"detect_p99_ms_{n}", p99, "ms", "stx-default", STX_DEFAULT_MS, False),
                result(f"detect_max_ms_{n}", max(lat), "ms", higher_is_better=False),
            ]
            for percent in LOSS_PERCENTS if LOSS else ():
                got = await lossy(site, http, events, percent, LOSS_WINDOW_S[n])
                log(
                    f"  {percent} % UDP loss for {LOSS_WINDOW_S[n]:.0f} s: {got['failed']:.0f} "
                    f"failed, {got['degraded']:.0f} degraded, single-path detector would have "
                    f"failed {got['single_path']:.0f}; probes {got['probes']:.0f}; "
                    f"{got['dropped']} datagrams dropped"
                )
                out += [
                    result(
                        f"false_failures_{percent}pct_{n}",
                        got["failed"],
                        "hosts",
                        "single-path",
                        got["single_path"],
                        False,
                    ),
                    result(f"diag_degraded_{percent}pct_{n}", got["degraded"], "hosts"),
                    result(f"diag_probes_{percent}pct_{n}", got["probes"], "probes"),
                ]
    finally:
        await site.stop_senders()
        site.proc.stop()
    return out


async def measure(env: dict[str, str]) -> list[Result]:
    # Listens as guest; host records go out as the config service's broker user.
    settings = RoostSettings(service="bench", amqp_url=env["ROOST_AMQP_URL"])
    bus = ProducerBus(settings, Metrics("bench"))
    await bus.connect(deadline_s=30)
    events = await listen(bus)
    results: list[Result] = PARTIAL
    try:
        for n in SIZES:
            if remaining() < 120:
                log(f"out of time before N = {n}")
                break
            log(f"N = {n}")
            try:
                await one_size(n, Path(env["_TMP"]), env, bus, events)
            except (OutOfTime, httpx.HTTPError, RuntimeError) as exc:
                log(f"  N = {n} stopped: {exc!r}")
                traceback.print_exc()
                break
    finally:
        await bus.close()
    return results


def main(argv: list[str]) -> int:
    """``heartbeat_detection.py [N ...]``: the fleet sizes to run (default 10 100 1000)."""
    global SIZES
    if argv:
        SIZES = tuple(int(a) for a in argv)
        for n in SIZES:
            KILLS.setdefault(n, 20)
            LOSS_WINDOW_S.setdefault(n, 15.0)
    global LOSS
    if nft.available():
        nft.clean_leftovers()
    else:
        LOSS = False
        print("heartbeat_detection: no nft (or not root): the packet-loss figures are skipped")
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-"))
    vhost = ""
    db: ManagedProcess | None = None
    try:
        vhost, amqp_url = bench_vhost(tmp)
        db_port = free_port()
        db = embedded_db(db_port, tmp / "db", tmp / "db.log").start()
        db.wait_ready(60)
        admin = new_token()
        tokens = tmp / "tokens.json"
        write_tokens_file(tokens, {"admin": (Role.admin, admin)})
        ensure_secret(tmp / "heartbeat-secret.key")
        env = {
            "ROOST_AMQP_URL": amqp_url,
            "ROOST_MONGO_URL": url_for(db_port),
            "ROOST_AUTH_TOKENS_FILE": str(tokens),
            SECRET_ENV: str(tmp / "heartbeat-secret.key"),
            "_ADMIN": admin,  # not a setting: read by the benchmark only
            "_TMP": str(tmp),
        }
        results = asyncio.run(measure(env))
    finally:
        if db is not None:
            db.stop()
        if vhost:
            with contextlib.suppress(Exception):
                rabbitmqctl("delete_vhost", vhost)
        for log_file in sorted(tmp.glob("*.log")):
            if "roost_host" in log_file.name:
                tail = log_file.read_text(errors="replace").splitlines()[-5:]
                print(f"--- {log_file.name} (tail) ---", *tail, sep="\n")
        shutil.rmtree(tmp, ignore_errors=True)
    report(NAME, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
