"""The agent's process monitor (``roost_agent.pmon``) against real child processes.

Children are small ``python -c`` programs; every wait has a deadline (``eventually``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from roost_agent.pmon import ProcessMonitor, ProcessSpec, Transition
from roost_sim.ports import free_port
from tests.support.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


class Recorder:
    """``on_change`` that keeps every transition with the monotonic time it arrived."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, Transition]] = []

    def __call__(self, t: Transition) -> None:
        self.seen.append((time.monotonic(), t))

    def states(self, name: str) -> list[str]:
        return [t.state for _, t in self.seen if t.name == name]

    async def wait(
        self,
        name: str,
        state: str,
        *,
        after: int = 0,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> tuple[float, Transition]:
        async def probe() -> tuple[float, Transition] | None:
            for at, t in self.seen[after:]:
                if t.name == name and t.state == state:
                    return at, t
            return None

        return await eventually(probe, timeout=timeout, interval=0.005, what=f"{name} {state}")


@pytest.fixture
async def pmon():
    recorder = Recorder()
    monitor = ProcessMonitor(on_change=recorder)
    yield monitor, recorder
    await monitor.stop_all()


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaps (our PID 1 may not reap orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_start_is_running_then_healthy(pmon) -> None:
    monitor, rec = pmon
    monitor.start(ProcessSpec(name="sleeper", argv=SLEEPER))
    _, running = await rec.wait("sleeper", "running")
    await rec.wait("sleeper", "healthy")
    assert rec.states("sleeper")[:3] == ["starting", "running", "healthy"]
    status = monitor.status("sleeper")
    assert status.state == "healthy" and status.pid == running.pid
    assert [s.name for s in monitor.statuses()] == ["sleeper"]


async def test_kill_9_is_restarted_in_place_within_200ms(pmon) -> None:
    monitor, rec = pmon
    monitor.start(ProcessSpec(name="svc", argv=SLEEPER, restart={"max_restarts": 5}))
    _, first = await rec.wait("svc", "running")
    mark = len(rec.seen)
    killed_at = time.monotonic()
    os.kill(first.pid, signal.SIGKILL)
    exited_at, exited = await rec.wait("svc", "exited", after=mark)
    running_at, again = await rec.wait("svc", "running", after=mark)
    assert exited.signal == signal.SIGKILL and exited.code is None
    assert exited_at - killed_at < 0.1, "exit reported within 100 ms"
    assert again.pid != first.pid
    assert running_at - killed_at <= 0.2, f"restart took {running_at - killed_at:.3f}s"
    assert [t.state for _, t in rec.seen[mark:]] == [
        "exited",
        "restarting",
        "starting",
        "running",
        "healthy",
    ]
    assert monitor.status("svc").restarts_total == 1


async def test_too_many_restarts_in_window_is_failed(pmon) -> None:
    monitor, rec = pmon
    spec = ProcessSpec(name="flaky", argv=SLEEPER, restart={"max_restarts": 2, "window_s": 30})
    monitor.start(spec)
    for kill in range(1, 4):  # K + 1 kills, each of a running process

        async def running(n: int = kill) -> Transition | None:
            started = [t for _, t in rec.seen if t.name == "flaky" and t.state == "running"]
            return started[n - 1] if len(started) >= n else None

        victim = await eventually(running, what=f"run {kill}")
        os.kill(victim.pid, signal.SIGKILL)
    _, failed = await rec.wait("flaky", "failed")
    assert "2 restarts" in failed.reason
    status = monitor.status("flaky")
    assert status.state == "failed" and status.pid is None and status.restarts_total == 2
    assert monitor._procs["flaky"].task.done()  # nothing left that could restart it
    assert rec.states("flaky").count("running") == 3


HTTP_SERVER = textwrap.dedent(
    """
    import http.server, os, sys
    port, sick = int(sys.argv[1]), sys.argv[2]
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(500 if os.path.exists(sick) else 200)
            self.end_headers()
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)


async def test_http_probe_turns_unhealthy_within_period_and_timeout(pmon, tmp_path) -> None:
    monitor, rec = pmon
    port, sick = free_port(), tmp_path / "sick"
    period, timeout = 0.2, 0.3
    monitor.start(
        ProcessSpec(
            name="web",
            argv=[sys.executable, "-c", HTTP_SERVER, str(port), str(sick)],
            probe={"type": "http", "url": f"http://127.0.0.1:{port}/health"},
            probe_period_s=period,
            probe_timeout_s=timeout,
        )
    )
    await rec.wait("web", "healthy")
    assert "unhealthy" not in rec.states("web"), "not up yet is not unhealthy"
    mark = len(rec.seen)
    sick.touch()
    sick_at = time.monotonic()
    at, unhealthy = await rec.wait("web", "unhealthy", after=mark)
    assert at - sick_at <= period + timeout + 0.1, f"{at - sick_at:.3f}s"
    assert "http probe failed" in unhealthy.reason
    sick.unlink()
    await rec.wait("web", "healthy", after=mark)
    assert monitor.status("web").restarts_total == 0  # unhealthy is reported, not restarted


async def test_tcp_and_script_probes(pmon) -> None:
    monitor, rec = pmon
    port = free_port()
    listener = (
        f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen(); "
        "time.sleep(600)"
    )
    common = {"argv": SLEEPER, "probe_period_s": 0.1, "probe_timeout_s": 0.5, "start_grace_s": 0.3}
    monitor.start(
        ProcessSpec(
            name="tcp",
            argv=[sys.executable, "-c", listener],
            probe={"type": "tcp", "port": port},
            probe_period_s=0.1,
        )
    )
    closed = free_port()
    monitor.start(ProcessSpec(name="tcp-closed", probe={"type": "tcp", "port": closed}, **common))
    monitor.start(
        ProcessSpec(name="script-ok", probe={"type": "script", "argv": ["true"]}, **common)
    )
    monitor.start(
        ProcessSpec(name="script-bad", probe={"type": "script", "argv": ["false"]}, **common)
    )
    await rec.wait("tcp", "healthy")
    await rec.wait("script-ok", "healthy")
    _, refused = await rec.wait("tcp-closed", "unhealthy")
    assert "tcp probe" in refused.reason
    await rec.wait("script-bad", "unhealthy")
    assert "healthy" not in rec.states("tcp-closed") + rec.states("script-bad")


async def test_fencing_token_is_in_the_childs_environment(pmon, tmp_path) -> None:
    monitor, _ = pmon
    out = tmp_path / "env"
    dump = (
        f"import json,os,time; open({str(out)!r},'w').write(json.dumps(dict(os.environ))); "
        "time.sleep(600)"
    )
    os.environ["ROOST_HEARTBEAT_KEY"] = "agent-secret"  # the agent's settings are not passed on
    try:
        monitor.start(
            ProcessSpec(
                name="fenced",
                argv=[sys.executable, "-c", dump],
                env={"MODE": "active"},
                fencing_token=42,
            )
        )
        env = await eventually(
            lambda: asyncio.sleep(0, out.exists() and out.read_text()), what="env dump"
        )
    finally:
        del os.environ["ROOST_HEARTBEAT_KEY"]
    env = json.loads(env)
    assert env["ROOST_FENCING_TOKEN"] == "42" and env["MODE"] == "active"
    assert "ROOST_HEARTBEAT_KEY" not in env


async def test_stop_sends_sigterm_then_sigkill_after_stop_timeout(pmon, tmp_path) -> None:
    monitor, rec = pmon
    ready = tmp_path / "ready"
    stubborn = (
        "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(ready)!r},'w').close(); time.sleep(600)"
    )
    monitor.start(
        ProcessSpec(name="stubborn", argv=[sys.executable, "-c", stubborn], stop_timeout_s=0.5)
    )
    monitor.start(ProcessSpec(name="polite", argv=SLEEPER, stop_timeout_s=5))
    await rec.wait("polite", "running")
    await eventually(lambda: asyncio.sleep(0, ready.exists()), what="SIGTERM ignored")

    t0 = time.monotonic()
    await monitor.stop("polite")
    _, polite = await rec.wait("polite", "exited")
    assert polite.signal == signal.SIGTERM and time.monotonic() - t0 < 0.5

    t0 = time.monotonic()
    await monitor.stop("stubborn")
    took = time.monotonic() - t0
    _, stubborn_exit = await rec.wait("stubborn", "exited")
    assert stubborn_exit.signal == signal.SIGKILL
    assert 0.5 <= took < 1.5, f"stop took {took:.3f}s"
    assert rec.states("stubborn")[-2:] == ["exited", "stopped"]
    assert monitor.status("stubborn").state == "stopped" and gone(stubborn_exit.pid)


CHILD_WITH_GRANDCHILD = textwrap.dedent(
    """
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(f"{__import__('os').getpid()} {grandchild.pid}")
    __import__('os').rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
    """
)


async def test_no_orphans_when_the_monitor_is_sigkilled(tmp_path) -> None:
    pids_file = tmp_path / "pids"
    leftovers: list[int] = []
    spec = ProcessSpec(
        name="tree", argv=[sys.executable, "-c", CHILD_WITH_GRANDCHILD, str(pids_file)]
    )
    host = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tests.support.pmon_host", str(tmp_path), spec.model_dump_json()],
        cwd=REPO,
    )
    try:
        text = await eventually(
            lambda: asyncio.sleep(0, pids_file.exists() and pids_file.read_text()),
            what="child and grandchild started",
        )
        child, grandchild = map(int, text.split())
        leftovers += [child, grandchild]
        assert os.getpgid(child) == child == os.getpgid(grandchild)  # its own group
        host.kill()  # SIGKILL: no clean-up code of the monitor runs
        await host.wait()
        await eventually(lambda: asyncio.sleep(0, gone(child)), timeout=2, what="child gone")
        # The death signal reaches the direct child only: the grandchild outlives it,
        # reparented, in the child's process group; the next monitor on this state
        # directory kills it (this is what an agent does when it starts again).
        assert not gone(grandchild)
        assert ProcessMonitor(state_dir=tmp_path).reap_leftovers() == [grandchild]
        await eventually(lambda: asyncio.sleep(0, gone(grandchild)), timeout=2, what="grandchild")
        assert ProcessMonitor(state_dir=tmp_path).reap_leftovers() == []
    finally:
        if host.returncode is None:
            host.kill()
            await host.wait()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"name": "x", "argv": []}, "argv"),
        ({"name": "x", "argv": ["true"], "probe": {"type": "smoke"}}, "probe"),
        ({"name": "x", "argv": ["true"], "probe_period_s": -1}, "probe_period_s"),
        ({"name": "x", "argv": ["true"], "probe": {"type": "http", "url": "ftp://h/"}}, "probe"),
        ({"name": "x", "argv": ["true"], "restart": {"max_restarts": -1}}, "restart"),
        ({"name": "bad name", "argv": ["true"]}, "name"),
    ],
)
def test_bad_spec_is_refused_naming_the_field(spec: dict, field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ProcessSpec.model_validate(spec)
    assert refused.value.errors()[0]["loc"][0] == field
    assert field in str(refused.value)
