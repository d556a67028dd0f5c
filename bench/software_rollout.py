"""Rolling software update across a simulated fleet (issue 7): total rollout time against the
ideal, where the orchestration overhead goes, and workload downtime per host.

Every run is a fresh site as the end-to-end tests build it (``tests.support.site.open_site``:
config, host, fault, service and software services; 1 controller and N workers with real agents
and IPMI BMCs), the group ``gw`` active/standby on worker-0/worker-1 watched from the kernel
(``tests.support.sm.Watch``). A worker-only release (``applies_to: [worker]``, and
``controller_apply_type: ignore``) whose install hook sleeps ``BENCH_INSTALL_S`` (5 s) is
rolled out with an update strategy; the host service's unlock in-test is ``BENCH_INTEST_S``
(2 s). So the unavoidable time of one host is install + in-test (+ the agent's restart in the
reboot run, taken from the reboot step's own duration), and the ideal rollout is the sum of
that over the hosts divided by the parallelism. Everything else is orchestration overhead.

Runs (``BENCH_WORKERS``, default ``4,50,200``): 4 workers serial (then, on the same site, a
naive operator script doing the same per host with a 1 s polling loop: the peer), 4 workers
parallel 2, 4 workers serial with a reboot-required release, 50 workers parallel 10, 200 workers
parallel 20 (``BENCH_PARALLEL`` overrides the parallel limit of the 50/200 runs). Bounded by
``BENCH_BUDGET_S`` (840 s: what does not fit is reported as not finished).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # bench's common, the tests' site helpers

import httpx  # noqa: E402
from common import bench_vhost, report, result  # noqa: E402

import tests.support.site as site_module  # noqa: E402
from roost_shared.releases import pack  # noqa: E402
from tests.conftest import Stack  # noqa: E402
from tests.support.site import Site, open_site  # noqa: E402
from tests.support.sm import GROUP, Sm, Watch, declaration, group_state  # noqa: E402
from tests.support.stack import Tokens, Vhost, start_database  # noqa: E402
from tests.support.waiting import eventually  # noqa: E402

INSTALL_S = float(os.environ.get("BENCH_INSTALL_S", "5"))
INTEST_S = float(os.environ.get("BENCH_INTEST_S", "2"))
WORKERS = [int(w) for w in os.environ.get("BENCH_WORKERS", "4,50,200").split(",") if w]
PARALLEL = os.environ.get("BENCH_PARALLEL")
#: The whole benchmark stops waiting after this: bench/run.py kills a benchmark at 900 s (no
#: clean-up then), so the default fits in it. All three sizes take ~20 min on 2 cores:
#: ``BENCH_BUDGET_S=2400 python bench/software_rollout.py``.
BUDGET_S = float(os.environ.get("BENCH_BUDGET_S", "840"))
#: The database's cache: 256 MB, not the all-in-one's 64 MB. At 200 hosts two runs with 64 MB
#: wedged SecantusDB mid-rollout (bench/README.md); the one with 256 MB finished.
os.environ.setdefault("ROOST_DB_CACHE_SIZE", "256M")
REALISTIC_HOST_S = 600.0  # a real host's install + reboot, for the projection
FINAL = ("applied", "apply-failed", "aborted")

_started = time.monotonic()
#: The host service: the fixed in-test, and BMC sensor polling out of the way. With the tests'
#: 1 s poll, one BMC simulator answering 50-200 hosts on 2 cores falls behind: 200.010 (BMC
#: access failure) on every host, which a strict strategy rightly stops on; and a BMC call that
#: times out can deadlock the host service's event loop in pyghmi (see bench/README.md). So:
#: sensors read every 10 min, a 60 s IPMI deadline (nothing here needs the BMCs).
HOST_ENV = {
    "ROOST_INTEST_S": str(INTEST_S),
    "ROOST_SENSOR_POLL_S": "600",
    "ROOST_BMC_TIMEOUT_S": "60",
}

INSTALL = """#!/bin/sh
sleep {seconds}
echo "$ROOST_RELEASE_VERSION" > "$ROOST_STATE_DIR/staged-version"
"""
ACTIVATE = """#!/bin/sh
echo "$ROOST_RELEASE_VERSION" > "$ROOST_STATE_DIR/running-version"
"""
ROLLBACK = """#!/bin/sh
echo "${ROOST_PREVIOUS_VERSION:-base}" > "$ROOST_STATE_DIR/running-version"
"""


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _started:7.1f}s] {msg}", file=sys.stderr, flush=True)


def release(
    directory: Path,
    release_id: str,
    version: str,
    key: str | None,
    *,
    reboot: bool = False,
    requires: tuple[str, ...] = (),
) -> bytes:
    """A signed worker-only release whose install hook sleeps ``INSTALL_S``."""
    directory.mkdir(parents=True)
    meta = {
        "id": release_id,
        "version": version,
        "summary": f"bench release {version}",
        "requires": list(requires),
        "reboot_required": reboot,
        "applies_to": ["worker"],
        "hooks": {
            "install": "hooks/install",
            "activate": "hooks/activate",
            "rollback": "hooks/rollback",
        },
    }
    (directory / "release.json").write_text(json.dumps(meta))
    hooks = directory / "hooks"
    hooks.mkdir()
    for name, text in (
        ("install", INSTALL.format(seconds=INSTALL_S)),
        ("activate", ACTIVATE),
        ("rollback", ROLLBACK),
    ):
        (hooks / name).write_text(text)
        (hooks / name).chmod(0o755)
    (directory / "payload.bin").write_bytes(b"bench payload\n" * 64)
    return pack(directory, key)


@dataclass
class Run:
    label: str
    workers: int
    apply_type: str  # serial | parallel
    parallel: int  # hosts per stage
    reboot: bool = False
    peer: bool = False  # the naive script afterwards, same site
    # Measured
    setup_s: float | None = None
    total_s: float | None = None
    observed_s: float | None = None  # apply POST → applied seen by the client (0.2 s polls)
    state: str = "not run"
    reason: str = ""
    ideal_s: float | None = None
    host_stages: int = 0
    reboot_s: float | None = None
    step_overhead: dict[str, float] = field(default_factory=dict)
    other_overhead_s: float | None = None
    gaps: dict[str, float] = field(default_factory=dict)  # member host → longest no-active (s)
    two_actives: int = 0
    api_two_actives: int = 0
    peer_total_s: float | None = None
    peer_gaps: dict[str, float] = field(default_factory=dict)
    wall_s: float | None = None


def runs() -> list[Run]:
    out = []
    for n in WORKERS:
        if n <= 4:
            out += [
                Run(f"w{n} serial", n, "serial", 1, peer=True),
                Run(f"w{n} parallel 2", n, "parallel", 2),
                Run(f"w{n} serial reboot", n, "serial", 1, reboot=True),
            ]
        else:
            p = int(PARALLEL) if PARALLEL else {50: 10, 200: 20}.get(n, max(2, min(20, n // 5)))
            out.append(Run(f"w{n} parallel {p}", n, "parallel", p))
    return out


def when(value: str | None) -> float:
    """A strategy timestamp (ISO UTC) as seconds since the epoch."""
    assert value, "a step or stage without a time"
    return datetime.fromisoformat(value).timestamp()


def gap_in(history: list[tuple[float, str | None]], start: float, end: float) -> float:
    """Longest time without a running active within [start, end] (monotonic)."""
    longest = 0.0
    for i, (t, host) in enumerate(history):
        nxt = history[i + 1][0] if i + 1 < len(history) else time.monotonic()
        if host is None:
            longest = max(longest, min(nxt, end) - max(t, start))
    return max(0.0, longest)


def violations_in(watch: Watch, start: float, end: float) -> int:
    n = 0
    for v in watch.violations:
        m = re.search(r"at (\d+\.\d+)", v)
        if m and start <= float(m.group(1)) <= end:
            n += 1
    return n


# The open_site helper waits 30 s per host for "online"/"available"; 200 agents starting at once
# on 2 cores need longer for the first one. Same checks, a longer deadline.


async def _patient_where(http, ref, check, what, within: float = 30):
    """``where`` with a 900 s deadline that also rides out a slow answer (the host service
    shares 2 cores with every agent starting at once)."""

    async def probe():
        try:
            r = await http.get(f"/v1/hosts/{ref}", timeout=30)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 and check(r.json()) else None

    return await eventually(probe, timeout=max(within, 900), interval=0.2, what=f"{ref} {what}")


site_module.where = _patient_where


async def get_strategy(sw) -> dict[str, Any]:
    r = await sw.get("/v1/strategy")
    assert r.status_code == 200, r.text
    return r.json()


def analyse(run: Run, doc: dict[str, Any], watch: Watch, sm: Sm, offset: float) -> None:
    """Times from the strategy's own record; gaps from the watcher."""
    run.state = doc["state"]
    run.reason = doc.get("reason", "")
    if doc.get("started_at") and doc.get("finished_at"):
        run.total_s = when(doc["finished_at"]) - when(doc["started_at"])
    stages = [st for st in doc["stages"] if st["hosts"]]
    run.host_stages = len(stages)
    hosts = sum(len(st["hosts"]) for st in stages)
    reboots = [
        when(s["finished_at"]) - when(s["started_at"])
        for st in stages
        for s in st["steps"]
        if s["name"] == "reboot" and s["started_at"] and s["finished_at"]
    ]
    run.reboot_s = sum(reboots) / len(reboots) if reboots else None
    unavoidable = {"install": INSTALL_S, "wait-hosts-available": INTEST_S}
    if run.reboot_s is not None:
        unavoidable["reboot"] = run.reboot_s
    per_host = INSTALL_S + INTEST_S + (run.reboot_s or 0.0)
    run.ideal_s = hosts * per_host / run.parallel
    in_steps = 0.0
    for st in stages:
        for s in st["steps"]:
            if not (s["started_at"] and s["finished_at"]):
                continue
            took = when(s["finished_at"]) - when(s["started_at"])
            in_steps += took
            extra = took - unavoidable.get(s["name"], 0.0)
            run.step_overhead[s["name"]] = run.step_overhead.get(s["name"], 0.0) + extra
    if run.total_s is not None:
        # deploy-start / deploy-complete stages and the time between steps and stages.
        run.other_overhead_s = run.total_s - in_steps
    members = ("worker-0", "worker-1")
    run.two_actives = len(watch.violations)
    run.api_two_actives = len(sm.api_violations)
    for st in stages:
        for h in st["hosts"]:
            if h in members and st["started_at"] and st["finished_at"]:
                start = when(st["started_at"]) - offset
                end = when(st["finished_at"]) - offset
                run.gaps[h] = gap_in(watch.history, start, end)
                log(
                    f"{run.label}: {h} steps: "
                    + ", ".join(
                        f"{s['name']} +{when(s['started_at']) - offset - start:.2f}"
                        f"..{when(s['finished_at']) - offset - start:.2f}"
                        for s in st["steps"]
                        if s["started_at"] and s["finished_at"]
                    )
                )
                log(
                    f"{run.label}: {h} active changes: "
                    + ", ".join(
                        f"{x or 'none'} +{t - start:.3f}"
                        for t, x in watch.history
                        if start <= t <= end
                    )
                )
                log(
                    f"{run.label}: {h} stage {st['index']} {end - start:.1f} s, longest gap "
                    f"{run.gaps[h] * 1000:.0f} ms, two actives {violations_in(watch, start, end)}"
                )


async def naive(run: Run, site: Site, watch: Watch, tmp: Path) -> None:
    """The simplest alternative: an operator script, host by host, polling every second."""
    workers = [f"worker-{i}" for i in range(run.workers)]
    async with site.client(site.software) as sw, site.client(site.host) as hs:
        assert (await sw.delete("/v1/strategy")).status_code == 204
        archive = release(
            tmp / "r-naive", "bench-1.2.0", "1.2.0", site.release_key, requires=("bench-1.1.0",)
        )
        r = await sw.post(
            "/v1/releases", content=archive, headers={"Content-Type": "application/gzip"}
        )
        assert r.status_code == 201, r.text

        async def host(h: str) -> dict[str, Any]:
            return (await hs.get(f"/v1/hosts/{h}")).json()

        async def poll(check, what: str) -> None:
            deadline = time.monotonic() + 300
            while not await check():
                assert time.monotonic() < deadline, f"naive script: {what} took over 300 s"
                await asyncio.sleep(1.0)

        started = time.monotonic()
        r = await sw.post("/v1/deploy", json={"release": "bench-1.2.0"})
        assert r.status_code == 201, r.text
        for h in workers:
            t0 = time.monotonic()
            r = await hs.post(f"/v1/hosts/{h}/actions", json={"action": "lock"})
            assert r.status_code == 200, r.text
            await poll(lambda h=h: _is(host(h), administrative="locked"), f"{h} locked")
            r = await sw.post(f"/v1/deploy/hosts/{h}")
            assert r.status_code == 202, r.text

            async def installed(h: str = h) -> bool:
                doc = (await sw.get("/v1/deploy")).json()
                state = next(x for x in doc["hosts"] if x["hostname"] == h)
                assert state["state"] != "failed", state
                return state["state"] == "installed"

            await poll(installed, f"{h} installed")
            r = await hs.post(f"/v1/hosts/{h}/actions", json={"action": "unlock"})
            assert r.status_code == 200, r.text
            await poll(lambda h=h: _is(host(h), availability="available"), f"{h} available")
            if h in ("worker-0", "worker-1"):
                run.peer_gaps[h] = gap_in(watch.history, t0, time.monotonic())
            log(f"naive: {h} done in {time.monotonic() - t0:.1f} s")
        run.peer_total_s = time.monotonic() - started


async def _is(doc, **want: str) -> bool:
    d = await doc
    return all(d.get(k) == v for k, v in want.items())


async def one(run: Run, tmp: Path) -> None:
    work = tmp / run.label.replace(" ", "-")
    work.mkdir()
    db = vhost = stack = None
    began = time.monotonic()
    try:
        # Inside the try: a SIGTERM at any point still stops what was started.
        db, mongo_url = start_database(work)
        vhost = Vhost(bench_vhost(tmp)[0])
        stack = Stack(vhost, mongo_url, Tokens.create(work), work)
        procs = work / "procs"
        procs.mkdir()
        log(f"{run.label}: bringing up 1 controller + {run.workers} workers")
        async with open_site(
            stack,
            work / "site",
            run.workers + 1,
            service=True,
            software=True,
            host_env=HOST_ENV,
        ) as site:
            watch = Watch(procs)
            async with site.client(site.service) as http:
                sm = Sm(site, watch, http)
                tasks = [asyncio.create_task(watch.run()), asyncio.create_task(sm.watch_api())]
                try:
                    r = await http.put(f"/v1/service-groups/{GROUP}", json=declaration(procs))
                    assert r.status_code == 201, r.text
                    await sm.active_on("worker-0", within=120)
                    await eventually(lambda: group_state(sm, "active"), timeout=120, what="gw")
                    await quiet(site)
                    run.setup_s = time.monotonic() - began
                    log(f"{run.label}: site up in {run.setup_s:.1f} s")
                    await rollout(run, site, sm, watch, work)
                    if run.peer and run.state == "applied":
                        await asyncio.sleep(3)  # let the last stage's alarms settle
                        await naive(run, site, watch, work)
                        log(f"{run.label}: naive script {run.peer_total_s:.1f} s")
                finally:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        run.wall_s = time.monotonic() - began
        for svc in stack.services if stack is not None else []:
            svc.stop()
        if vhost is not None:
            vhost.delete()
        if db is not None:
            db.stop()


async def quiet(site: Site) -> None:
    """Wait until no alarm is active (a strict strategy stops on any): the site as an operator
    would start an update on."""
    seen: list[str] = []

    async def clean() -> bool:
        async with site.client(site.fault) as http:
            try:
                r = await http.get("/v1/alarms", timeout=30)
            except httpx.HTTPError:
                return False
        alarms = [f"{a['alarm_id']} {a['entity_instance_id']}" for a in r.json()["alarms"]]
        seen[:] = alarms
        return not alarms

    try:
        await eventually(clean, timeout=300, interval=1, what="no active alarm")
    except AssertionError:
        log(f"alarms still active after 300 s: {len(seen)}: {seen[:5]}")
        raise


async def rollout(run: Run, site: Site, sm: Sm, watch: Watch, work: Path) -> None:
    async with site.client(site.software) as sw:
        archive = release(work / "r1", "bench-1.1.0", "1.1.0", site.release_key, reboot=run.reboot)
        r = await sw.post(
            "/v1/releases", content=archive, headers={"Content-Type": "application/gzip"}
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = {
            "release": "bench-1.1.0",
            "controller_apply_type": "ignore",
            "worker_apply_type": run.apply_type,
        }
        if run.apply_type == "parallel":
            body["max_parallel_worker_hosts"] = run.parallel
        r = await sw.post("/v1/strategy", json=body)
        assert r.status_code == 201, r.text
        stages = [st["hosts"] for st in r.json()["stages"] if st["hosts"]]
        log(f"{run.label}: {len(stages)} host stages, sizes {[len(s) for s in stages]}")
        offset = time.time() - time.monotonic()
        since = time.monotonic()
        r = await sw.post("/v1/strategy/apply")
        assert r.status_code == 202, r.text
        last = None
        while True:
            doc = await get_strategy(sw)
            if doc["state"] in FINAL:
                break
            if doc["current_stage"] != last:
                last = doc["current_stage"]
                log(f"{run.label}: stage {last} ({doc['steps_done']}/{doc['steps_total']} steps)")
            await asyncio.sleep(0.2)
        run.observed_s = time.monotonic() - since
        offset = (offset + time.time() - time.monotonic()) / 2
        analyse(run, doc, watch, sm, offset)
        log(f"{run.label}: {run.state} in {run.total_s} s (ideal {run.ideal_s:.1f} s) {run.reason}")


def figures(done: list[Run]) -> list:
    out = []
    for run in done:
        p = run.label
        if run.setup_s is not None:
            out.append(result(f"{p}: site setup", run.setup_s, "s", higher_is_better=False))
        if run.total_s is None or run.ideal_s is None:
            continue
        out.append(
            result(
                f"{p}: rollout apply->applied",
                run.total_s,
                "s",
                "ideal",
                run.ideal_s,
                higher_is_better=False,
            )
        )
        if run.peer_total_s is not None:
            out.append(
                result(
                    f"{p}: rollout vs naive script",
                    run.total_s,
                    "s",
                    "naive 1s-poll",
                    run.peer_total_s,
                    higher_is_better=False,
                )
            )
        over = run.total_s - run.ideal_s
        per_stage = over / max(1, run.host_stages)
        out.append(result(f"{p}: overhead over ideal", 100 * over / run.ideal_s, "%"))
        out.append(result(f"{p}: overhead per stage", per_stage, "s", higher_is_better=False))
        out.append(
            result(
                f"{p}: projected overhead, 10-min host",
                100 * per_stage / REALISTIC_HOST_S,
                "%",
                higher_is_better=False,
            )
        )
        if run.reboot_s is not None:
            out.append(result(f"{p}: reboot step (agent restart)", run.reboot_s, "s"))
        for name, extra in run.step_overhead.items():
            out.append(result(f"{p}: overhead in {name}", extra, "s", higher_is_better=False))
        if run.other_overhead_s is not None:
            out.append(result(f"{p}: overhead between/outside steps", run.other_overhead_s, "s"))
        for h, g in sorted(run.gaps.items()):
            peer_gap = run.peer_gaps.get(h)
            out.append(
                result(
                    f"{p}: {h} longest no-active",
                    1000 * g,
                    "ms",
                    "naive script" if peer_gap is not None else None,
                    None if peer_gap is None else 1000 * peer_gap,
                    higher_is_better=False,
                )
            )
        out.append(result(f"{p}: two actives (proc/API)", run.two_actives + run.api_two_actives,
                          "count"))  # fmt: skip
    return out


async def main() -> None:
    keep = bool(os.environ.get("BENCH_KEEP"))
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-sw-"))
    if keep:
        log(f"keeping {tmp}")
    plan = runs()
    done: list[Run] = []
    try:
        for run in plan:
            left = BUDGET_S - (time.monotonic() - _started)
            if left < 60:
                log(f"{run.label}: skipped, the time budget is spent")
                run.state = "skipped (budget)"
                continue
            done.append(run)
            try:
                async with asyncio.timeout(left):
                    await one(run, tmp)
            except TimeoutError:
                run.state = f"timed out after {left:.0f} s"
                log(f"{run.label}: {run.state}")
            except (AssertionError, httpx.HTTPError) as exc:
                run.state = f"failed: {exc!r}"
                log(f"{run.label}: {run.state}")
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    for run in plan:
        log(
            f"{run.label}: {run.state}; setup {run.setup_s and round(run.setup_s, 1)} s, "
            f"rollout {run.total_s and round(run.total_s, 1)} s "
            f"(client saw {run.observed_s and round(run.observed_s, 1)} s), "
            f"ideal {run.ideal_s and round(run.ideal_s, 1)} s, "
            f"whole run {run.wall_s and round(run.wall_s, 1)} s"
        )
    report("software_rollout", figures(done))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up services on a kill
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
