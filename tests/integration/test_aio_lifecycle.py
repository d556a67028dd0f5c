"""`make run`'s supervisor takes its services with it however it ends, and a second one started
while it runs says so in one line instead of half-starting."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roost_sim.ports import SERVICE_PORTS, is_listening
from tests.support.waiting import eventually

UDP_PORTS = (8198, 8199)  # the service link and the heartbeat receiver of the all-in-one


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (its new parent may not reap it)


def _aio(env: dict[str, str], state: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "roost_sim.aio", "--state-dir", str(state)],
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )


async def test_a_killed_all_in_one_leaves_nothing_running_and_a_second_one_says_so(stack, tmp_path):
    busy = [p for p in SERVICE_PORTS.values() if is_listening(p)]
    busy += [p for p in UDP_PORTS if not _udp_free(p)]
    if busy:
        pytest.skip(f"the all-in-one's ports {busy} are in use (a `make run` on this machine?)")
    state = tmp_path / "state"
    env = {
        **os.environ,
        "ROOST_SIM_HOSTS": "0",
        "ROOST_STATE_DIR": str(state),
        "ROOST_MONGO_URL": stack.mongo_url,  # not the embedded database's fixed port
        "ROOST_AMQP_URL": stack.amqp_url,
        "ROOST_CREDENTIALS": str(tmp_path / "credentials.json"),  # not the user's
    }
    log = tmp_path / "aio.log"
    first = _aio(env, state, log)
    children: list[int] = []
    try:
        await eventually(
            lambda: "Roost is running" in log.read_text() or first.poll() is not None,
            timeout=240,
            what="the all-in-one up",
        )
        assert first.poll() is None, log.read_text()
        children = _children(first.pid)
        assert len(children) == len(SERVICE_PORTS), children

        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "roost_sim.aio", "--state-dir", str(state)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        said = (second.stdout + second.stderr).strip().splitlines()
        assert second.returncode != 0
        assert said == [
            f"roost: Roost is already running (pid {first.pid}, dashboard "
            f"http://127.0.0.1:{SERVICE_PORTS['dashboard']}); stop it first"
        ], said
        assert first.poll() is None and all(_alive(c) for c in children)

        first.send_signal(signal.SIGKILL)
        first.wait(10)
        started = time.monotonic()
        await eventually(
            lambda: not any(_alive(c) for c in children),
            timeout=30,
            what="every service gone with its supervisor",
        )
        await eventually(
            lambda: not any(is_listening(p) for p in SERVICE_PORTS.values()),
            timeout=10,
            what="every port free",
        )
        print(f"services gone {time.monotonic() - started:.1f} s after the SIGKILL")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
        for pid in children:  # what the old supervisor left behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
