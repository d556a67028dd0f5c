"""Reading 1,000 BMCs' power states: the host service's BmcPool against FreeIPMI's ipmipower.

Starts 1,000 simulated BMCs (``python -m roost_sim.bmc serve``) in one child process on
127.0.0.1 (pyghmi's client must not share a process with them), then reads every power state:

* with ``BmcPool`` (the host service's defaults: 32 calls in flight, 5 s timeout), first with
  no sessions (each call logs in: five round trips) and then with the sessions warm (one round
  trip each);
* with ``ipmipower --stat`` (FreeIPMI, Debian ``freeipmi-tools``; ``make bench`` installs it),
  all 1,000 as ``-h 127.0.0.1:PORT,...``, IPMI 2.0 cipher suite 17 like pyghmi. ipmipower logs in
  every time, so it is compared with the cold pool; the warm figure is what a poll costs.

The cold read runs once (pyghmi keeps sessions for the process's lifetime); the warm read and
ipmipower run three times each and their medians are reported. Stops by itself (a few seconds;
the child is killed at the end, also on failure).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, report, result

from roost_host.bmc import BmcError, BmcPool, BmcTarget
from roost_sim.ports import udp_port_block

COUNT = 1000
USER, PASSWORD = "admin", "bench-pass"
ROUNDS = 3
MAX_TOTAL = int(__import__("os").environ.get("BENCH_BMC_CONCURRENCY", "32"))


def start_bmcs(first: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "roost_sim.bmc", "serve", "--count", str(COUNT)]
    argv += ["--first-port", str(first), "--user", USER, "--password", PASSWORD]
    argv += ["--control-port", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())  # the ready line
    return proc


async def pool_round(pool: BmcPool, targets: list[BmcTarget]) -> tuple[float, int]:
    started = time.perf_counter()
    answers = await asyncio.gather(*(pool.power_state(t) for t in targets), return_exceptions=True)
    elapsed = time.perf_counter() - started
    ok = sum(1 for a in answers if a == "on")
    errors = [a for a in answers if isinstance(a, BmcError)]
    if errors:
        print(f"  pool: {len(errors)} errors, e.g. {errors[0].kind}: {errors[0]}")
    return elapsed, ok


async def bulk_round(pool: BmcPool, targets: list[BmcTarget]) -> tuple[float, int]:
    started = time.perf_counter()
    answers = await pool.power_states(targets, timeout_s=30)
    elapsed = time.perf_counter() - started
    errors = [a for a in answers.values() if isinstance(a, BmcError)]
    if errors:
        print(f"  bulk: {len(errors)} errors, e.g. {errors[0].kind}: {errors[0]}")
    return elapsed, sum(1 for a in answers.values() if a == "on")


def ipmipower_round(first: int) -> tuple[float, int]:
    hosts = ",".join(f"127.0.0.1:{p}" for p in range(first, first + COUNT))
    argv = ["ipmipower", "-h", hosts, "-u", USER, "-p", PASSWORD, "-D", "LAN_2_0", "-I", "17"]
    started = time.perf_counter()
    out = subprocess.run(
        [*argv, "--stat"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    elapsed = time.perf_counter() - started
    return elapsed, sum(1 for line in out.stdout.splitlines() if line.endswith(": on"))


async def measure(first: int) -> dict[str, list[float]]:
    targets = [
        BmcTarget("127.0.0.1", p, USER, PASSWORD.encode()) for p in range(first, first + COUNT)
    ]
    times: dict[str, list[float]] = {
        "bulk_cold": [],
        "bulk_warm": [],
        "cold": [],
        "warm": [],
        "ipmipower": [],
    }
    pool = BmcPool(
        max_total=MAX_TOTAL, timeout_s=5, retries=2, breaker_failures=3, breaker_reset_s=30
    )
    # The bulk read first (pyghmi keeps sessions for the whole process, so only the first
    # round of the process logs in): the way the host service polls many BMCs.
    bulk_cold, ok = await bulk_round(pool, targets)
    times["bulk_cold"].append(bulk_cold)
    print(f"  pool bulk read, new sessions: {bulk_cold:.2f}s ({ok} on)")
    for _ in range(ROUNDS):
        bulk, ok = await bulk_round(pool, targets)
        times["bulk_warm"].append(bulk)
        print(f"  pool bulk read, sessions warm: {bulk:.2f}s ({ok} on)")
    # One call per BMC (what single operations do), on sessions of their own (the bulk read's
    # are kept apart, see roost_host.bmc._read_power_states).
    pool = BmcPool(
        max_total=MAX_TOTAL, timeout_s=5, retries=2, breaker_failures=3, breaker_reset_s=30
    )
    cold, ok = await pool_round(pool, targets)
    times["cold"].append(cold)
    print(f"  pool, new sessions: {cold:.2f}s ({ok} on)")
    for _ in range(ROUNDS):
        warm, ok = await pool_round(pool, targets)
        times["warm"].append(warm)
        print(f"  pool, sessions warm: {warm:.2f}s ({ok} on)")
        if shutil.which("ipmipower"):
            peer, ok_p = ipmipower_round(first)
            times["ipmipower"].append(peer)
            print(f"  ipmipower: {peer:.2f}s ({ok_p} on)")
    await pool.aclose()
    return times


def main() -> int:
    first = udp_port_block(COUNT)
    proc = start_bmcs(first)
    try:
        times = asyncio.run(measure(first))
    finally:
        proc.kill()
        proc.wait()
    cold, warm = median(times["cold"]), median(times["warm"])
    bulk_cold, bulk_warm = median(times["bulk_cold"]), median(times["bulk_warm"])
    peer = median(times["ipmipower"]) if times["ipmipower"] else None
    results = [
        result(
            f"power state of {COUNT} BMCs, bulk read, new sessions",
            bulk_cold,
            "s",
            "ipmipower" if peer else None,
            peer,
            higher_is_better=False,
        ),
        result(
            f"power state of {COUNT} BMCs, bulk read, sessions warm",
            bulk_warm,
            "s",
            "ipmipower" if peer else None,
            peer,
            higher_is_better=False,
        ),
        result(
            f"power state of {COUNT} BMCs, one call each, new sessions",
            cold,
            "s",
            "ipmipower" if peer else None,
            peer,
            higher_is_better=False,
        ),
        result(
            f"power state of {COUNT} BMCs, one call each, sessions warm",
            warm,
            "s",
            "ipmipower" if peer else None,
            peer,
            higher_is_better=False,
        ),
    ]
    if peer is None:
        print("ipmipower not installed (Debian freeipmi-tools): peer skipped")
    report("bmc_poll", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
