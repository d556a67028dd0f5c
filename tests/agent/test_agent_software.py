"""The agent's side of software updates (``software.install`` / ``software.rollback``, issue 7):
real agent processes on simulated hosts, the test's own vhost, release archives served over
HTTP by a small server in the test, hooks that really run (they write what they saw to a log)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from roost_agent.software import REBOOT_EXIT_CODE
from roost_shared.bus import Bus
from roost_shared.catalog import SoftwareInstall, SoftwareRollback
from roost_shared.releases import read_archive
from roost_sim.fleet import Fleet, FleetSupervisor
from roost_sim.processes import ManagedProcess
from tests.support.agents import AgentUnderTest, Events, apply, listen, send
from tests.support.releases import signed
from tests.support.waiting import eventually

REPORTED = "agent.software.reported"
ANNOUNCED = "agent.host.announced"
APPLIED = "agent.config.applied"


# A release server and releases ------------------------------------------------------------------


@dataclass
class Served:
    """Archives served over HTTP on 127.0.0.1 (as the software service serves them)."""

    port: int
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return f"{self.base}/{name}"


@pytest.fixture
def served() -> Iterator[Served]:
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Served(server.server_address[1], files)
    server.shutdown()
    server.server_close()


@pytest.fixture
def agents(agents, served):
    """Agents that download releases from ``served`` (their software service here)."""

    def start(profile: str = "worker", **env: str) -> AgentUnderTest:
        return agents(profile, **{"ROOST_SOFTWARE_URL": served.base, **env})

    return start


def hook(kind: str, log: Path, body: str = "") -> str:
    """A hook that appends what it saw (its environment and cwd) to ``log``, then ``body``."""
    seen = (
        f"{kind} $ROOST_RELEASE_ID $ROOST_RELEASE_VERSION $ROOST_PREVIOUS_VERSION "
        "$ROOST_HOSTNAME $(pwd) $ROOST_HOOK"
    )
    return f'#!/bin/sh\necho "{seen}" >> {log}\n{body}\n'


def build(
    tmp_path: Path,
    rid: str,
    version: str,
    log: Path,
    *,
    reboot: bool = False,
    payload: bytes = b"tool\n",
    install: str = "",
    rollback: str = "",
) -> bytes:
    """A release archive (signed by the test site's key) with install, activate and rollback
    hooks."""
    source = tmp_path / "src" / f"{rid}-{hashlib.sha256(payload + install.encode()).hexdigest()}"
    (source / "hooks").mkdir(parents=True)
    (source / "bin").mkdir()
    (source / "bin" / "tool").write_bytes(payload)
    for kind, body in (("install", install), ("activate", ""), ("rollback", rollback)):
        path = source / "hooks" / kind
        path.write_text(hook(kind, log, body))
        path.chmod(0o755)
    meta = {
        "id": rid,
        "version": version,
        "reboot_required": reboot,
        "hooks": {k: f"hooks/{k}" for k in ("install", "activate", "rollback")},
    }
    (source / "release.json").write_text(json.dumps(meta))
    return signed(source)


def install_of(
    served: Served, archive: bytes, *, sha: str | None = None, files: dict[str, str] | None = None
) -> SoftwareInstall:
    meta = read_archive(archive).metadata
    return SoftwareInstall(
        release_id=meta.id,
        version=meta.version,
        url=served.add(f"{meta.id}-{len(served.files)}.tar.gz", archive),
        archive_sha256=sha or hashlib.sha256(archive).hexdigest(),
        files=files if files is not None else meta.files,
        install_hook="hooks/install",
        activate_hook="hooks/activate",
        rollback_hook="hooks/rollback",
        reboot_required=meta.reboot_required,
    )


# Helpers ---------------------------------------------------------------------------------------


async def reported(
    events: Events, mac: str, state: str, after: int = 0, **match: Any
) -> dict[str, Any]:
    def fits(d: dict[str, Any]) -> bool:
        return d["state"] == state and all(d.get(k) == v for k, v in match.items())

    return (await events.wait_for(REPORTED, mac, fits, after=after, timeout=15))["data"]


def states(events: Events, mac: str, after: int) -> list[str]:
    return [e["data"]["state"] for e in events.got[after:] if e["type"] == REPORTED]


def lines(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def running(agent: AgentUnderTest) -> dict[str, Any]:
    return json.loads((agent.state_dir / "software" / "running.json").read_text())


async def started(stack, agents, **env: str) -> tuple[Bus, Events, AgentUnderTest]:
    bus = await stack.bus()
    events = await listen(bus)
    agent = agents(**env)
    await events.wait_for(ANNOUNCED, agent.mac)
    idle = await reported(events, agent.mac, "idle")
    assert (idle["running_version"], idle.get("running_release")) == ("1.0.0", None)
    assert idle["disk_free_mb"] > 0 and idle["hostname"] == agent.host.hostname
    return bus, events, agent


# Tests -----------------------------------------------------------------------------------------


async def test_install_reinstall_and_rollback(stack, agents, served, tmp_path):
    log = tmp_path / "hooks.log"
    bus, events, agent = await started(stack, agents)
    archive = build(tmp_path, "roost-1.1.0", "1.1.0", log)

    seen = len(events.got)
    command_id = await send(bus, agent.mac, install_of(served, archive))
    done = await reported(events, agent.mac, "installed", seen)
    assert states(events, agent.mac, seen) == [
        "downloading",
        "installing",
        "activating",
        "installed",
    ]
    assert (done.get("running_release"), done["running_version"]) == ("roost-1.1.0", "1.1.0")
    assert done["command"] == command_id and done.get("error") is None
    assert events.of(REPORTED, agent.mac)[-1]["correlationid"] == command_id
    release_dir = agent.state_dir / "software" / "releases" / "roost-1.1.0"
    host = agent.host.hostname
    assert lines(log) == [
        ["install", "roost-1.1.0", "1.1.0", "1.0.0", host, str(release_dir), "install"],
        ["activate", "roost-1.1.0", "1.1.0", "1.0.0", host, str(release_dir), "activate"],
    ]
    assert (release_dir / "bin" / "tool").read_bytes() == b"tool\n"
    assert os.access(release_dir / "hooks" / "install", os.X_OK)
    assert running(agent) == {
        "running_release": "roost-1.1.0",
        "running_version": "1.1.0",
        "history": [{"release": None, "version": "1.0.0"}],
    }
    assert not (agent.state_dir / "software" / "journal.json").exists()

    # The same version again: reported installed, nothing downloaded or run.
    seen = len(events.got)
    again_id = await send(bus, agent.mac, install_of(served, archive))
    again = await reported(events, agent.mac, "installed", seen, command=again_id)
    assert again["running_version"] == "1.1.0" and states(events, agent.mac, seen) == ["installed"]
    assert len(lines(log)) == 2

    # Only the running release can be rolled back.
    seen = len(events.got)
    await send(bus, agent.mac, SoftwareRollback(release_id="roost-0.9.0"))
    refused = await reported(events, agent.mac, "failed", seen)
    assert "not the running release" in refused["error"]
    assert refused["running_version"] == "1.1.0"

    seen = len(events.got)
    rollback_id = await send(bus, agent.mac, SoftwareRollback(release_id="roost-1.1.0"))
    back = await reported(events, agent.mac, "rolled-back", seen)
    assert states(events, agent.mac, seen) == ["rolling-back", "rolled-back"]
    assert back["command"] == rollback_id
    assert (back.get("running_release"), back["running_version"]) == (None, "1.0.0")
    assert lines(log)[-1][:4] == ["rollback", "roost-1.1.0", "1.1.0", "1.0.0"]
    assert running(agent)["history"] == []
    assert agent.metric("roost_agent_commands_total", type="software.install") == 2


async def test_tampered_archive_and_failing_install_hook(stack, agents, served, tmp_path):
    log = tmp_path / "hooks.log"
    bus, events, agent = await started(stack, agents)
    good = build(tmp_path, "roost-1.2.0", "1.2.0", log)
    tampered = build(tmp_path, "roost-1.2.0", "1.2.0", log, payload=b"evil\n")

    # Served bytes are not the archive the software service verified: refused, nothing run.
    bad = install_of(served, good)
    bad = bad.model_copy(update={"url": served.add("swapped.tar.gz", tampered)})
    await send(bus, agent.mac, bad)
    failed = await reported(events, agent.mac, "failed")
    assert "sha256" in failed["error"] and "nothing was run" in failed["error"]
    assert failed["running_version"] == "1.0.0"
    # Digest of the archive right, but its files not those of the signed metadata: refused.
    seen = len(events.got)
    await send(
        bus, agent.mac, install_of(served, tampered, files=read_archive(good).metadata.files)
    )
    mismatch = await reported(events, agent.mac, "failed", seen)
    assert "do not match" in mismatch["error"] and "bin/tool" in mismatch["error"]
    assert lines(log) == [], "no hook ran"

    # An install hook that fails: its rollback hook runs, the running version stays.
    failing = build(
        tmp_path,
        "roost-1.3.0",
        "1.3.0",
        log,
        install='echo "no space left on /opt" >&2; exit 3',
    )
    seen = len(events.got)
    await send(bus, agent.mac, install_of(served, failing))
    failed = await reported(events, agent.mac, "failed", seen)
    assert "install hook hooks/install exited with 3" in failed["error"]
    assert "no space left on /opt" in failed["error"]
    assert [line[0] for line in lines(log)] == ["install", "rollback"]
    assert (failed["running_version"], failed.get("running_release")) == ("1.0.0", None)
    assert states(events, agent.mac, seen) == ["downloading", "installing", "failed"]
    assert not (agent.state_dir / "software" / "journal.json").exists()


async def test_reboot_required_install_restarts_the_agent(stack, agents, served, tmp_path):
    log = tmp_path / "hooks.log"
    bus, events, agent = await started(stack, agents)
    archive = build(tmp_path, "roost-2.0.0", "2.0.0", log, reboot=True)

    await send(bus, agent.mac, install_of(served, archive))
    rebooting = await reported(events, agent.mac, "rebooting")
    assert rebooting["pending_reboot"] is True and rebooting["running_version"] == "1.0.0"
    await eventually(lambda: not agent.proc.running, what="the agent to exit for the reboot")
    assert agent.proc.returncode == REBOOT_EXIT_CODE
    assert [line[0] for line in lines(log)] == ["install"], "activate waits for the reboot"
    journal = json.loads((agent.state_dir / "software" / "journal.json").read_text())
    assert journal["phase"] == "rebooting" and journal["boot_id"] == rebooting["boot_id"]

    # Started again (what the fleet supervisor does): a new boot, activated, installed.
    seen = len(events.got)
    agent.start()
    installed = await reported(events, agent.mac, "installed", seen)
    assert installed["boot_id"] != rebooting["boot_id"]
    assert (installed.get("running_release"), installed["running_version"]) == (
        "roost-2.0.0",
        "2.0.0",
    )
    assert installed["pending_reboot"] is False
    assert installed["command"] == rebooting["command"]
    assert [line[0] for line in lines(log)] == ["install", "activate"]
    announced = await events.wait_for(ANNOUNCED, agent.mac, after=seen)
    assert announced["data"]["boot_id"] == installed["boot_id"]
    assert not (agent.state_dir / "software" / "journal.json").exists()


async def test_agent_killed_during_a_slow_install_hook(stack, agents, served, tmp_path):
    log = tmp_path / "hooks.log"
    pid_file = tmp_path / "hook.pid"
    bus, events, agent = await started(stack, agents)
    slow = build(
        tmp_path, "roost-3.0.0", "3.0.0", log, install=f"echo $$ > {pid_file}; exec sleep 60"
    )
    other = build(tmp_path, "roost-3.1.0", "3.1.0", log)

    await send(bus, agent.mac, install_of(served, slow))
    await reported(events, agent.mac, "installing")
    await eventually(lambda: pid_file.exists() and pid_file.read_text().strip(), what="hook")
    hook_pid = int(pid_file.read_text())

    # Meanwhile: other commands are handled; a second install is refused.
    seen = len(events.got)
    second = await send(bus, agent.mac, install_of(served, other))
    busy = await reported(events, agent.mac, "failed", seen, command=second)
    assert busy["error"] == "another software action is in progress"
    await apply(bus, agent.mac, 1)
    assert (await events.wait_for(APPLIED, agent.mac))["data"]["ok"] is True

    agent.proc.kill()
    await eventually(lambda: not _alive(hook_pid), what="the hook to die with the agent")

    seen = len(events.got)
    agent.start()
    failed = await reported(events, agent.mac, "failed", seen)
    assert failed["error"] == "interrupted by an agent restart during installing; rolled back"
    assert failed["release_id"] == "roost-3.0.0"
    assert (failed["running_version"], failed.get("running_release")) == ("1.0.0", None)
    assert [line[0] for line in lines(log)] == ["install", "rollback"]
    assert not (agent.state_dir / "software" / "journal.json").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return stat[0] != "Z"


def test_fleet_restarts_a_rebooting_agent_outside_the_crash_loop_guard(tmp_path, monkeypatch):
    supervisor = FleetSupervisor(Fleet(tmp_path), "amqp://127.0.0.1/", tmp_path / "logs")
    monkeypatch.setattr(supervisor, "_ensure_bmcs", lambda: None)  # no BMCs in this test
    monkeypatch.setattr(supervisor, "_apply_power", lambda: [])
    code = f"raise SystemExit({REBOOT_EXIT_CODE})"
    proc = ManagedProcess("agent:h", [sys.executable, "-c", code])
    supervisor.procs["h"] = proc.start()
    try:
        for _ in range(7):  # more than the guard's RESTARTS_PER_MINUTE
            assert proc.proc is not None
            proc.proc.wait(10)
            assert supervisor.poll() == ["agent:h"]
        assert "h" not in supervisor.given_up and not supervisor._restarts.get("h")
        # Any other exit counts.
        proc.proc.wait(10)
        proc.argv = [sys.executable, "-c", "raise SystemExit(1)"]
        supervisor.poll()
        proc.proc.wait(10)
        supervisor.poll()
        assert len(supervisor._restarts["h"]) == 1
    finally:
        proc.kill()
        supervisor.bmcs.client.close()
