"""A Roost service started as the standby of a service group (``ROOST_ROLE=standby``, as the
agent starts the control plane's standby copies) serves nothing, and stops cleanly on SIGTERM
(as active, or without a role, it serves: every other test starts services that way)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from roost_sim.ports import free_port


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_a_standby_service_does_not_serve_and_stops_on_sigterm(tmp_path: Path):
    port = free_port()
    env = {
        **os.environ,
        "ROOST_ROLE": "standby",
        "ROOST_PORT": str(port),
        # Nothing is connected as standby: these would fail loudly if it tried.
        "ROOST_AMQP_URL": "amqp://nobody:nothing@127.0.0.1:1/",
        "ROOST_MONGO_URL": "mongodb://127.0.0.1:1/",
        "ROOST_STATE_DIR": str(tmp_path),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "roost_fault.app"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A process that never says "standby" must not hang the test: kill it at the deadline
    # (readline then returns "").
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    try:
        deadline = time.monotonic() + 30
        seen = []
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "standby" in line:
                break
        assert any("not serving" in line for line in seen), seen
        assert _refused(port), "a standby must not listen"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
