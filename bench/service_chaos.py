"""Randomized fault runs against an active/standby group (issue 6): zero double-active.

The same property test as ``tests/e2e/test_service_failover.py::
test_randomized_faults_never_leave_two_actives`` with all its runs (``BENCH_CHAOS_RUNS``,
default 1,000; ``BENCH_CHAOS_SEED`` to replay one): on a 3-host simulated site (real services,
agents, BMCs), each run injects one random fault (kill the active or standby process, swact,
a 50-250 ms freeze of the active host, a 0.5-4 s cut of its UDP link path, a clean agent
restart, a full freeze of the active host: fence and failover) and waits for the group to be
whole again (active + ready standby). Watchers look at the processes every 5 ms and at the API
every ~20 ms for two actives. Reports the runs by kind, moments with two actives (the target
is 0), and the time back to whole per kind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # bench's common, the tests' site helpers

from common import bench_vhost, percentile, report, result  # noqa: E402

from tests.conftest import Stack  # noqa: E402
from tests.support.sm import chaos, open_sm  # noqa: E402
from tests.support.stack import Tokens, Vhost, start_database  # noqa: E402

RUNS = int(os.environ.get("BENCH_CHAOS_RUNS", "1000"))
SEED = int(os.environ.get("BENCH_CHAOS_SEED", str(int(time.time()))))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-chaos-"))
    db, mongo_url = start_database(tmp)
    vhost = Vhost(bench_vhost(tmp)[0])
    stack = Stack(vhost, mongo_url, Tokens.create(tmp), tmp)
    violations: list[str] = []
    log(f"seed {SEED}, {RUNS} runs")
    try:
        try:
            async with open_sm(stack, tmp / "site") as sm:
                report_ = await chaos(sm, RUNS, SEED, log=log)
                violations = sm.watch.violations + sm.api_violations
        except AssertionError as exc:  # open_sm raises at the end if two actives were seen
            log(f"FAILED: {exc}")
            violations = [str(exc)]
            raise
    finally:
        for svc in stack.services:
            svc.stop()
        vhost.delete()
        db.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    results = [
        result(f"runs (seed {SEED})", report_.runs, "count"),
        result("moments with two actives (target 0)", len(violations), "count"),
    ]
    for kind, n in sorted(report_.kinds.items()):
        times = [t for k, t in zip(report_.order, report_.recovery_s, strict=True) if k == kind]
        results.append(result(f"{kind} x{n}: whole again p50", percentile(times, 50), "s"))
        results.append(result(f"{kind} x{n}: whole again p99", percentile(times, 99), "s"))
    report("service_chaos", results)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up services on a kill
    asyncio.run(main())
