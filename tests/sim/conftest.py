"""Helpers for the BMC simulator tests: free UDP port blocks, ipmitool, a simulator process."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from roost_sim.ports import udp_port_block

USER = "admin"
PASSWORD = "s3cret-pass"


def ipmitool(
    port: int,
    *args: str,
    user: str = USER,
    password: str = PASSWORD,
    suite: int | None = None,
    timeout_s: int = 1,
    retries: int = 1,
) -> subprocess.CompletedProcess[str]:
    """Run ``ipmitool -I lanplus`` against 127.0.0.1:port with short timeouts (-N 1 -R 1)."""
    argv = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port)]
    argv += ["-U", user, "-P", password, "-N", str(timeout_s), "-R", str(retries)]
    if suite is not None:
        argv += ["-C", str(suite)]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )


@pytest.fixture(scope="session", autouse=True)
def _ipmitool_installed() -> None:
    if shutil.which("ipmitool") is None:
        script = Path(__file__).parents[2] / "deploy" / "scripts" / "ensure-test-tools.sh"
        subprocess.run(["bash", str(script)], check=True, timeout=600)


@dataclass
class SimProcess:
    """``python -m roost_sim.bmc serve`` in a child process, driven over its control channel."""

    proc: subprocess.Popen[str]
    first_port: int
    count: int
    control: httpx.Client

    @property
    def ports(self) -> list[int]:
        return list(range(self.first_port, self.first_port + self.count))

    def post(self, path: str, body: dict[str, object]) -> object:
        r = self.control.post(path, json=body)
        r.raise_for_status()
        return r.json()

    def get(self, path: str) -> object:
        r = self.control.get(path)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        self.control.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_sim(count: int, *extra: str, log_path: Path, ready_timeout_s: float = 30) -> SimProcess:
    """Start a simulator with ``count`` BMCs on a free port block; wait for its ready line."""
    first = udp_port_block(count)
    argv = [sys.executable, "-m", "roost_sim.bmc", "serve", "--count", str(count)]
    argv += ["--first-port", str(first), "--user", USER, "--password", PASSWORD]
    argv += ["--control-port", "0", *extra]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout_s
    out = b""
    while b"\n" not in out:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"BMC simulator did not start; see {log_path}: {out!r}")
        if select.select([proc.stdout], [], [], remaining)[0]:
            out += os.read(proc.stdout.fileno(), 4096)
    ready = json.loads(out.splitlines()[0])
    return SimProcess(proc, first, count, httpx.Client(base_url=ready["control"], timeout=5))
