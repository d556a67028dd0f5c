"""Process restart in place: the agent's process monitor against a naive polling supervisor.

One child (``python -c 'sleep'``) is SIGKILLed ``KILLS`` times; each time we measure kill →
exit noticed and kill → a new child running (``Popen`` returned). Three supervisors, one after
the other in this process, each with its own child:

* ``pmon``: :class:`roost_agent.pmon.ProcessMonitor` with its default restart policy (the exit
  is seen through a pidfd; the first restart in a window waits the 50 ms backoff);
* ``pmon, no backoff``: the same with ``backoff_initial_s=0`` (what the mechanism costs alone);
* ``poll 100 ms``: the simplest alternative, a loop calling ``proc.poll()`` every 100 ms and
  re-spawning at once when it returns a code (no backoff at all).

Kills come at random moments (100 to 200 ms after the child is running), so they fall at random
phases of the poller's period. The restart window is shorter than the gap between kills, so every
pmon restart is the first of its window (the 50 ms backoff, never a longer one). Stops by itself
(about 30 s; every child is killed at the end, also on failure). Loopback only: no traffic.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile, report, result

from roost_agent.pmon import ProcessMonitor, ProcessSpec, Transition

KILLS = int(os.environ.get("BENCH_PMON_KILLS", "50"))
CHILD = [sys.executable, "-c", "import time; time.sleep(600)"]
POLL_S = 0.1


async def gap() -> None:
    await asyncio.sleep(random.uniform(0.1, 0.2))


async def bench_pmon(backoff_s: float) -> tuple[list[float], list[float]]:
    """(kill → exited seen, kill → running) in seconds, one pair per kill."""
    events: asyncio.Queue[tuple[float, Transition]] = asyncio.Queue()
    monitor = ProcessMonitor(on_change=lambda t: events.put_nowait((time.monotonic(), t)))
    policy = {"max_restarts": 1, "window_s": 0.05, "backoff_initial_s": backoff_s}
    monitor.start(ProcessSpec(name="bench", argv=CHILD, restart=policy))

    async def until(state: str) -> tuple[float, Transition]:
        while True:
            at, t = await asyncio.wait_for(events.get(), 5)
            if t.state == state:
                return at, t

    detect, restart = [], []
    try:
        _, running = await until("running")
        for _ in range(KILLS):
            await gap()
            killed = time.monotonic()
            os.kill(running.pid, signal.SIGKILL)
            exited_at, _ = await until("exited")
            running_at, running = await until("running")
            detect.append(exited_at - killed)
            restart.append(running_at - killed)
    finally:
        await monitor.stop_all()
    return detect, restart


async def bench_poll() -> tuple[list[float], list[float]]:
    """The naive supervisor: ``proc.poll()`` every 100 ms, re-spawn at once."""
    detect, restart = [], []
    proc = spawn()
    respawned = asyncio.Event()
    killed = 0.0

    async def supervise() -> None:
        nonlocal proc
        while True:
            await asyncio.sleep(POLL_S)
            if proc.poll() is not None:
                detect.append(time.monotonic() - killed)
                proc = spawn()
                restart.append(time.monotonic() - killed)
                respawned.set()

    loop_task = asyncio.get_running_loop().create_task(supervise())
    try:
        for _ in range(KILLS):
            await gap()
            respawned.clear()
            killed = time.monotonic()
            proc.kill()
            await asyncio.wait_for(respawned.wait(), 5)
    finally:
        loop_task.cancel()
        proc.kill()
        proc.wait()
    return detect, restart


def spawn() -> subprocess.Popen[bytes]:
    # A blocking fork+exec, exactly as pmon's own spawn (it is a few ms, not worth a thread).
    return subprocess.Popen(CHILD, start_new_session=True)


def ms(values: list[float], p: float) -> float:
    return percentile(values, p) * 1000


async def main() -> None:
    pmon_detect, pmon_restart = await bench_pmon(0.05)
    _, bare_restart = await bench_pmon(0.0)
    poll_detect, poll_restart = await bench_poll()
    peer = "poll 100 ms"
    results = [
        result(f"pmon exit seen p{p} ({KILLS} kills)", ms(pmon_detect, p), "ms", peer,
               ms(poll_detect, p), higher_is_better=False)
        for p in (50, 99)
    ] + [
        result(f"pmon kill->running p{p} (50 ms backoff)", ms(pmon_restart, p), "ms", peer,
               ms(poll_restart, p), higher_is_better=False)
        for p in (50, 99)
    ] + [
        result(f"pmon kill->running p{p} (no backoff)", ms(bare_restart, p), "ms", peer,
               ms(poll_restart, p), higher_is_better=False)
        for p in (50, 99)
    ]  # fmt: skip
    report("pmon_restart", results)


if __name__ == "__main__":
    asyncio.run(main())
