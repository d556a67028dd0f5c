"""Process monitor (StarlingX pmond): start, watch and restart the service processes of this host.

* :class:`ProcessSpec` says what to run, how to check it and how often it may be restarted.
* :class:`ProcessMonitor` runs specs: ``start(spec)``, ``stop(name)``, ``status(name)``,
  ``statuses()``, and calls ``on_change`` with a :class:`Transition` for every state change.

States: ``starting`` (being spawned) → ``running`` (alive) → ``healthy`` / ``unhealthy`` (by its
probe) → ``exited`` (code or signal) → ``restarting`` → ``starting`` ..., or ``failed`` once the
restart policy is exhausted (no more restarts: failover is the controller's decision), or
``stopped`` after :meth:`ProcessMonitor.stop`.

Why it reacts fast: a child's exit is seen through a pidfd (``os.pidfd_open``) registered with
the event loop, so the loop wakes the moment the kernel reaps nothing yet but marks the child
dead; there is no polling loop for exits. Probes run on their own period.

Why no orphans: every child leads its own session and process group (``start_new_session``), and
asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGKILL)``, Linux) to be killed when the agent dies,
even by SIGKILL. A clean stop sends SIGTERM then SIGKILL to the whole group, and after any exit
what is left of the group is killed before a restart. What the death signal cannot reach are
grandchildren when the agent is SIGKILLed (the signal goes to the direct child only): the agent
records each group (``state_dir/pmon/<name>.json``) and :meth:`ProcessMonitor.reap_leftovers`
kills such leftovers at the next start, recognising them by a per-run marker in their
environment (``ROOST_PMON_RUN``), never by a process id alone.

Why the broker does not matter here: nothing in this module knows about the bus. A broker or
controller outage stops no process; only ``stop`` (a command) or the agent's own death does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger("roost_agent.pmon")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
FENCING_ENV = "ROOST_FENCING_TOKEN"
RUN_ENV = "ROOST_PMON_RUN"
# What a service inherits from the agent's environment: the agent's own ROOST_* settings
# (broker URL, heartbeat key) are secrets or irrelevant to a service, so they are not passed on.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")

State = Literal[
    "starting", "running", "healthy", "unhealthy", "exited", "restarting", "failed", "stopped"
]


# --- specification ----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProcessProbe(_Strict):
    """Healthy while the process is alive (its exit is seen at once, so no probing is needed)."""

    type: Literal["process"] = "process"


class HttpProbe(_Strict):
    """Healthy when ``GET url`` answers ``expect_status`` within the probe timeout."""

    type: Literal["http"]
    url: str
    expect_status: int = Field(200, ge=100, le=599)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("must be an http:// URL with a host (https is not probed)")
        return url


class TcpProbe(_Strict):
    """Healthy when a TCP connection to ``host:port`` opens within the probe timeout."""

    type: Literal["tcp"]
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)


class ScriptProbe(_Strict):
    """Healthy when ``argv`` exits 0 within the probe timeout (killed, group and all, if not)."""

    type: Literal["script"]
    argv: list[str] = Field(min_length=1)


Probe = Annotated[ProcessProbe | HttpProbe | TcpProbe | ScriptProbe, Field(discriminator="type")]


class RestartPolicy(_Strict):
    """At most ``max_restarts`` restarts within ``window_s``; the next exit is ``failed``.

    Before the n-th restart within the window the monitor waits
    ``min(backoff_initial_s * 2**(n-1), backoff_max_s)``: a crash loop slows down, a single
    crash is back almost at once.
    """

    max_restarts: int = Field(3, ge=0)
    window_s: float = Field(60.0, gt=0)
    backoff_initial_s: float = Field(0.05, ge=0)
    backoff_max_s: float = Field(5.0, ge=0)

    def backoff(self, n: int) -> float:
        return min(self.backoff_initial_s * 2 ** max(0, n - 1), self.backoff_max_s)


class ProcessSpec(_Strict):
    """One process the agent keeps running."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] | None = None  # added to PATH/LANG/LC_ALL/TZ/HOME from the agent
    cwd: Path | None = None
    probe: Probe = ProcessProbe()
    probe_period_s: float = Field(1.0, gt=0)
    probe_timeout_s: float = Field(1.0, gt=0)
    # Probe failures this soon after a (re)start mean "not up yet", not "unhealthy"; the probe
    # is retried every 50 ms meanwhile so that ``healthy`` comes as soon as the service is up.
    start_grace_s: float = Field(5.0, ge=0)
    restart: RestartPolicy = RestartPolicy()
    stop_timeout_s: float = Field(5.0, gt=0)  # SIGTERM, then SIGKILL after this long
    fencing_token: int | None = Field(None, ge=0)  # passed as ROOST_FENCING_TOKEN

    @field_validator("argv")
    @classmethod
    def _program(cls, argv: list[str]) -> list[str]:
        if not argv[0]:
            raise ValueError("the program (argv[0]) must not be empty")
        return argv


# --- what it reports --------------------------------------------------------------------------


class Transition(BaseModel):
    """A state change of one process, as given to ``on_change``."""

    name: str
    state: State
    at: float  # time.time()
    pid: int | None = None
    code: int | None = None  # exit code (``exited``)
    signal: int | None = None  # killing signal (``exited``)
    reason: str = ""


class ProcessStatus(BaseModel):
    """What :meth:`ProcessMonitor.status` says about one process."""

    name: str
    state: State
    since: float
    pid: int | None
    restarts_in_window: int
    restarts_total: int
    last_code: int | None
    last_signal: int | None
    reason: str


# --- the child side ---------------------------------------------------------------------------


def _death_signal_setup(agent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: die with the agent (PR_SET_PDEATHSIG), even if it was SIGKILLed.

    Runs in the forked child before exec. The parent may have died between fork and prctl (the
    signal is then never sent), so the child checks its parent afterwards and dies at once.
    PR_SET_PDEATHSIG fires when the *thread* that forked exits: children are spawned from the
    event loop's thread, which lives as long as the agent.
    """
    import ctypes  # only agents that monitor processes pay for ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != agent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


def _kill_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed uid: signal what we can reach
        return True


# --- probes -----------------------------------------------------------------------------------


async def _http_ok(probe: HttpProbe) -> bool:
    parts = urlsplit(probe.url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    try:
        host = parts.netloc.rsplit("@", 1)[-1]
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()  # "HTTP/1.x 200 OK"
        fields = status_line.split()
        return len(fields) >= 2 and fields[1] == str(probe.expect_status).encode()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _tcp_ok(probe: TcpProbe) -> bool:
    _, writer = await asyncio.open_connection(probe.host, probe.port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _script_ok(probe: ScriptProbe) -> bool:
    proc = await asyncio.create_subprocess_exec(
        *probe.argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return await proc.wait() == 0
    finally:
        if proc.returncode is None:  # timed out (cancelled): kill its group, reap it
            _kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()


async def probe_once(
    probe: ProcessProbe | HttpProbe | TcpProbe | ScriptProbe, limit_s: float
) -> str:
    """Run a probe; "" if healthy, else why not."""
    if isinstance(probe, ProcessProbe):
        return ""
    check = {"http": _http_ok, "tcp": _tcp_ok, "script": _script_ok}[probe.type]
    try:
        async with asyncio.timeout(limit_s):
            ok = await check(probe)  # type: ignore[operator]
    except TimeoutError:
        return f"{probe.type} probe timed out after {limit_s}s"
    except OSError as exc:
        return f"{probe.type} probe: {exc.strerror or exc}"
    return "" if ok else f"{probe.type} probe failed"


# --- one supervised process -------------------------------------------------------------------


class _Supervised:
    """One spec's life: spawn, watch, probe, restart per policy, stop."""

    def __init__(self, monitor: ProcessMonitor, spec: ProcessSpec) -> None:
        self.monitor, self.spec = monitor, spec
        self.state: State = "starting"
        self.since = time.time()
        self.reason = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit: asyncio.Future[int] | None = None
        self.restarts: collections.deque[float] = collections.deque()  # monotonic times
        self.restarts_total = 0
        self.last_code: int | None = None
        self.last_signal: int | None = None
        self.stopping = False
        self.run_id = uuid.uuid4().hex
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"pmon:{spec.name}")

    # Transitions --------------------------------------------------------------------------

    def _set(self, state: State, reason: str = "", **extra: int | None) -> None:
        if state == self.state and state in ("healthy", "unhealthy", "running"):
            return  # a probe repeating what is known is not a transition
        self.state, self.since, self.reason = state, time.time(), reason
        pid = self.proc.pid if self.proc is not None else None
        self.monitor._emit(
            Transition(
                name=self.spec.name, state=state, at=self.since, pid=pid, reason=reason, **extra
            )
        )

    def status(self) -> ProcessStatus:
        self._prune(time.monotonic())
        return ProcessStatus(
            name=self.spec.name,
            state=self.state,
            since=self.since,
            pid=self.proc.pid if self.proc is not None and self.proc.returncode is None else None,
            restarts_in_window=len(self.restarts),
            restarts_total=self.restarts_total,
            last_code=self.last_code,
            last_signal=self.last_signal,
            reason=self.reason,
        )

    def _prune(self, now: float) -> None:
        while self.restarts and now - self.restarts[0] > self.spec.restart.window_s:
            self.restarts.popleft()

    # Life ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._set("starting")
            try:
                self._spawn()
            except OSError as exc:  # no such program, bad cwd: an exit like any other
                self.proc = None
                self._set("exited", f"could not start: {exc}", code=127)
                self.last_code, self.last_signal = 127, None
            else:
                probing = asyncio.get_running_loop().create_task(self._probe_loop())
                try:
                    returncode = await self.exit  # type: ignore[misc]
                finally:
                    probing.cancel()
                self.last_code = returncode if returncode >= 0 else None
                self.last_signal = -returncode if returncode < 0 else None
                self.monitor._forget_group(self.spec.name)
                self._set("exited", "", code=self.last_code, signal=self.last_signal)
            if self.stopping:
                self._set("stopped")
                return
            now = time.monotonic()
            self._prune(now)
            policy = self.spec.restart
            if len(self.restarts) >= policy.max_restarts:
                self._set(
                    "failed",
                    f"{len(self.restarts)} restarts within {policy.window_s}s "
                    f"(policy allows {policy.max_restarts})",
                )
                return
            self.restarts.append(now)
            self.restarts_total += 1
            backoff = policy.backoff(len(self.restarts))
            self._set("restarting", f"restart {len(self.restarts)} in window, in {backoff}s")
            await asyncio.sleep(backoff)

    def _spawn(self) -> None:
        spec = self.spec
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.update(spec.env or {})
        env[RUN_ENV] = self.run_id
        if spec.fencing_token is not None:
            env[FENCING_ENV] = str(spec.fencing_token)
        loop = asyncio.get_running_loop()
        self.proc = subprocess.Popen(
            spec.argv,
            env=env,
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own session and process group: killed as a whole
            preexec_fn=self.monitor._child_setup,
            close_fds=True,
        )
        self.exit = loop.create_future()
        self.monitor._remember_group(spec.name, self.proc.pid, self.run_id)
        self._watch_exit(loop)
        self._set("running")
        if isinstance(spec.probe, ProcessProbe):
            self._set("healthy")

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        """Resolve ``self.exit`` with the return code the moment the child dies (pidfd)."""
        proc, fut = self.proc, self.exit
        assert proc is not None and fut is not None
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # no pidfd (kernel < 5.3): one blocked thread instead

            def reaped(f: asyncio.Future[int]) -> None:
                _kill_group(proc.pid, signal.SIGKILL)
                if not fut.done():
                    fut.set_result(f.result())

            loop.run_in_executor(None, proc.wait).add_done_callback(reaped)
            return

        def readable() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            # Kill what is left of its group (workers it forked) while the leader is a zombie
            # not yet reaped: its pid, hence the group id, cannot have been reused yet.
            _kill_group(proc.pid, signal.SIGKILL)
            if not fut.done():
                fut.set_result(proc.wait())  # already dead: does not block

        loop.add_reader(pidfd, readable)

    async def _probe_loop(self) -> None:
        spec = self.spec
        if isinstance(spec.probe, ProcessProbe):
            return
        started = time.monotonic()
        up = False
        while True:
            failure = await probe_once(spec.probe, spec.probe_timeout_s)
            if self.stopping or self.exit is None or self.exit.done():
                return
            if not failure:
                up = True
                self._set("healthy")
            elif up or time.monotonic() - started >= spec.start_grace_s:
                self._set("unhealthy", failure)
            await asyncio.sleep(spec.probe_period_s if up else min(spec.probe_period_s, 0.05))

    async def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after ``stop_timeout_s``; returns once it is gone."""
        self.stopping = True
        proc, fut = self.proc, self.exit
        if self.task.done():  # failed (or already stopped)
            if self.state != "stopped":
                self._set("stopped")
            return
        if proc is None or fut is None or fut.done():  # between restarts: cancel the wait
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self._set("stopped")
            return
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.spec.stop_timeout_s)
        except TimeoutError:
            log.warning(
                "%s ignored SIGTERM for %ss: SIGKILL", self.spec.name, self.spec.stop_timeout_s
            )
            _kill_group(proc.pid, signal.SIGKILL)
        await self.task


# --- the monitor ------------------------------------------------------------------------------


class ProcessMonitor:
    """The agent's process monitor. Independent of the bus by design (see the module doc).

    ``state_dir``: where the process groups are recorded for :meth:`reap_leftovers`; None keeps
    no record (tests, simulations).
    """

    def __init__(
        self,
        on_change: Callable[[Transition], None] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.on_change = on_change
        self._dir = state_dir / "pmon" if state_dir is not None else None
        self._procs: dict[str, _Supervised] = {}
        self._child_setup = _death_signal_setup(os.getpid())

    def start(self, spec: ProcessSpec) -> None:
        """Start ``spec`` (from inside the running loop). A name already running is an error."""
        current = self._procs.get(spec.name)
        if current is not None and not current.task.done():
            raise ValueError(f"{spec.name} is already running; stop it first")
        self._procs[spec.name] = _Supervised(self, spec)

    async def stop(self, name: str) -> None:
        """Stop ``name`` (SIGTERM, then SIGKILL after its stop timeout, whole group)."""
        await self._procs[name].stop()

    def forget(self, name: str) -> None:
        """Drop a stopped (or failed) process from :meth:`statuses`; unknown names are ignored."""
        current = self._procs.get(name)
        if current is not None and not current.task.done():
            raise ValueError(f"{name} is still running; stop it first")
        self._procs.pop(name, None)

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.stop() for p in self._procs.values()))

    def status(self, name: str) -> ProcessStatus:
        return self._procs[name].status()

    def statuses(self) -> list[ProcessStatus]:
        return [p.status() for p in self._procs.values()]

    def _emit(self, transition: Transition) -> None:
        log.info(
            "%s %s%s",
            transition.name,
            transition.state,
            f" ({transition.reason})" if transition.reason else "",
        )
        if self.on_change is not None:
            try:
                self.on_change(transition)
            except Exception:  # a listener's bug must not stop supervision
                log.exception("on_change failed for %s", transition)

    # Leftovers of an agent that was SIGKILLed ------------------------------------------------

    def _remember_group(self, name: str, pgid: int, run_id: str) -> None:
        if self._dir is None:
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        (self._dir / f"{name}.json").write_text(json.dumps({"pgid": pgid, "run": run_id}))

    def _forget_group(self, name: str) -> None:
        if self._dir is not None:
            with contextlib.suppress(FileNotFoundError):
                (self._dir / f"{name}.json").unlink()

    def reap_leftovers(self) -> list[int]:
        """SIGKILL what a previous agent's children left (their grandchildren); the pids killed.

        A process is killed only if it is in a recorded process group AND carries that run's
        marker in its environment, so a reused process id is never mistaken for a leftover.
        """
        if self._dir is None or not self._dir.is_dir():
            return []
        killed: list[int] = []
        for record in self._dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                group = json.loads(record.read_text())
                marker = f"{RUN_ENV}={group['run']}".encode()
                for pid in _group_members(int(group["pgid"])):
                    with contextlib.suppress(OSError):
                        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                        if marker in environ:
                            os.kill(pid, signal.SIGKILL)
                            killed.append(pid)
            with contextlib.suppress(OSError):
                record.unlink()
        return killed


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ESRCH):
                continue
            raise
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members
