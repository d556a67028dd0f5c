"""Child processes with readiness checks and clean stops (used by ``make run`` and the tests).

Every child dies with its parent: on Linux each asks the kernel (``PR_SET_PDEATHSIG``) for a
SIGTERM when the thread that started it exits, so a supervisor that is SIGKILLed (or crashes)
leaves no service running and holding its ports. Start children from a thread that lives as
long as they should (the main thread, a long-lived executor), or pass ``die_with_parent=False``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from roost_sim.ports import is_listening


class ReadyTimeout(RuntimeError):
    """A process did not become ready in time."""


class ManagedProcess:
    """One child process: start it, wait until ready, stop it politely or kill it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        ready: Callable[[], bool] | None = None,
        cwd: Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.die_with_parent = die_with_parent
        self.argv = list(argv)
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.ready = ready
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        out = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")
        # A new session, so Ctrl-C in a terminal reaches the supervisor only, which then stops
        # the children in order.
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=_death_signal(os.getpid()) if self.die_with_parent else None,
        )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Poll the readiness check until it passes; raise with the log tail if it does not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise ReadyTimeout(f"{self.name} exited with {self.returncode}: {self.log_tail()}")
            if self.ready is None or self.ready():
                return
            time.sleep(0.05)
        raise ReadyTimeout(f"{self.name} not ready after {timeout_s:.0f}s: {self.log_tail()}")

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def terminate(self) -> None:
        """SIGTERM without waiting (see :func:`stop_together`)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if not self.running:
            return
        assert self.proc is not None
        self.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: no clean-up at all (crash tests)."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


_PR_SET_PDEATHSIG = 1


def _death_signal(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child receive SIGTERM when its parent dies (Linux; None
    elsewhere). ``prctl`` is looked up here, before the fork: the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request: nobody would signal
            os._exit(1)

    return in_child


def stop_together(procs: list[ManagedProcess], timeout_s: float = 10.0) -> None:
    """SIGTERM every process at once, then wait for each (SIGKILL past ``timeout_s``): stopping
    n services costs the slowest one's shutdown, not the sum."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.stop(timeout_s)


def http_ready(url: str) -> Callable[[], bool]:
    """A readiness check: ``url`` answers 200."""

    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def port_ready(port: int) -> Callable[[], bool]:
    return lambda: is_listening(port)


def python_module(module: str, *args: str) -> list[str]:
    """argv running ``python -m module`` with this interpreter (the project's venv)."""
    return [sys.executable, "-m", module, *args]
