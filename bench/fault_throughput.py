"""Fault throughput: alarms in through the bus, notifications out through a webhook, against
Prometheus Alertmanager doing the same job.

One run starts its own SecantusDB, RabbitMQ vhost, fault service, Alertmanager and a webhook
receiver (all on 127.0.0.1), measures, and removes everything again. See bench/README.md for
what each figure means. Bounded: it gives up waiting (and reports what arrived) well before
six minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from common import Result, bench_vhost, percentile, report, result

from roost_shared.auth import Role, new_token, write_tokens_file
from roost_shared.bus import Bus
from roost_shared.catalog import AlarmSet, Severity
from roost_shared.events import Envelope
from roost_shared.metrics import Metrics
from roost_shared.producer import ProducerBus
from roost_shared.settings import RoostSettings
from roost_sim.embedded_db import embedded_db, url_for
from roost_sim.ports import free_port
from roost_sim.processes import ManagedProcess, http_ready, python_module

NAME = "fault_throughput"
SIZES = (1_000, 10_000)
BATCH = 500  # events per bus.publish() (one confirm round) and alerts per batched AM POST
WARMUP = 20
UNLOADED = 50  # alarms sent one at a time, each after the previous webhook arrived
ALARM_ID = "100.101"
BUDGET_S = 330.0  # hard stop for all waiting; the whole run must stay under six minutes
RUN_TIMEOUT_S = {1_000: 60.0, 10_000: 150.0}
IDLE_SETTLE_S = 5.0
IDLE_RESERVE_S = 45.0  # kept free at the end for quiescing, idle sampling and tear-down
IDLE_SAMPLE_S = 10.0
SCRAPE_S = 0.2  # how often the fault service's /metrics is read during a Roost run
CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTED = time.monotonic()


def remaining() -> float:
    return BUDGET_S - (time.monotonic() - STARTED)


def log(msg: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {msg}", flush=True)


# /proc sampling ---------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def find_pid(comm: str) -> int | None:
    """The first process whose /proc comm is ``comm`` (read only; used to watch the broker)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == comm:
                    return int(entry.name)
    return None


class CpuWatch:
    """CPU seconds each watched process used between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.begin: dict[str, float] = {}
        self.wall = 0.0

    def start(self) -> None:
        self.begin = {k: cpu_s(p) for k, p in self.pids.items()}
        self.wall = time.monotonic()

    def stop(self) -> str:
        wall = time.monotonic() - self.wall
        used = {k: cpu_s(p) - self.begin[k] for k, p in self.pids.items()}
        parts = ", ".join(f"{k} {v:.1f}s ({v / wall * 100:.0f}%)" for k, v in used.items())
        return f"cpu over {wall:.1f}s wall: {parts}; total {sum(used.values()):.1f} cpu-s"


# Webhook receiver -------------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Receiver:
    """A small HTTP/1.1 server on its own thread and event loop (so the publisher in the main
    loop cannot delay receipts); records when each notification arrived.

    ``/roost`` takes the fault service's ``{"notifications": [...]}``; ``/alertmanager`` takes
    Alertmanager's ``{"alerts": [...]}``. Keys are ``bench.<run>.<n>``; the first receipt of a
    key counts, repeats are counted apart.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.lock = threading.Lock()
        self.first: dict[str, float] = {}
        self.per_run: dict[str, int] = {}
        self.repeats: dict[str, int] = {}
        self.post_sizes: dict[str, list[int]] = {}
        self.errors: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="receiver", daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("webhook receiver did not start")

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def received(self, run: str) -> int:
        return self.per_run.get(run, 0)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, backlog=4096)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length, close, chunked = 0, False, False
                for line in lines[1:]:
                    key, _, value = line.partition(":")
                    key, value = key.strip().lower(), value.strip().lower()
                    if key == "content-length":
                        length = int(value)
                    elif key == "connection":
                        close = value == "close"
                    elif key == "transfer-encoding":
                        chunked = "chunked" in value
                body = await _read_chunked(reader) if chunked else await reader.readexactly(length)
                at = time.time()
                writer.write(OK)
                self._record(path, at, body)
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as exc:  # a bug here must show, not hang the run
            self.errors.append(repr(exc))
        finally:
            writer.close()

    def _record(self, path: str, at: float, body: bytes) -> None:
        doc = json.loads(body)
        if path == "/roost":
            keys = [n["alarm"]["entity_instance_id"] for n in doc["notifications"]]
        else:
            keys = [a["labels"]["entity"] for a in doc["alerts"]]
        with self.lock:
            self.post_sizes.setdefault(path, []).append(len(keys))
            for key in keys:
                run = key.split(".")[1]
                if key in self.first:
                    self.repeats[run] = self.repeats.get(run, 0) + 1
                    continue
                self.first[key] = at
                self.per_run[run] = self.per_run.get(run, 0) + 1


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            await reader.readline()
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readline()


# Runs -------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One load run: when each key was sent, and what arrived."""

    system: str
    n: int
    run: str
    sent: dict[str, float] = field(default_factory=dict)
    sent_done: float = 0.0  # last publish confirmed / last POST answered
    received: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    diag: dict[str, float] = field(default_factory=dict)

    @property
    def first_sent(self) -> float:
        return min(self.sent.values())

    @property
    def missing(self) -> int:
        return self.n - len(self.received)

    @property
    def throughput(self) -> float:
        if not self.received:
            return 0.0
        return len(self.received) / (max(self.received.values()) - self.first_sent)

    @property
    def latencies_ms(self) -> list[float]:
        return [(t - self.sent[k]) * 1000 for k, t in self.received.items()]

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def line(self) -> str:
        return (
            f"{self.system:<20} n={self.n:<6} {self.throughput:8.0f}/s  p50 {self.p(50):8.1f} ms"
            f"  p99 {self.p(99):8.1f} ms  sent in {self.sent_done - self.first_sent:6.2f}s"
            f"  missing {self.missing}"
        )


def keys_for(run: str, n: int) -> list[str]:
    return [f"bench.{run}.{i:06d}" for i in range(n)]


async def wait_received(rx: Receiver, r: Run, timeout_s: float) -> None:
    deadline = time.monotonic() + max(1.0, min(timeout_s, remaining()))
    while True:  # polled: the receiver lives on another thread's loop
        if rx.received(r.run) >= r.n or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.02)
    with rx.lock:
        r.received = {k: rx.first[k] for k in r.sent if k in rx.first}
    if r.missing:
        r.notes.append(f"{r.missing} of {r.n} notifications not received within the time bound")
    if rx.repeats.get(r.run):
        r.notes.append(f"{rx.repeats[r.run]} repeated notifications (at-least-once)")


# Roost --------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def prom_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m[1] != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m[2] or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m[3])
    return total


class Fault:
    """The fault service under test plus an HTTP client for its API."""

    def __init__(self, proc: ManagedProcess, url: str, admin: str) -> None:
        self.proc = proc
        self.url = url
        self.http = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=30.0
        )

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    async def metrics(self) -> str:
        return (await self.http.get("/metrics")).text

    async def stored_major(self) -> int:
        response = await self.http.get("/v1/alarms/summary", params={"include_suppress": True})
        response.raise_for_status()
        return int(response.json()["major"])


def alarm(key: str) -> Envelope:
    return Envelope.of(
        AlarmSet(
            alarm_id=ALARM_ID,
            entity_instance_id=key,
            entity_type_id="bench.entity",
            severity=Severity.major,
            reason_text="benchmark alarm",
        ),
        source="bench",
    )


async def roost_run(
    bus: Bus,
    fault: Fault,
    rx: Receiver,
    run: str,
    n: int,
    per_publish: int,
    timeout_s: float,
    cpu: CpuWatch,
) -> Run:
    """Publish ``n`` alarms, ``per_publish`` per confirm round, and wait for their webhooks."""
    r = Run("roost" if per_publish > 1 else "roost-seq", n, run)
    keys = keys_for(run, n)
    envelopes = [alarm(k) for k in keys]  # built before the clock starts, like AM's bodies
    before = await fault.metrics()
    processed_base = prom_value(
        before, "roost_bus_consumed_total", queue="fault.commands", outcome="processed"
    )
    ingested_at: list[float] = []

    async def watch_ingest() -> None:
        # When did the consumer commit the last alarm? (resolution SCRAPE_S)
        while True:
            await asyncio.sleep(SCRAPE_S)
            text = await fault.metrics()
            done = prom_value(
                text, "roost_bus_consumed_total", queue="fault.commands", outcome="processed"
            )
            if done - processed_base >= n:
                ingested_at.append(time.time())
                return

    cpu.start()
    watcher = asyncio.create_task(watch_ingest())
    for start in range(0, n, per_publish):
        at = time.time()
        await bus.publish(envelopes[start : start + per_publish])
        for key in keys[start : start + per_publish]:
            r.sent[key] = at
    r.sent_done = time.time()
    await wait_received(rx, r, timeout_s)
    r.notes.append(cpu.stop())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watcher, 5.0)
    watcher.cancel()
    after = await fault.metrics()

    def delta(name: str, **labels: str) -> float:
        return prom_value(after, name, **labels) - prom_value(before, name, **labels)

    batches = delta("roost_bus_batch_seconds_count", queue="fault.commands")
    batch_s = delta("roost_bus_batch_seconds_sum", queue="fault.commands")
    r.diag["publish_per_s"] = n / (r.sent_done - r.first_sent)
    if ingested_at:
        r.diag["ingest_per_s"] = n / (ingested_at[0] - r.first_sent)
    if batches:
        r.diag["consumer_batches"] = batches
        r.diag["consumer_batch_mean"] = n / batches
        r.diag["consumer_batch_ms_mean"] = batch_s / batches * 1000
    return r


async def roost_closed_loop(bus: Bus, fault: Fault, rx: Receiver, n: int) -> Run:
    """One alarm at a time, the next only after the previous one's webhook arrived: the
    latency of Roost's path without any queueing (the floor under the burst figures)."""
    r = Run("roost-unloaded", n, "unloaded")
    before = await fault.metrics()
    for key in keys_for(r.run, n):
        envelope = alarm(key)
        at = time.time()
        await bus.publish([envelope])
        r.sent[key] = at
        deadline = time.monotonic() + 10.0
        while True:
            if key in rx.first or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.001)
    r.sent_done = time.time()
    await wait_received(rx, r, 10.0)
    after = await fault.metrics()
    name, queue = "roost_bus_batch_seconds", "fault.commands"
    batches = prom_value(after, f"{name}_count", queue=queue) - prom_value(
        before, f"{name}_count", queue=queue
    )
    seconds = prom_value(after, f"{name}_sum", queue=queue) - prom_value(
        before, f"{name}_sum", queue=queue
    )
    if batches:
        r.diag["consumer_batch_mean"] = n / batches
        r.diag["consumer_batch_ms_mean"] = seconds / batches * 1000
    return r


def roost_post_sizes(rx: Receiver, since: int) -> list[int]:
    with rx.lock:
        return list(rx.post_sizes.get("/roost", [])[since:])


# Alertmanager -------------------------------------------------------------------------------------

AM_CONFIG = """\
route:
  receiver: bench
  group_by: ['...']
  group_wait: 0s
  group_interval: 5m
  repeat_interval: 24h
receivers:
  - name: bench
    webhook_configs:
      - url: {url}
        send_resolved: false
"""


def am_alert(key: str) -> dict[str, object]:
    return {
        "labels": {
            "alertname": "BenchAlarm",
            "alarm_id": ALARM_ID,
            "entity": key,
            "severity": "major",
        },
        "annotations": {"summary": "benchmark alarm"},
    }


async def am_run(
    am_url: str, rx: Receiver, run: str, n: int, per_post: int, timeout_s: float, cpu: CpuWatch
) -> Run:
    system = "alertmanager" if per_post == 1 else f"am-batch{per_post}"
    r = Run(system, n, run)
    keys = keys_for(run, n)
    chunks = [keys[i : i + per_post] for i in range(0, n, per_post)]
    bodies = [json.dumps([am_alert(k) for k in chunk]).encode() for chunk in chunks]
    headers = {"Content-Type": "application/json"}
    failures = 0
    async with httpx.AsyncClient(base_url=am_url, timeout=30.0) as http:
        await http.get("/-/ready")  # open the keep-alive connection before the clock starts
        cpu.start()
        for chunk, body in zip(chunks, bodies, strict=True):
            at = time.time()
            response = await http.post("/api/v2/alerts", content=body, headers=headers)
            if response.status_code != 200:
                failures += 1
                continue
            for key in chunk:
                r.sent[key] = at
        r.sent_done = time.time()
    if failures:
        r.notes.append(f"{failures} POSTs refused")
        r.n = len(r.sent)
    await wait_received(rx, r, timeout_s)
    r.notes.append(cpu.stop())
    return r


# Set-up and tear-down -----------------------------------------------------------------------------


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def start_alertmanager(tmp: Path, hook: str) -> tuple[ManagedProcess | None, str, str]:
    """Alertmanager on a free port, or None with the reason it cannot run here."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        return None, "", "prometheus-alertmanager is not installed (make bench-deps installs it)"
    port = free_port()
    config = tmp / "alertmanager.yml"
    config.write_text(AM_CONFIG.format(url=hook))
    url = f"http://127.0.0.1:{port}"
    proc = ManagedProcess(
        "alertmanager",
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        log_path=tmp / "alertmanager.log",
        ready=http_ready(f"{url}/-/ready"),
    ).start()
    try:
        proc.wait_ready(30)
    except Exception as exc:
        proc.stop()
        return None, "", f"alertmanager did not start: {exc}"
    return proc, url, ""


def quiesce(pids: dict[str, int], limit_s: float) -> bool:
    """Wait until the processes together use < 10 % of a core over one second (or give up)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        begin = sum(cpu_s(p) for p in pids.values())
        time.sleep(1.0)
        if sum(cpu_s(p) for p in pids.values()) - begin < 0.1:
            return True
    return False


def queue_depth(vhost: str, queue: str) -> int:
    """Messages ready plus unacknowledged in ``queue`` (-1 if rabbitmqctl cannot tell)."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue and parts[1].isdigit():
            return int(parts[1])
    return -1


def idle_footprint(pids: dict[str, int]) -> dict[str, tuple[float, float]]:
    """{name: (mean RSS MB, CPU % of one core)} over IDLE_SAMPLE_S."""
    begin = {k: cpu_s(p) for k, p in pids.items()}
    wall = time.monotonic()
    rss: dict[str, list[float]] = {k: [] for k in pids}
    for _ in range(int(IDLE_SAMPLE_S)):
        time.sleep(1.0)
        for k, p in pids.items():
            rss[k].append(rss_mb(p))
    wall = time.monotonic() - wall
    return {
        k: (sum(rss[k]) / len(rss[k]), (cpu_s(p) - begin[k]) / wall * 100) for k, p in pids.items()
    }


@dataclass
class Parts:
    tmp: Path
    rx: Receiver
    vhost: str = ""
    db: ManagedProcess | None = None
    fault_proc: ManagedProcess | None = None
    am: ManagedProcess | None = None


def teardown(parts: Parts) -> None:
    for proc in (parts.am, parts.fault_proc, parts.db):
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.stop()
    with contextlib.suppress(Exception):
        parts.rx.stop()
    if parts.vhost:
        try:
            rabbitmqctl("delete_vhost", parts.vhost)
        except Exception as exc:
            print(f"could not delete vhost {parts.vhost}: {exc}", file=sys.stderr)
    shutil.rmtree(parts.tmp, ignore_errors=True)


def main() -> int:
    sys.setswitchinterval(0.001)  # the receiver thread gets the GIL within 1 ms
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-"))
    parts = Parts(tmp, Receiver())
    try:
        parts.rx.start()
        parts.vhost, amqp_url = bench_vhost(tmp)

        db_port = free_port()
        parts.db = embedded_db(db_port, tmp / "db", tmp / "db.log").start()
        parts.db.wait_ready(60)

        admin = new_token()
        tokens = tmp / "tokens.json"
        write_tokens_file(tokens, {"admin": (Role.admin, admin)})
        port = free_port()
        parts.fault_proc = ManagedProcess(
            "fault",
            python_module("roost_fault.app"),
            env={
                "ROOST_AMQP_URL": amqp_url,
                "ROOST_MONGO_URL": url_for(db_port),
                "ROOST_PORT": str(port),
                "ROOST_DATABASE": "roost_fault",
                "ROOST_AUTH_TOKENS_FILE": str(tokens),
                "ROOST_STATE_DIR": str(tmp / "state"),
                "ROOST_WEBHOOK_ALLOW_NETS": '["127.0.0.0/8"]',  # the receiver is on 127.0.0.1
            },
            log_path=tmp / "fault.log",
            ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
        ).start()
        parts.fault_proc.wait_ready(90)
        log("database and fault service ready")

        parts.am, am_url, am_skip = start_alertmanager(tmp, parts.rx.url("/alertmanager"))
        if am_skip:
            print(f"NOTE: peer skipped: {am_skip}", flush=True)
        else:
            log("alertmanager ready")
        results = asyncio.run(measure(parts, amqp_url, f"http://127.0.0.1:{port}", admin, am_url))
    except BaseException:
        for proc in (parts.fault_proc, parts.db, parts.am):
            if proc is not None:
                print(f"--- {proc.name} log tail ---\n{proc.log_tail()}", file=sys.stderr)
        raise
    finally:
        teardown(parts)
    report(NAME, results)
    return 0


async def measure(
    parts: Parts, amqp_url: str, fault_url: str, admin: str, am_url: str
) -> list[Result]:
    rx = parts.rx
    assert parts.fault_proc is not None and parts.fault_proc.proc is not None
    assert parts.db is not None and parts.db.proc is not None
    fault = Fault(parts.fault_proc, fault_url, admin)
    am_pid = parts.am.proc.pid if parts.am is not None and parts.am.proc is not None else None
    pids = {
        "fault": fault.pid,
        "db": parts.db.proc.pid,
        "rabbitmq": find_pid("beam.smp"),
        "alertmanager": am_pid,
        "bench": os.getpid(),
    }
    rss_fresh = rss_mb(fault.pid)
    # Each alarm goes out as its owner's broker user (source "bench": the host service's).
    bus = ProducerBus(RoostSettings(service="bench", amqp_url=amqp_url), Metrics("bench"))
    await bus.connect(30)
    try:
        response = await fault.http.post(
            "/v1/subscriptions", json={"url": rx.url("/roost"), "description": "bench"}
        )
        response.raise_for_status()

        # Warm-up: connections, the webhook worker, the DB's first writes, AM's first groups.
        warm = Run("roost", WARMUP, "warm")
        await bus.publish([alarm(k) for k in keys_for("warm", WARMUP)])
        warm.sent = dict.fromkeys(keys_for("warm", WARMUP), time.time())
        await wait_received(rx, warm, 30)
        if warm.missing:
            raise RuntimeError(f"warm-up: {warm.notes}")
        if am_url:
            await am_run(am_url, rx, "amwarm", WARMUP, 1, 30, CpuWatch({}))
        log("warm-up done")
        r = await roost_closed_loop(bus, fault, rx, UNLOADED)
        runs: dict[tuple[str, int], Run] = {("roost-unloaded", UNLOADED): r}
        stored_expected = WARMUP + UNLOADED - r.missing
        log(r.line())

        cpu = CpuWatch(pids)
        busy = {"fault": fault.pid, "db": pids["db"]}
        for n in SIZES:
            tag = f"{n // 1000}k"
            if am_url:
                for per_post in (1, BATCH):
                    if remaining() < IDLE_RESERVE_S + 30:
                        print(f"NOTE: skipping AM {per_post}/POST at {n}: time bound", flush=True)
                        continue
                    label = "seq" if per_post == 1 else "bat"
                    r = await am_run(
                        am_url, rx, f"am{label}{tag}", n, per_post, RUN_TIMEOUT_S[n], cpu
                    )
                    runs[r.system, n] = r
                    log(r.line())
            variants = (BATCH, 1) if n == SIZES[0] else (BATCH,)
            for per_publish in variants:
                await asyncio.to_thread(quiesce, busy, 20.0)
                timeout = min(RUN_TIMEOUT_S[n], remaining() - IDLE_RESERVE_S)
                since = len(rx.post_sizes.get("/roost", []))
                label = "" if per_publish > 1 else "seq"
                r = await roost_run(
                    bus, fault, rx, f"roost{label}{tag}", n, per_publish, timeout, cpu
                )
                r.diag["webhook_posts"] = len(sizes := roost_post_sizes(rx, since))
                r.diag["webhook_post_mean"] = sum(sizes) / len(sizes) if sizes else 0.0
                stored_expected += n
                stored = await fault.stored_major()
                r.diag["stored_missing"] = stored_expected - stored
                if stored == stored_expected:
                    r.notes.append(f"all {stored} alarms stored (GET /v1/alarms/summary)")
                else:
                    queued = queue_depth(parts.vhost, "fault.commands")
                    r.notes.append(
                        f"NOT ALL STORED: {stored} active alarms, expected {stored_expected} "
                        f"({stored_expected - stored} missing; {queued} still in "
                        "fault.commands, i.e. not yet consumed, when the time bound hit)"
                    )
                    # Drop the backlog so it does not load the machine in later measurements.
                    rabbitmqctl("purge_queue", "-p", parts.vhost, "fault.commands")
                    r.notes.append("backlog purged from fault.commands")
                    stored_expected = stored  # what is stored from here on is what counts
                runs[r.system, n] = r
                log(r.line())

        log("waiting until idle, then sampling")
        settled = await asyncio.to_thread(quiesce, busy, 30.0)
        await asyncio.sleep(IDLE_SETTLE_S)
        idle_pids = {"fault": fault.pid, "db": pids["db"]}
        if am_pid:
            idle_pids["alertmanager"] = am_pid
        idle = await asyncio.to_thread(idle_footprint, idle_pids)
        if not settled:
            print("NOTE: the fault service and DB were still busy when idle sampling began")
    finally:
        await bus.close()
        await fault.http.aclose()

    print()
    print("Runs (throughput = delivered / (last webhook receipt - first send)):")
    for r in runs.values():
        print("  " + r.line())
        for note in r.notes:
            print(f"      {note}")
        for k, v in r.diag.items():
            print(f"      {k} = {v:.1f}")
    print(f"  fault RSS right after start: {rss_fresh:.1f} MB")
    for k, (rss, pct) in idle.items():
        print(f"  idle {k}: RSS {rss:.1f} MB, CPU {pct:.2f}% of a core")
    if rx.errors:
        print(f"  receiver errors: {rx.errors[:3]}")
    print()
    return build_results(runs, idle, rss_fresh)


def build_results(
    runs: dict[tuple[str, int], Run], idle: dict[str, tuple[float, float]], rss_fresh: float
) -> list[Result]:
    out: list[Result] = []
    figures: tuple[tuple[str, Callable[[Run], float], str, bool], ...] = (
        ("alarms_per_s", lambda r: r.throughput, "1/s", True),
        ("p50_ms", lambda r: r.p(50), "ms", False),
        ("p99_ms", lambda r: r.p(99), "ms", False),
    )
    # (Roost run, peer run, metric suffix): the first pairing is the headline figure.
    pairings = (
        ("roost", "alertmanager", ""),
        ("roost", f"am-batch{BATCH}", "_vs_batched"),
        ("roost-seq", "alertmanager", "_seq"),
    )
    for n in SIZES:
        tag = f"{n // 1000}k"
        for ours, theirs, suffix in pairings:
            roost, peer = runs.get((ours, n)), runs.get((theirs, n))
            if roost is None or (suffix and peer is None):
                continue
            for name, fn, unit, higher in figures:
                peer_value = fn(peer) if peer is not None and peer.received else None
                out.append(
                    result(
                        f"{name}_{tag}{suffix}",
                        fn(roost),
                        unit,
                        peer=theirs if peer_value is not None else None,
                        peer_value=peer_value,
                        higher_is_better=higher,
                    )
                )
        for ours, suffix in (("roost", ""), ("roost-seq", "_seq")):
            roost = runs.get((ours, n))
            if roost is None:
                continue
            out.append(result(f"missing_{tag}{suffix}", roost.missing, "alarms"))
            out.append(
                result(f"stored_missing_{tag}{suffix}", roost.diag["stored_missing"], "alarms")
            )
            for key, unit in (
                ("publish_per_s", "1/s"),
                ("ingest_per_s", "1/s"),
                ("consumer_batch_mean", "msgs"),
                ("consumer_batch_ms_mean", "ms"),
                ("webhook_post_mean", "notif"),
            ):
                if key in roost.diag:
                    out.append(result(f"diag_{key}_{tag}{suffix}", roost.diag[key], unit))
    unloaded, am_seq = runs.get(("roost-unloaded", UNLOADED)), runs.get(("alertmanager", SIZES[0]))
    if unloaded is not None and unloaded.received:
        if "consumer_batch_ms_mean" in unloaded.diag:
            ms = unloaded.diag["consumer_batch_ms_mean"]
            out.append(result("diag_consumer_batch_ms_mean_unloaded", ms, "ms"))
        for name, fn, unit, _ in figures[1:]:
            peer_value = fn(am_seq) if am_seq is not None and am_seq.received else None
            out.append(
                result(
                    f"{name}_unloaded",
                    fn(unloaded),
                    unit,
                    peer="alertmanager" if peer_value is not None else None,
                    peer_value=peer_value,
                    higher_is_better=False,
                )
            )
    fault_rss, fault_cpu = idle["fault"]
    am_rss, am_cpu = idle.get("alertmanager", (None, None))
    am = "alertmanager" if am_rss is not None else None
    out.append(result("idle_rss_mb", fault_rss, "MB", am, am_rss, higher_is_better=False))
    out.append(result("idle_cpu_pct", fault_cpu, "%core", am, am_cpu, higher_is_better=False))
    out.append(result("diag_idle_db_rss_mb", idle["db"][0], "MB"))
    out.append(result("diag_idle_db_cpu_pct", idle["db"][1], "%core"))
    out.append(result("diag_fault_rss_at_start_mb", rss_fresh, "MB"))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
