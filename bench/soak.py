"""Soak (issue 9): a simulated fleet under random faults for an hour; memory must not grow,
no event may be lost.

A site as the end-to-end tests build it (``tests.support.site.open_site``: config, host and
fault services, a fleet of ``BENCH_SOAK_HOSTS`` (200) hosts with one real agent process and one
IPMI BMC each) runs for ``BENCH_SOAK_S`` (3600 s). Every ``BENCH_SOAK_EVERY_S`` (10 s) one
random fault is injected, each on a host no other fault is touching:

* ``alarms``: a burst of 20 alarms raised on the bus (entities ``host=soak-<run>.probe=<n>``),
  all cleared at the next burst;
* ``freeze``: a worker's agent stopped (SIGSTOP) for 3 s: the host service must detect the
  failure, fence and power-cycle the host through its BMC, and the host come back available;
* ``agent-kill``: a worker's agent killed (SIGKILL): restarted by the fleet supervisor (timed
  from the kill to the new agent running with its host available);
* ``lock-unlock``: a worker locked and unlocked through the host API.

Every 30 s the resident memory (RSS) of each service process, of the BMC simulator and of all
agents together is sampled, and each process's CPU time. Memory growth is the median of the
last three samples against the median of the first three after the warm-up
(``BENCH_SOAK_WARMUP_S``, a sixth of the run, at most 300 s); the target is at most 10 %.

At the end (after the last faults settle): every alarm set and clear the bench published is in
the fault service's event log exactly once and none of its alarms is left active (nothing lost,
nothing twice); every service's outbox is empty and no message is parked in any service's
dead-letter store; every host is available. Runs outside CI and outside ``make bench``'s 900 s
bound: ``.venv/bin/python bench/soak.py`` (``make bench BENCH=soak`` with a shorter
``BENCH_SOAK_S``).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # bench's common, the tests' site helpers

import httpx  # noqa: E402
from common import bench_vhost, percentile, report, result  # noqa: E402

from roost_sim.fleet import rss_mb  # noqa: E402
from tests.conftest import Stack  # noqa: E402
from tests.support.fault import alarm, clear  # noqa: E402
from tests.support.site import Site, open_site  # noqa: E402
from tests.support.stack import Tokens, Vhost, start_database  # noqa: E402

HOSTS = int(os.environ.get("BENCH_SOAK_HOSTS", "200"))
DURATION_S = float(os.environ.get("BENCH_SOAK_S", "3600"))
EVERY_S = float(os.environ.get("BENCH_SOAK_EVERY_S", "10"))
WARMUP_S = float(os.environ.get("BENCH_SOAK_WARMUP_S", str(min(300.0, DURATION_S / 6))))
SEED = int(os.environ.get("BENCH_SOAK_SEED", str(int(time.time()))))
SAMPLE_S = 30.0
BURST = 20
FREEZE_S = 3.0
BACK_WITHIN_S = 180.0
KINDS = ("alarms", "freeze", "agent-kill", "lock-unlock")
TICKS = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Soak:
    site: Site
    stack: Stack
    rng: random.Random
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    busy: set[str] = field(default_factory=set)
    injected: Counter[str] = field(default_factory=Counter)
    back_s: dict[str, list[float]] = field(default_factory=dict)
    not_back: list[str] = field(default_factory=list)
    sets: int = 0
    clears: int = 0
    open_alarms: list[str] = field(default_factory=list)
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def processes(self) -> dict[str, list[int]]:
        """Name → pids of what is sampled (agents summed as one)."""
        named: dict[str, list[int]] = {}
        for svc in self.stack.services:
            if svc.proc is not None and svc.proc.proc is not None:
                named[svc.name] = [svc.proc.proc.pid]
        bmcs = self.site.supervisor.bmcs.proc.proc
        if bmcs is not None:
            named["bmc simulator"] = [bmcs.pid]
        named["agents (all)"] = [
            p.proc.pid for p in self.site.supervisor.procs.values() if p.running and p.proc
        ]
        return named

    def sample(self) -> None:
        rss: dict[str, float] = {}
        for name, pids in self.processes().items():
            total = 0.0
            for pid in pids:
                try:
                    total += rss_mb(pid)
                except OSError:  # an agent between a kill and its restart
                    pass
            rss[name] = total
        self.samples.append((time.monotonic(), rss))

    def workers(self) -> list[str]:
        return [h.hostname for h in self.site.fleet.hosts() if h.hostname.startswith("worker-")]

    async def alarms(self, bus: Any) -> None:
        """Clear the previous burst, raise a new one."""
        if self.open_alarms:
            await bus.publish([clear(e, "100.101") for e in self.open_alarms])
            self.clears += len(self.open_alarms)
        self.open_alarms = [
            f"host=soak-{self.tag}.probe={self.rng.randrange(10**9)}" for _ in range(BURST)
        ]
        await bus.publish([alarm(e, "100.101", "minor") for e in self.open_alarms])
        self.sets += BURST

    async def host_fault(self, kind: str, hostname: str) -> None:
        """Inject ``kind`` on ``hostname`` and time it back to available."""
        site = self.site
        started = time.monotonic()
        try:
            async with site.client(site.host) as http:
                if kind == "freeze":
                    pid = site.agent_pid(hostname)
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        await asyncio.sleep(FREEZE_S)  # the fault itself lasts this long
                    finally:
                        try:
                            os.kill(pid, signal.SIGCONT)
                        except ProcessLookupError:
                            pass  # fenced meanwhile: the power-off stopped it
                elif kind == "agent-kill":
                    pid = site.agent_pid(hostname)
                    os.kill(pid, signal.SIGKILL)
                    await self._restarted(hostname, pid)
                else:  # lock-unlock
                    for action in ("lock", "unlock"):
                        r = await http.post(
                            f"/v1/hosts/{hostname}/actions", json={"action": action}
                        )
                        if r.status_code != 200:
                            raise RuntimeError(f"{action} {hostname}: {r.text}")
                        if action == "lock":
                            await self._until(http, hostname, "locked", "online")
                await self._until(http, hostname, "unlocked", "available")
            self.back_s.setdefault(kind, []).append(time.monotonic() - started)
        except Exception as exc:
            log(f"{kind} {hostname}: not back: {exc}")
            self.not_back.append(f"{kind} {hostname}: {exc}")
        finally:
            self.busy.discard(hostname)

    async def _restarted(self, hostname: str, old_pid: int) -> None:
        """Until the fleet supervisor runs a new agent process for ``hostname``."""
        deadline = time.monotonic() + BACK_WITHIN_S
        while time.monotonic() < deadline:
            proc = self.site.supervisor.procs[hostname]
            if proc.running and proc.proc is not None and proc.proc.pid != old_pid:
                return
            await asyncio.sleep(0.1)  # the supervisor's own poll period
        raise TimeoutError(f"agent not restarted within {BACK_WITHIN_S:g} s")

    async def _until(
        self, http: httpx.AsyncClient, hostname: str, admin: str, availability: str
    ) -> None:
        deadline = time.monotonic() + BACK_WITHIN_S
        while time.monotonic() < deadline:
            r = await http.get(f"/v1/hosts/{hostname}")
            d = r.json() if r.status_code == 200 else {}
            if d.get("administrative") == admin and d.get("availability") == availability:
                return
            await asyncio.sleep(0.5)  # a poll period of an API, not a wait for an effect
        raise TimeoutError(f"not {admin}-{availability} within {BACK_WITHIN_S:g} s")

    async def inject(self, bus: Any) -> None:
        kind = self.rng.choice(KINDS)
        self.injected[kind] += 1
        if kind == "alarms":
            await self.alarms(bus)
            return
        free = [h for h in self.workers() if h not in self.busy]
        if not free:
            self.injected[kind] -= 1
            return
        hostname = self.rng.choice(free)
        self.busy.add(hostname)
        task = asyncio.create_task(self.host_fault(kind, hostname), name=f"{kind} {hostname}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def event_log_count(site: Site, needle: str) -> Counter[str]:
    """Sets and clears in the fault event log whose entity contains ``needle`` (all pages)."""
    counts: Counter[str] = Counter()
    async with site.client(site.fault) as http:
        url: str | None = "/v1/event_log"
        params: dict[str, Any] | None = {
            "q.field": "entity_instance_id",
            "q.op": "eq",
            "q.value": needle,
            "alarms": "true",
            "include_suppress": "true",
            "limit": 2000,
        }
        while url:
            r = await http.get(url, params=params)
            r.raise_for_status()
            body = r.json()
            for e in body["event_log"]:
                counts[e["state"]] += 1
            url, params = body.get("next"), None
    return counts


async def leftovers(site: Site, stack: Stack) -> tuple[int, int]:
    """(events waiting in outboxes, messages parked) over every service."""
    pending = parked = 0
    for svc in stack.services:
        async with svc.client(site.token) as http:
            text = (await http.get("/metrics")).text
            m = re.search(r"^roost_outbox_pending (\S+)$", text, re.M)
            pending += int(float(m.group(1))) if m else 0
            r = await http.get("/v1/dead-letters", params={"limit": 1000})
            parked += len(r.json()["dead_letters"]) if r.status_code == 200 else 0
    return pending, parked


async def run(stack: Stack, tmp: Path) -> list[Any]:
    rng = random.Random(SEED)
    host_env = {"ROOST_SENSOR_POLL_S": "30"}  # the default; the tests' 1 s is for sensor tests
    async with open_site(stack, tmp / "site", HOSTS, host_env=host_env, ready_within=900) as site:
        soak = Soak(site, stack, rng)
        bus = await stack.bus()
        cpu0 = {name: sum(cpu_s(p) for p in pids) for name, pids in soak.processes().items()}
        started = time.monotonic()
        log(f"site up: {HOSTS} hosts; soaking {DURATION_S:g} s, a fault every {EVERY_S:g} s")
        next_sample = started
        next_fault = started + EVERY_S
        end = started + DURATION_S
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                soak.sample()
                next_sample += SAMPLE_S
                rss = soak.samples[-1][1]
                log(
                    f"{now - started:6.0f} s  faults {dict(soak.injected)}  rss "
                    + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items())
                )
            if now >= next_fault:
                await soak.inject(bus)
                next_fault += EVERY_S
            await asyncio.sleep(max(0.0, min(next_sample, next_fault) - time.monotonic()))
        elapsed = time.monotonic() - started
        cpu1 = {name: sum(cpu_s(p) for p in pids) for name, pids in soak.processes().items()}
        log("faults stopped; waiting for the last ones to settle")
        if soak.tasks:
            await asyncio.wait(set(soak.tasks), timeout=BACK_WITHIN_S + 10)
        if soak.open_alarms:
            await bus.publish([clear(e, "100.101") for e in soak.open_alarms])
            soak.clears += len(soak.open_alarms)
        # Reconcile: wait (bounded) until the fault service has every set and clear.
        want = Counter({"set": soak.sets, "clear": soak.clears})
        deadline = time.monotonic() + 120
        seen = await event_log_count(site, f"soak-{soak.tag}")
        while seen != want and time.monotonic() < deadline:
            await asyncio.sleep(2)  # a poll period of the event log
            seen = await event_log_count(site, f"soak-{soak.tag}")
        async with site.client(site.fault) as http:
            r = await http.get(
                "/v1/alarms",
                params={"q.field": "entity_instance_id", "q.value": f"soak-{soak.tag}"},
            )
            still_active = len(r.json()["alarms"])
        pending, parked = await leftovers(site, stack)
        async with site.client(site.host) as http:
            hosts = (await http.get("/v1/hosts")).json()["hosts"]
            not_available = [h["hostname"] for h in hosts if h["availability"] != "available"]

    results = [
        result(f"hosts (seed {SEED})", HOSTS, "count"),
        result("soak duration", elapsed / 60, "min"),
    ]
    for kind in KINDS:
        results.append(result(f"faults injected: {kind}", soak.injected[kind], "count"))
    for kind, times in sorted(soak.back_s.items()):
        results.append(result(f"{kind}: back available p50", percentile(times, 50), "s"))
        results.append(result(f"{kind}: back available p99", percentile(times, 99), "s"))
    results.append(result("host faults not back in 180 s (target 0)", len(soak.not_back), "count"))
    lost = max(0, want["set"] - seen["set"]) + max(0, want["clear"] - seen["clear"])
    twice = max(0, seen["set"] - want["set"]) + max(0, seen["clear"] - want["clear"])
    results += [
        result("alarm sets + clears published", soak.sets + soak.clears, "count"),
        result("of them lost (target 0)", lost, "count"),
        result("of them recorded twice (target 0)", twice, "count"),
        result("bench alarms left active (target 0)", still_active, "count"),
        result("events left in outboxes (target 0)", pending, "count"),
        result("messages parked (target 0)", parked, "count"),
        result("hosts not available at the end (target 0)", len(not_available), "count"),
    ]
    warm = [s for t, s in soak.samples if t - started >= WARMUP_S] or [s for _, s in soak.samples]
    for name in warm[0]:
        first = statistics.median(s[name] for s in warm[:3])
        last = statistics.median(s[name] for s in warm[-3:])
        growth = (last - first) / first * 100 if first else 0.0
        results.append(result(f"{name}: RSS after warm-up", first, "MB"))
        results.append(result(f"{name}: RSS growth (target <= 10)", growth, "%"))
        if name in cpu0 and name in cpu1 and name != "agents (all)":
            results.append(result(f"{name}: CPU", (cpu1[name] - cpu0[name]) / elapsed * 100, "%"))
    if soak.not_back:
        log("not back: " + "; ".join(soak.not_back[:10]))
    if not_available:
        log("not available at the end: " + ", ".join(not_available[:10]))
    return results


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-soak-"))
    db, mongo_url = start_database(tmp)
    vhost = Vhost(bench_vhost(tmp)[0])
    stack = Stack(vhost, mongo_url, Tokens.create(tmp), tmp)
    log(f"seed {SEED}; work dir {tmp}")
    try:
        results = await run(stack, tmp)
    finally:
        for b in stack.buses:
            await b.close()
        for svc in stack.services:
            svc.stop()
        vhost.delete()
        db.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report("soak", results)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up services on a kill
    asyncio.run(main())
