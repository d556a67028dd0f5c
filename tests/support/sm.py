"""Watching an active/standby service group on a simulated site, from the kernel and from the
service service's API (end-to-end tests and ``bench/service_failover.py``).

The group's one service records, in a file named by its pid, its host, role and fencing token
(``SCRIPT``); :class:`Watch` reads those and the processes' kernel states every 5 ms and records
every moment with two running actives (a frozen process is not counted: it does nothing until
the fence kills it) and every change of the active host. :class:`Sm` does the same through the
API (``enabled-active`` instances) and waits for activity on a host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support import nft
from tests.support.site import Site, open_site, where
from tests.support.waiting import eventually

GROUP = "gw"
# The instance: records who it is, then becomes `sleep` (same pid) until stopped.
SCRIPT = 'echo "$ROOST_HOST $ROOST_ROLE ${{ROOST_FENCING_TOKEN:-}}" > "{dir}/$$"; exec sleep 100000'


@dataclass(frozen=True)
class Proc:
    pid: int
    host: str
    role: str
    token: int | None


@dataclass
class Watch:
    """The group's processes, seen from the kernel, and everything wrong seen meanwhile."""

    dir: Path
    violations: list[str] = field(default_factory=list)
    #: (monotonic time, host of the one running active process or None) at each change.
    history: list[tuple[float, str | None]] = field(default_factory=list)

    def procs(self) -> list[Proc]:
        """Instances whose process can run: alive, not stopped (SIGSTOP), not a zombie, and
        not dying (a SIGKILL pending: a frozen process killed by the fence is woken only to
        exit, without running another instruction of its own)."""
        out = []
        for f in self.dir.iterdir():
            try:
                state = Path(f"/proc/{f.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
                host, role, *token = f.read_text().split()
                if state not in ("T", "t", "Z", "X") and _sigkill_pending(int(f.name)):
                    continue
            except (OSError, ValueError, IndexError):
                continue
            if state not in ("T", "t", "Z", "X"):
                out.append(Proc(int(f.name), host, role, int(token[0]) if token else None))
        return out

    def active(self) -> list[Proc]:
        return [p for p in self.procs() if p.role == "active"]

    async def run(self) -> None:
        while True:
            active = self.active()
            if len(active) > 1:
                self.violations.append(f"two running actives at {time.monotonic():.3f}: {active}")
            now = active[0].host if active else None
            if not self.history or self.history[-1][1] != now:
                self.history.append((time.monotonic(), now))
            await asyncio.sleep(0.005)

    def switches(self, since: float) -> list[str | None]:
        """The active host after each change since ``since`` (None: no active then)."""
        return [h for t, h in self.history if t >= since]

    def longest_gap(self, since: float) -> float:
        """Longest time without any running active process since ``since``."""
        gap, started = 0.0, None
        for t, h in self.history:
            if t < since:
                continue
            if h is None and started is None:
                started = t
            elif h is not None and started is not None:
                gap, started = max(gap, t - started), None
        return gap


def _sigkill_pending(pid: int) -> bool:
    """True if SIGKILL is pending for ``pid`` (thread or process-wide: SigPnd/ShdPnd)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    kill = 1 << (9 - 1)
    return any(int(fields.get(k, "0").strip(), 16) & kill for k in ("SigPnd", "ShdPnd"))


@dataclass
class Sm:
    site: Site
    watch: Watch
    http: httpx.AsyncClient
    api_violations: list[str] = field(default_factory=list)

    async def instances(self) -> dict[str, Any]:
        r = await self.http.get(f"/v1/service-groups/{GROUP}/instances")
        assert r.status_code == 200, r.text
        return r.json()

    async def active_on(self, host: str, within: float = 20, token_above: int = 0) -> Proc:
        """Wait for a running active process on ``host`` (and the API saying so)."""

        def probe() -> Proc | None:
            found = [
                p for p in self.watch.active() if p.host == host and (p.token or 0) > token_above
            ]
            return found[0] if found else None

        proc = await eventually(probe, timeout=within, what=f"an active process on {host}")
        await eventually(
            lambda: self._api_active(host), timeout=within, what=f"API: {host} enabled-active"
        )
        return proc

    async def _api_active(self, host: str) -> bool:
        doc = await self.instances()
        return doc["active_host"] == host and any(
            i["host"] == host and i["state"] == "enabled-active" for i in doc["instances"]
        )

    async def watch_api(self) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                doc = await self.instances()
                active = {i["host"] for i in doc["instances"] if i["state"] == "enabled-active"}
                if len(active) > 1:
                    self.api_violations.append(f"API shows two actives: {doc}")
            await asyncio.sleep(0.02)


def declaration(procs: Path, max_restarts: int = 2) -> dict[str, Any]:
    return {
        "redundancy": {"model": "active-standby"},
        "members": {"hosts": ["worker-0", "worker-1"]},
        "preferred": ["worker-0"],
        "failure_policy": {"max_restarts": max_restarts, "window_s": 60},
        "services": [{"name": "gw", "start": ["/bin/sh", "-c", SCRIPT.format(dir=procs)]}],
    }


async def group_state(s: Sm, state: str) -> bool:
    return (await s.instances())["state"] == state


@contextlib.asynccontextmanager
async def open_sm(
    stack: Any, tmp_path: Path, count: int = 3, **site_options: Any
) -> AsyncIterator[Sm]:
    """A ``count``-host site with the service service; group ``gw`` active on worker-0, standby
    on worker-1; both watchers running. Raises at the end if either ever saw two actives."""
    procs = tmp_path / "procs"
    procs.mkdir(parents=True)
    # Sensors are not what these tests look at: polled rarely, they leave the one-process BMC
    # simulator free to answer the failure confirmation and the fence in time on a loaded
    # machine (a confirmation missing its 1 s once let a takeover come by lease expiry instead).
    host_env = {"ROOST_SENSOR_POLL_S": "30", **(site_options.pop("host_env", None) or {})}
    async with open_site(
        stack, tmp_path, count, service=True, host_env=host_env, **site_options
    ) as site:
        watch = Watch(procs)
        async with site.client(site.service) as http:
            s = Sm(site, watch, http)
            tasks = [asyncio.create_task(watch.run()), asyncio.create_task(s.watch_api())]
            try:
                r = await http.put(f"/v1/service-groups/{GROUP}", json=declaration(procs))
                assert r.status_code == 201, r.text
                await s.active_on("worker-0")
                await eventually(lambda: group_state(s, "active"), timeout=20, what="group active")
                yield s
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        assert not watch.violations, watch.violations[:3]
        assert not s.api_violations, s.api_violations[:3]


# Randomized faults -------------------------------------------------------------------------------

#: Fault kinds and their weights: mostly quick ones, a whole-host failure now and then.
FAULTS: dict[str, int] = {
    "kill-active": 25,  # SIGKILL the active process (restart in place; K+1 → failover)
    "kill-standby": 15,
    "swact": 20,
    "hiccup": 15,  # freeze the active host for 50-250 ms: below detection, nothing may move
    "cut-udp": 10,  # drop the active host's service-link datagrams for 0.5-4 s
    "restart-agent": 10,  # clean restart of a random member's agent (SIGTERM; it comes back)
    "freeze-host": 5,  # freeze the active host: fence, failover, power-cycle, back as standby
}


@dataclass
class ChaosReport:
    runs: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    #: The kind of each run, in order (pairs with ``recovery_s``).
    order: list[str] = field(default_factory=list)
    #: Seconds from each fault to the group active again with a ready standby.
    recovery_s: list[float] = field(default_factory=list)


async def chaos(s: Sm, runs: int, seed: int, log: Any = None) -> ChaosReport:
    """``runs`` random faults (seeded), each followed by a wait for the group to be whole again
    (active + standby, within 90 s: a liveness check). The watchers check, all along, that no
    two actives ever run; the caller asserts on them."""
    rng = random.Random(seed)
    kinds, weights = zip(*FAULTS.items(), strict=True)
    can_cut = nft.available()
    report = ChaosReport()
    for n in range(runs):
        kind = rng.choices(kinds, weights)[0]
        if kind == "cut-udp" and not can_cut:
            kind = "hiccup"
        started = time.monotonic()
        await _fault(s, kind, rng)
        await _whole(s)
        report.runs += 1
        report.kinds[kind] += 1
        report.order.append(kind)
        report.recovery_s.append(time.monotonic() - started)
        if log is not None:
            log(f"run {n + 1}/{runs}: {kind}, whole again after {report.recovery_s[-1]:.2f}s")
    return report


async def _whole(s: Sm) -> None:
    async def whole() -> bool:
        procs = s.watch.procs()
        roles = sorted(p.role for p in procs)
        return roles == ["active", "standby"] and await group_state(s, "active")

    await eventually(whole, timeout=90, interval=0.02, what="group active with a standby")


async def _fault(s: Sm, kind: str, rng: random.Random) -> None:
    site = s.site
    active = (await eventually(s.watch.active, timeout=30, what="an active process"))[0]
    if kind == "kill-active":
        await _killed(s, [active.pid])
    elif kind == "kill-standby":
        await _killed(s, [p.pid for p in s.watch.procs() if p.role == "standby"])
    elif kind == "swact":
        r = await s.http.post(f"/v1/service-groups/{GROUP}/swact")
        assert r.status_code in (200, 409), r.text
    elif kind in ("hiccup", "freeze-host"):
        host = active.host
        pids = [site.agent_pid(host), *(p.pid for p in s.watch.procs() if p.host == host)]
        for pid in pids:
            _kill(pid, signal.SIGSTOP)
        if kind == "hiccup":
            await asyncio.sleep(rng.uniform(0.05, 0.25))  # the fault's length, not a wait
            for pid in pids:
                _kill(pid, signal.SIGCONT)
        else:  # fenced by its BMC (killed), power-cycled, back
            async with site.client(site.host) as http:
                await where(http, host, lambda d: d["availability"] == "failed", "failed", 15)
                await where(http, host, lambda d: d["availability"] == "available", "back", 90)
    elif kind == "cut-udp":
        worker = next(h for h in site.fleet.hosts() if h.hostname == active.host)
        with nft.nft_table() as table:
            table.drop_udp(int(site.service.env["ROOST_SM_LINK_PORT"]), saddr=worker.ip)
            await asyncio.sleep(rng.uniform(0.5, 4.0))  # the fault's length, not a wait
    elif kind == "restart-agent":
        host = rng.choice(["worker-0", "worker-1"])
        old = site.agent_pid(host)
        _kill(old, signal.SIGTERM)  # the fleet supervisor starts it again
        await eventually(
            lambda: _agent_back(site, host, old), timeout=30, what=f"{host}'s agent restarted"
        )
        site.supervisor.forgive(host)  # a planned restart, not a crash loop


async def _killed(s: Sm, pids: list[int]) -> None:
    """SIGKILL ``pids`` and wait until the kernel says they are gone (a signal is delivered
    asynchronously: a look right after ``kill`` may still see them running)."""
    for pid in pids:
        _kill(pid, signal.SIGKILL)
    await eventually(
        lambda: not {p.pid for p in s.watch.procs()} & set(pids), timeout=10, what="killed"
    )


def _agent_back(site: Site, host: str, old_pid: int) -> bool:
    """A new agent process runs for ``host`` (not the one stopped)."""
    proc = site.supervisor.procs[host]
    return bool(proc.running and proc.proc is not None and proc.proc.pid != old_pid)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
