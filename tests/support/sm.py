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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.site import Site
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
        """Instances whose process is alive and not stopped (SIGSTOP) or a zombie."""
        out = []
        for f in self.dir.iterdir():
            try:
                state = Path(f"/proc/{f.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
                host, role, *token = f.read_text().split()
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
                self.violations.append(f"two running actives: {active}")
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
