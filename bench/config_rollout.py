"""Config rollout: how fast one system change reaches every host, at 10, 100 and 500 simulated
hosts; how fast agents' inventory reports are stored; what an idle agent costs.

One run starts its own SecantusDB, RabbitMQ vhost, config and fault services (processes) and,
per fleet size, ONE process running N real agents (``python -m roost_sim.fleet in-process N``,
not in the benchmark's event loop), measures, and removes everything again. See bench/README.md
for what each figure means. Bounded: every wait has a deadline and the whole run stays well
under six minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from common import Result, bench_vhost, report, result
from fault_throughput import CpuWatch, cpu_s, find_pid, prom_value, quiesce, rabbitmqctl, rss_mb
from pymongo import AsyncMongoClient, ReplaceOne

from roost_agent.inventory import from_profile
from roost_config.logic import inventory_digest
from roost_shared.auth import Role, new_token, write_tokens_file
from roost_shared.events import Envelope, utcnow
from roost_shared.metrics import Metrics
from roost_shared.producer import ProducerBus
from roost_shared.settings import RoostSettings
from roost_sim.embedded_db import embedded_db, url_for
from roost_sim.fleet import Fleet, bytecode_env, host_mac, render_profile
from roost_sim.ports import free_port
from roost_sim.processes import ManagedProcess, http_ready, python_module

NAME = "config_rollout"
SIZES = (10, 100, 500)
ROLLOUTS = 3  # PATCH /v1/system repetitions per fleet size; the median is the figure
FLEET_FIRST_INDEX = 0x8000  # roost_sim.fleet in-process numbers its hosts from here
INVENTORY_HOSTS = 2_000
INVENTORY_FIRST_INDEX = 0x4000  # distinct MACs, never announced: inventory of unknown hosts
PUBLISH_BATCH = 500  # envelopes per bus.publish() (one confirm round)
PATCH_CONCURRENCY = 16  # host PATCHes in flight during provisioning
POLL_S = 0.05  # pause between two GET /v1/hosts while waiting for a rollout
PAGE = 1000  # GET /v1/hosts limit (the API's maximum)
BUDGET_S = 320.0  # hard stop for all waiting; the whole run must stay under six minutes
ROLLOUT_TIMEOUT_S = 30.0
IDLE_SAMPLE_S = 10.0
TARGET_ROLLOUT_S = 5.0
CONFIG_QUEUE = "config.agents"
STARTED = time.monotonic()


def remaining() -> float:
    return BUDGET_S - (time.monotonic() - STARTED)


def deadline_in(seconds: float) -> float:
    """A monotonic deadline ``seconds`` away, but never past the overall budget."""
    return time.monotonic() + max(1.0, min(seconds, remaining()))


def log(msg: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {msg}", flush=True)


async def wait_until(
    probe: Callable[[], Awaitable[bool]], timeout_s: float, every_s: float = 0.2
) -> bool:
    """Poll ``probe`` until it is true or the deadline passes; returns whether it became true."""
    deadline = deadline_in(timeout_s)
    while True:
        if await probe():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(every_s)


# The services ---------------------------------------------------------------------------------


class Config:
    """The config service under test plus an admin HTTP client for its API."""

    def __init__(
        self, proc: ManagedProcess, url: str, admin: str, fault_url: str, db_url: str
    ) -> None:
        self.proc = proc
        headers = {"Authorization": f"Bearer {admin}"}
        self.http = httpx.AsyncClient(
            base_url=url,
            headers=headers,
            timeout=30.0,
            limits=httpx.Limits(max_connections=PATCH_CONCURRENCY + 4),
        )
        self.fault = httpx.AsyncClient(base_url=fault_url, headers=headers, timeout=30.0)
        self.mongo: AsyncMongoClient = AsyncMongoClient(db_url, tz_aware=True)

    async def close(self) -> None:
        await self.http.aclose()
        await self.fault.aclose()
        await self.mongo.close()

    async def db_ops(self) -> float:
        """Operations SecantusDB has served so far (``serverStatus`` opcounters, all kinds)."""
        status = await self.mongo.admin.command("serverStatus")
        return float(sum(status.get("opcounters", {}).values()))

    async def drift_events(self) -> int:
        """250.001 (configuration out of date) sets and clears in the fault service's log."""
        count, marker = 0, None
        while True:
            query: dict[str, Any] = {"q.field": "event_log_id", "q.value": "250.001"}
            query["limit"] = PAGE
            if marker:
                query["marker"] = marker
            response = await self.fault.get("/v1/event_log", params=query)
            response.raise_for_status()
            page = response.json()["event_log"]
            count += len(page)
            if len(page) < PAGE:
                return count
            marker = page[-1]["uuid"]

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    async def metrics(self) -> str:
        return (await self.http.get("/metrics")).text

    async def hosts(self, **params: str) -> list[dict[str, Any]]:
        """Every host (following ``next`` pages, though one page holds all of them here)."""
        out: list[dict[str, Any]] = []
        marker: str | None = None
        while True:
            query: dict[str, Any] = {"limit": PAGE, **params}
            if marker:
                query["marker"] = marker
            response = await self.http.get("/v1/hosts", params=query)
            response.raise_for_status()
            page = response.json()["hosts"]
            out.extend(page)
            if len(page) < PAGE:
                return out
            marker = page[-1]["uuid"]


def start_service(name: str, tmp: Path, env: dict[str, str]) -> tuple[ManagedProcess, str]:
    port = free_port()
    proc = ManagedProcess(
        name,
        python_module(f"roost_{name}.app"),
        env={**env, "ROOST_PORT": str(port), "ROOST_STATE_DIR": str(tmp / f"{name}-state")},
        log_path=tmp / f"{name}.log",
        ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
    ).start()
    proc.wait_ready(90)
    return proc, f"http://127.0.0.1:{port}"


def fleet_process(tmp: Path, n: int, amqp_url: str) -> ManagedProcess:
    """N agents in one process of their own, run the way the fleet runs agents (cached
    bytecode, ``-OO``); ready when it prints that its agents are up."""
    log_path = tmp / f"fleet-{n}.log"

    def ready() -> bool:
        with contextlib.suppress(FileNotFoundError):
            return "agents in one process" in log_path.read_text(errors="replace")
        return False

    return ManagedProcess(
        f"fleet-{n}",
        python_module(
            "roost_sim.fleet", "--state-dir", str(tmp / f"fleet-{n}"), "in-process", str(n)
        ),
        env={
            "ROOST_AMQP_URL": amqp_url,
            # No host service listens here: the agents' 10 Hz heartbeats (5,000 datagrams/s at
            # 500 agents) would only load this process. heartbeat_detection measures them.
            "ROOST_HEARTBEAT_PERIOD_MS": "10000",
            "ROOST_BUS_HEARTBEAT_PERIOD_MS": "60000",
            **bytecode_env(tmp),
        },
        log_path=log_path,
        ready=ready,
    )


def fleet_start_line(proc: ManagedProcess) -> str:
    assert proc.log_path is not None
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if "agents in one process" in line:
            return line.strip()
    return ""


# /proc sampling -------------------------------------------------------------------------------


def footprint(pid: int, seconds: float) -> tuple[float, float]:
    """(mean VmRSS MB over 1 s samples, CPU % of one core) over ``seconds``."""
    begin, wall = cpu_s(pid), time.monotonic()
    samples = []
    for _ in range(max(1, int(seconds))):
        time.sleep(1.0)
        samples.append(rss_mb(pid))
    return sum(samples) / len(samples), (cpu_s(pid) - begin) / (time.monotonic() - wall) * 100


@dataclass
class Scrape:
    """Deltas of the config service's counters between two /metrics reads."""

    before: str
    after: str = ""

    def delta(self, name: str, **labels: str) -> float:
        return prom_value(self.after, name, **labels) - prom_value(self.before, name, **labels)

    def batches(self) -> tuple[float, float, float]:
        """(batches, messages, seconds) of the config.agents consumer."""
        return (
            self.delta("roost_bus_batch_seconds_count", queue=CONFIG_QUEUE),
            self.delta("roost_bus_consumed_total", queue=CONFIG_QUEUE),
            self.delta("roost_bus_batch_seconds_sum", queue=CONFIG_QUEUE),
        )


# One fleet size -------------------------------------------------------------------------------


@dataclass
class Round:
    n: int
    agents_start_s: float = float("nan")
    discovery_s: float = float("nan")
    discovered: int = 0
    patch_s: float = float("nan")
    patch_failures: int = 0
    provision_s: float = float("nan")
    provisioned: int = 0
    rollouts: list[float] = field(default_factory=list)  # seconds; nan when it timed out
    converged: list[int] = field(default_factory=list)
    rss_mb: float = float("nan")
    idle_cpu_pct: float = float("nan")
    notes: list[str] = field(default_factory=list)
    diag: dict[str, float] = field(default_factory=dict)

    @property
    def rollout_s(self) -> float:
        done = [s for s in self.rollouts if s == s]
        return statistics.median(done) if done and len(done) == len(self.rollouts) else float("nan")


async def run_round(
    n: int, config: Config, tmp: Path, amqp_url: str, pids: dict[str, int | None]
) -> Round:
    r = Round(n)
    macs = {host_mac(FLEET_FIRST_INDEX + i) for i in range(n)}
    fleet = fleet_process(tmp, n, amqp_url)
    started = time.monotonic()
    fleet.start()
    assert fleet.proc is not None
    try:
        await asyncio.to_thread(fleet.wait_ready, max(5.0, min(60.0, remaining())))
        r.agents_start_s = time.monotonic() - started
        r.notes.append(fleet_start_line(fleet))
        watched = {**pids, "fleet": fleet.proc.pid}

        # 1. Discovery: every agent's announce makes a discovered host.
        found: dict[str, dict[str, Any]] = {}

        async def all_discovered() -> bool:
            found.clear()
            for h in await config.hosts(install_state="discovered"):
                if h["mgmt_mac"] in macs:
                    found[h["mgmt_mac"]] = h
            return len(found) == n

        ok = await wait_until(all_discovered, 60.0)
        r.discovery_s, r.discovered = time.monotonic() - started, len(found)
        if not ok:
            r.notes.append(f"only {len(found)} of {n} discovered within the time bound")

        # 2. Registration: name them and give them a personality; wait until all applied v1.
        sem = asyncio.Semaphore(PATCH_CONCURRENCY)

        async def provision(host: dict[str, Any]) -> None:
            async with sem:
                response = await config.http.patch(
                    f"/v1/hosts/{host['uuid']}",
                    json={"hostname": host["reported_hostname"], "personality": "worker"},
                )
            if response.status_code != 200:
                r.patch_failures += 1
                if r.patch_failures == 1:
                    r.notes.append(f"PATCH refused: {response.status_code} {response.text[:200]}")

        cpu = CpuWatch(watched)
        cpu.start()
        t0 = time.monotonic()
        await asyncio.gather(*(provision(h) for h in found.values()))
        r.patch_s = time.monotonic() - t0
        ours: list[dict[str, Any]] = []

        async def all_at(version: int) -> bool:
            ours[:] = [h for h in await config.hosts() if h["mgmt_mac"] in macs]
            return sum(1 for h in ours if h["config_applied"] >= version) == n

        ok = await wait_until(lambda: all_at(1), 90.0, every_s=POLL_S)
        r.provision_s = time.monotonic() - t0
        r.provisioned = sum(
            1 for h in ours if h["config_applied"] >= 1 and h["install_state"] == "provisioned"
        )
        r.notes.append(f"provisioning: {cpu.stop()}")
        if not ok:
            r.notes.append(f"only {r.provisioned} of {n} provisioned within the time bound")
        version = max((h["config_target"] for h in ours), default=1)

        # 3. Rollouts: one PATCH /v1/system each; time until every host applied the new version.
        for rep in range(ROLLOUTS):
            if remaining() < 40:
                r.notes.append(f"rollout {rep + 1} skipped: time bound")
                break
            await asyncio.to_thread(quiesce, {"config": pids["config"] or 0}, 15.0)
            version += 1
            await rollout(r, config, macs, version, rep, cpu)
        if remaining() > 40:  # diagnostic: the same with a cheap observer, and phase times
            await asyncio.to_thread(quiesce, {"config": pids["config"] or 0}, 15.0)
            version += 1
            await rollout(r, config, macs, version, ROLLOUTS, cpu, observer="metrics")

        # 4. The N-agent process's footprint, idle.
        await asyncio.sleep(2.0)
        r.rss_mb, r.idle_cpu_pct = await asyncio.to_thread(footprint, fleet.proc.pid, 3.0)
    finally:
        fleet.stop()
    # Forget this round's hosts, so the next PATCH /v1/system reconfigures only the next fleet.
    sem = asyncio.Semaphore(PATCH_CONCURRENCY)

    async def delete(host: dict[str, Any]) -> None:
        async with sem:
            await config.http.delete(f"/v1/hosts/{host['uuid']}")

    await asyncio.gather(*(delete(h) for h in await config.hosts() if h["mgmt_mac"] in macs))
    return r


async def rollout(
    r: Round,
    config: Config,
    macs: set[str],
    version: int,
    rep: int,
    cpu: CpuWatch,
    observer: str = "hosts",
) -> None:
    """One ``PATCH /v1/system``; time until every host's ``config_applied`` reached ``version``.

    ``observer="hosts"`` (the figure) polls ``GET /v1/hosts``; ``"metrics"`` (a diagnostic run)
    polls the config service's cheap /metrics instead (handled ``agent.config.applied``), which
    also times the phases, and checks ``GET /v1/hosts`` once at the end."""
    scrape = Scrape(await config.metrics())
    ops0, drift0 = await config.db_ops(), await config.drift_events()
    applied0 = prom_value(scrape.before, "roost_config_agent_reports_total", kind="applied")
    relayed0 = prom_value(scrape.before, "roost_outbox_relayed_total")
    polls: list[float] = []
    progress: dict[str, float] = {}
    cpu.start()
    t0 = time.monotonic()
    response = await config.http.patch("/v1/system", json={"ntp_servers": [f"192.0.2.{rep + 1}"]})
    patch_ms = (time.monotonic() - t0) * 1000
    response.raise_for_status()
    deadline = deadline_in(ROLLOUT_TIMEOUT_S)
    done = 0
    while True:
        p0 = time.monotonic()
        if observer == "hosts":
            hosts = await config.hosts()
            done = sum(1 for h in hosts if h["mgmt_mac"] in macs and h["config_applied"] >= version)
        else:
            text = await config.metrics()
            relayed = prom_value(text, "roost_outbox_relayed_total") - relayed0
            done = int(
                prom_value(text, "roost_config_agent_reports_total", kind="applied") - applied0
            )
            if relayed >= 2 * r.n:  # the PATCH's N commands and N config.host.updated events
                progress.setdefault("commands relayed", time.monotonic() - t0)
            if done:
                progress.setdefault("first applied stored", time.monotonic() - t0)
        polls.append(time.monotonic() - p0)
        for share in (50, 90):
            if done * 100 >= share * r.n:
                progress.setdefault(f"{share}%", time.monotonic() - t0)
        if done >= r.n or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_S)
    elapsed = time.monotonic() - t0
    usage = cpu.stop()
    scrape.after = await config.metrics()
    if observer != "hosts":
        hosts = await config.hosts()
        done = sum(1 for h in hosts if h["mgmt_mac"] in macs and h["config_applied"] >= version)
    ops = await config.db_ops() - ops0
    await asyncio.sleep(1.5)  # the drift loop's last clears
    drift = await config.drift_events() - drift0
    ok = done >= r.n
    if observer == "hosts":
        r.rollouts.append(elapsed if ok else float("nan"))
        r.converged.append(done)
    else:
        r.diag["rollout_metrics_poll_s"] = elapsed if ok else float("nan")
        for key, at in progress.items():
            r.diag[f"phase_{key.replace(' ', '_').replace('%', 'pct')}_s"] = at
    batches, messages, batch_s = scrape.batches()
    tag = f"rollout {rep + 1} (v{version}, {observer} poll)"
    phases = ", ".join(f"{k} {v:.2f}s" for k, v in progress.items())
    r.notes.append(
        f"{tag}: {done}/{r.n} hosts in {elapsed:.2f}s ({phases}); PATCH /v1/system answered in "
        f"{patch_ms:.0f} ms; {len(polls)} polls, mean {statistics.mean(polls) * 1000:.0f} ms "
        f"each; config.agents: {messages:.0f} msgs in {batches:.0f} batches "
        f"({messages / batches if batches else 0:.1f}/batch, "
        f"{batch_s / batches * 1000 if batches else 0:.0f} ms each); commands queued "
        f"{scrape.delta('roost_config_commands_total', reason='changed'):.0f}, outbox relayed "
        f"{scrape.delta('roost_outbox_relayed_total'):.0f}; DB served {ops:.0f} ops; "
        f"250.001 sets+clears {drift}"
    )
    r.notes.append(f"{tag}: {usage}")
    if rep == 0:
        r.diag["system_patch_ms"] = patch_ms
        r.diag["hosts_get_ms_mean"] = statistics.mean(polls) * 1000
        if batches:
            r.diag["applied_batch_mean"] = messages / batches
            r.diag["applied_batch_ms_mean"] = batch_s / batches * 1000
    if rep == 0 or observer != "hosts":
        prefix = "" if observer == "hosts" else "metrics_poll_"
        r.diag[f"{prefix}db_ops"] = ops
        r.diag[f"{prefix}drift_events"] = drift
    if not ok:
        r.notes.append(f"{tag}: TIME BOUND hit, {r.n - done} hosts had not applied v{version}")


# Inventory ingest -----------------------------------------------------------------------------


def inventory_envelopes() -> list[Envelope]:
    out = []
    for i in range(INVENTORY_HOSTS):
        index = INVENTORY_FIRST_INDEX + i
        payload = from_profile(host_mac(index), render_profile("worker", index))
        out.append(Envelope.of(payload, source="bench", subject=payload.mgmt_mac))
    return out


@dataclass
class Ingest:
    per_s: float = float("nan")
    stored: int = 0
    publish_per_s: float = float("nan")
    raw_per_s: float = float("nan")
    upsert_per_s: float = float("nan")
    body_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    diag: dict[str, float] = field(default_factory=dict)


async def inventory_ingest(
    config: Config, amqp_url: str, db_url: str, pids: dict[str, int | None]
) -> Ingest:
    out = Ingest()
    envelopes = inventory_envelopes()
    out.body_bytes = len(envelopes[0].model_dump_json())
    # Agent reports go out as the shared agent broker user, as a fleet's would.
    bus = ProducerBus(RoostSettings(service="bench", amqp_url=amqp_url), Metrics("bench"))
    await bus.connect(30)
    client: AsyncMongoClient = AsyncMongoClient(db_url, tz_aware=True)
    try:
        await asyncio.to_thread(
            quiesce, {k: v for k, v in pids.items() if k in ("config", "db") and v}, 15.0
        )
        scrape = Scrape(await config.metrics())
        base = prom_value(scrape.before, "roost_config_agent_reports_total", kind="inventory")
        cpu = CpuWatch(pids)
        cpu.start()
        t0 = time.monotonic()
        for start in range(0, len(envelopes), PUBLISH_BATCH):
            await bus.publish(envelopes[start : start + PUBLISH_BATCH])
        out.publish_per_s = len(envelopes) / (time.monotonic() - t0)
        handled = 0.0

        async def all_handled() -> bool:
            nonlocal handled
            text = await config.metrics()
            handled = prom_value(text, "roost_config_agent_reports_total", kind="inventory") - base
            return handled >= len(envelopes)

        ok = await wait_until(all_handled, 90.0, every_s=0.1)
        elapsed = time.monotonic() - t0
        out.notes.append(cpu.stop())
        scrape.after = await config.metrics()
        macs = [e.subject for e in envelopes]
        out.stored = await client["roost_config"]["inventory"].count_documents(
            {"_id": {"$in": macs}}
        )
        if ok:
            out.per_s = len(envelopes) / elapsed
        else:
            out.notes.append(
                f"TIME BOUND: {handled:.0f} of {len(envelopes)} reports handled in {elapsed:.1f}s"
            )
        batches, messages, batch_s = scrape.batches()
        if batches:
            out.diag["batch_mean"] = messages / batches
            out.diag["batch_ms_mean"] = batch_s / batches * 1000
        out.notes.append(
            f"{handled:.0f} reports handled in {elapsed:.2f}s ({out.stored} stored); "
            f"config.agents {messages:.0f} msgs in {batches:.0f} batches"
        )

        # The storage ceiling: the same documents straight into SecantusDB, no service between.
        now = utcnow()
        docs = []
        for e in envelopes:
            body = e.data
            docs.append(
                {
                    "_id": body["mgmt_mac"],
                    **body,
                    "digest": inventory_digest(body),
                    "reported_at": now,
                    "changed_at": now,
                }
            )
        scratch = client[f"bench_raw_{uuid.uuid4().hex[:6]}"]
        try:
            t0 = time.monotonic()
            await scratch["inventory"].insert_many(docs, ordered=False)
            out.raw_per_s = len(docs) / (time.monotonic() - t0)
            # Nearer to what config does: upserts by MAC, 256 (its batch size) per transaction.
            t0 = time.monotonic()
            for start in range(0, len(docs), 256):
                chunk = docs[start : start + 256]
                async with client.start_session() as session, await session.start_transaction():
                    await scratch["inventory2"].bulk_write(
                        [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in chunk],
                        session=session,
                    )
            out.upsert_per_s = len(docs) / (time.monotonic() - t0)
        finally:
            await client.drop_database(scratch.name)
    finally:
        await bus.close()
        await client.close()
    return out


# The single agent -----------------------------------------------------------------------------


async def single_agent(
    config: Config, tmp: Path, amqp_url: str
) -> tuple[float, float, float, list[str]]:
    """One agent process started as the fleet starts it (tests/support/agents.py does the
    same): once to fill the bytecode cache, then again to measure; (RSS MB, CPU %, RSS at
    announce, notes)."""
    fleet = Fleet(tmp / "single")
    host = fleet.add("worker")
    notes: list[str] = []

    async def announces() -> float:
        return prom_value(
            await config.metrics(), "roost_config_agent_reports_total", kind="announced"
        )

    rss = cpu = rss_start = float("nan")
    for attempt in ("warm-up", "measured"):
        before = await announces()
        proc = fleet.process(host, amqp_url, tmp / "logs", extra_env={"ROOST_LOG_JSON": "false"})
        proc.start()
        assert proc.proc is not None
        try:

            async def announced(before: float = before) -> bool:
                return await announces() > before

            if not await wait_until(announced, 30.0, every_s=0.05):
                notes.append(f"single agent ({attempt}) did not announce within 30 s")
            if attempt == "measured":
                rss_start = rss_mb(proc.proc.pid)
                await asyncio.sleep(3.0)  # let its start-up settle
                rss, cpu = await asyncio.to_thread(footprint, proc.proc.pid, IDLE_SAMPLE_S)
        finally:
            proc.stop()
    with contextlib.suppress(Exception):
        await config.http.delete(f"/v1/hosts/{(await _host_by_mac(config, host.mac))['uuid']}")
    return rss, cpu, rss_start, notes


async def _host_by_mac(config: Config, mac: str) -> dict[str, Any]:
    return next(h for h in await config.hosts() if h["mgmt_mac"] == mac)


# Set-up, sequence and tear-down -----------------------------------------------------------------


@dataclass
class Parts:
    tmp: Path
    vhost: str = ""
    procs: list[ManagedProcess] = field(default_factory=list)


def teardown(parts: Parts) -> None:
    for proc in reversed(parts.procs):
        with contextlib.suppress(Exception):
            proc.stop()
    if parts.vhost:
        try:
            rabbitmqctl("delete_vhost", parts.vhost)
        except Exception as exc:
            print(f"could not delete vhost {parts.vhost}: {exc}", file=sys.stderr)
    shutil.rmtree(parts.tmp, ignore_errors=True)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-"))
    parts = Parts(tmp)
    try:
        parts.vhost, amqp_url = bench_vhost(tmp)

        db_port = free_port()
        db = embedded_db(db_port, tmp / "db", tmp / "db.log").start()
        parts.procs.append(db)
        db.wait_ready(60)

        admin = new_token()
        tokens = tmp / "tokens.json"
        write_tokens_file(tokens, {"admin": (Role.admin, admin)})
        env = {
            "ROOST_AMQP_URL": amqp_url,
            "ROOST_MONGO_URL": url_for(db_port),
            "ROOST_AUTH_TOKENS_FILE": str(tokens),
        }
        fault, fault_url = start_service("fault", tmp, env)
        parts.procs.append(fault)
        config_proc, config_url = start_service("config", tmp, env)
        parts.procs.append(config_proc)
        # Fill the bytecode cache for the fleet's own module (the agent's is filled by the
        # single agent's warm-up run, which comes first).
        subprocess.run(
            [*python_module("roost_sim.fleet"), "--help"],
            env={**os.environ, **bytecode_env(tmp)},
            capture_output=True,
            timeout=60,
            check=False,
        )
        log("database, fault and config services ready")
        pids = {
            "config": config_proc.proc.pid if config_proc.proc else None,
            "db": db.proc.pid if db.proc else None,
            "fault": fault.proc.pid if fault.proc else None,
            "rabbitmq": find_pid("beam.smp"),
            "bench": os.getpid(),
        }
        urls = {"config": config_url, "fault": fault_url, "db": url_for(db_port), "amqp": amqp_url}
        results = asyncio.run(measure(config_proc, urls, admin, tmp, pids))
    except BaseException:
        for proc in parts.procs:
            print(f"--- {proc.name} log tail ---\n{proc.log_tail()}", file=sys.stderr)
        raise
    finally:
        teardown(parts)
    report(NAME, results)
    return 0


async def measure(
    config_proc: ManagedProcess,
    urls: dict[str, str],
    admin: str,
    tmp: Path,
    pids: dict[str, int | None],
) -> list[Result]:
    amqp_url = urls["amqp"]
    config = Config(config_proc, urls["config"], admin, urls["fault"], urls["db"])
    try:
        rss, cpu, rss_start, single_notes = await single_agent(config, tmp, amqp_url)
        log(f"single agent idle: RSS {rss:.1f} MB, CPU {cpu:.2f}% of a core")
        rounds: dict[int, Round] = {}
        for n in SIZES:
            if remaining() < 60:
                print(f"NOTE: N={n} skipped: time bound", flush=True)
                continue
            r = await run_round(n, config, tmp, amqp_url, pids)
            rounds[n] = r
            log(
                f"N={n}: discovery {r.discovery_s:.2f}s, provisioning {r.provision_s:.2f}s, "
                f"rollouts {', '.join(f'{s:.2f}s' for s in r.rollouts)}, RSS {r.rss_mb:.1f} MB"
            )
        ingest = None
        if remaining() > 30:
            ingest = await inventory_ingest(config, amqp_url, urls["db"], pids)
            log(f"inventory: {ingest.per_s:.0f} hosts/s (raw insert_many {ingest.raw_per_s:.0f}/s)")
        else:
            print("NOTE: inventory ingest skipped: time bound", flush=True)
    finally:
        await config.close()

    print()
    print(f"Single agent: idle RSS {rss:.1f} MB (at announce {rss_start:.1f}), CPU {cpu:.2f}%")
    for note in single_notes:
        print(f"  {note}")
    for r in rounds.values():
        print(
            f"N={r.n}: agents up in {r.agents_start_s:.2f}s, {r.discovered} discovered after "
            f"{r.discovery_s:.2f}s, {r.n} PATCHes in {r.patch_s:.2f}s ({r.patch_failures} "
            f"refused), {r.provisioned} provisioned {r.provision_s:.2f}s after the first PATCH; "
            f"rollouts {', '.join(f'{s:.2f}s' for s in r.rollouts)}; fleet RSS {r.rss_mb:.1f} MB, "
            f"idle CPU {r.idle_cpu_pct:.2f}%"
        )
        for note in r.notes:
            print(f"    {note}")
    if ingest is not None:
        print(
            f"Inventory: {INVENTORY_HOSTS} reports of {ingest.body_bytes} B: published at "
            f"{ingest.publish_per_s:.0f}/s, stored at {ingest.per_s:.0f}/s; raw insert_many "
            f"{ingest.raw_per_s:.0f}/s, upserts in 256-document transactions "
            f"{ingest.upsert_per_s:.0f}/s"
        )
        for note in ingest.notes:
            print(f"    {note}")
    largest = rounds.get(SIZES[-1])
    if largest is not None:
        figure = largest.rollout_s

        def verdict(ok: bool) -> str:
            return "met" if ok else "MISSED"

        print(
            f"Targets: rollout at N={largest.n} {figure:.2f}s (<= {TARGET_ROLLOUT_S:.0f} s: "
            f"{verdict(figure <= TARGET_ROLLOUT_S)}); idle agent {rss:.1f} MB "
            f"(<= 40 MB: {verdict(rss <= 40)}), {cpu:.2f}% of a core (<= 0.5 %: "
            f"{verdict(cpu <= 0.5)})"
        )
    print()
    return build_results(rounds, ingest, rss, cpu, rss_start)


def build_results(
    rounds: dict[int, Round],
    ingest: Ingest | None,
    rss: float,
    cpu: float,
    rss_start: float,
) -> list[Result]:
    out: list[Result] = []
    for n, r in rounds.items():
        out.append(result(f"rollout_s_{n}", r.rollout_s, "s", higher_is_better=False))
    for n, r in rounds.items():
        out.append(result(f"rollout_converged_min_{n}", min(r.converged, default=0), "hosts"))
        done = [s for s in r.rollouts if s == s]
        if done:
            out.append(result(f"diag_rollout_max_s_{n}", max(done), "s"))
        out.append(result(f"provision_s_{n}", r.provision_s, "s"))
        out.append(result(f"provisioned_{n}", r.provisioned, "hosts"))
        out.append(result(f"diag_discovery_s_{n}", r.discovery_s, "s"))
        out.append(result(f"diag_patch_hosts_s_{n}", r.patch_s, "s"))
        for key, unit in (
            ("system_patch_ms", "ms"),
            ("hosts_get_ms_mean", "ms"),
            ("applied_batch_mean", "msgs"),
            ("applied_batch_ms_mean", "ms"),
            ("db_ops", "ops"),
            ("drift_events", "events"),
            ("rollout_metrics_poll_s", "s"),
            ("phase_commands_relayed_s", "s"),
            ("phase_first_applied_stored_s", "s"),
            ("phase_50pct_s", "s"),
            ("metrics_poll_db_ops", "ops"),
            ("metrics_poll_drift_events", "events"),
        ):
            if key in r.diag:
                out.append(result(f"diag_{key}_{n}", r.diag[key], unit))
    if ingest is not None:
        out.append(
            result(
                "inventory_hosts_per_s",
                ingest.per_s,
                "1/s",
                peer="raw-insert",
                peer_value=ingest.raw_per_s,
            )
        )
        out.append(
            result(
                "diag_inventory_vs_txn_upsert",
                ingest.per_s,
                "1/s",
                peer="txn-upsert",
                peer_value=ingest.upsert_per_s,
            )
        )
        out.append(result("inventory_stored", ingest.stored, "hosts"))
        out.append(result("diag_inventory_publish_per_s", ingest.publish_per_s, "1/s"))
        if "batch_mean" in ingest.diag:
            out.append(result("diag_inventory_batch_mean", ingest.diag["batch_mean"], "msgs"))
            out.append(result("diag_inventory_batch_ms_mean", ingest.diag["batch_ms_mean"], "ms"))
    for n, r in rounds.items():
        out.append(result(f"fleet_rss_mb_{n}", r.rss_mb, "MB"))
        out.append(result(f"diag_fleet_idle_cpu_pct_{n}", r.idle_cpu_pct, "%core"))
    base = rounds.get(SIZES[0])
    for n, r in rounds.items():
        out.append(result(f"agent_rss_mb_avg_{n}", r.rss_mb / n, "MB"))
        if base is not None and n != base.n:
            out.append(
                result(f"agent_rss_mb_marginal_{n}", (r.rss_mb - base.rss_mb) / (n - base.n), "MB")
            )
    out.append(result("agent_idle_rss_mb", rss, "MB"))
    out.append(result("agent_idle_cpu_pct", cpu, "%core"))
    out.append(result("diag_agent_rss_at_announce_mb", rss_start, "MB"))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
