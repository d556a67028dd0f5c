"""Real parts for tests: an isolated RabbitMQ vhost, the embedded database, service processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from roost_shared import brokerusers
from roost_shared.auth import PEER_SERVICES, Role, new_token, write_tokens_file
from roost_shared.hostkeys import host_key, read_key
from roost_sim.embedded_db import embedded_db, url_for
from roost_sim.ports import free_port
from roost_sim.processes import ManagedProcess, http_ready, python_module

#: The site secret's file, set for the whole test session by ``tests/conftest.py``.
SECRET_ENV = "ROOST_HEARTBEAT_SECRET_FILE"
#: The site's broker passwords (one file per user) and its users' suffix, likewise.
PASSWORDS_ENV = "ROOST_BROKER_PASSWORDS_DIR"
SITE_ENV = "ROOST_BROKER_SITE"


def site_secret() -> bytes:
    """The test session's site secret (what the host and service services check with)."""
    return read_key(Path(os.environ[SECRET_ENV]))


def key_of(mac: str) -> bytes:
    """The host key an enrolled host with this MAC holds (its agent signs heartbeats with it)."""
    return host_key(site_secret(), mac)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@dataclass
class Vhost:
    """A RabbitMQ virtual host of the test session's own, so runs never see each other."""

    name: str

    @classmethod
    def create(cls) -> Vhost:
        name = f"roost-test-{uuid.uuid4().hex[:8]}"
        if shutil.which("rabbitmqctl") is None:
            return cls("/")
        passwords_dir = os.environ.get(PASSWORDS_ENV)
        if passwords_dir is None:
            rabbitmqctl("add_vhost", name)
            rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
            return cls(name)
        # One call: the vhost, the admin's permissions and every site user's.
        site = os.environ.get(SITE_ENV, "")
        brokerusers.add_vhost(name, Path(passwords_dir), site, admins=("guest",))
        return cls(name)

    @property
    def url(self) -> str:
        vhost = "" if self.name == "/" else self.name
        return f"amqp://guest:guest@127.0.0.1:5672/{vhost}"

    def delete(self) -> None:
        """Remove the vhost and its queues. A broker that is still coming back from a restart
        test can refuse for a moment: retry, and leave a warning rather than fail the test."""
        if self.name == "/":
            return
        for _ in range(5):
            try:
                rabbitmqctl("delete_vhost", self.name)
                return
            except subprocess.CalledProcessError as exc:
                last = exc
                time.sleep(1)  # a teardown retry, not a test wait
        warnings.warn(f"could not delete RabbitMQ vhost {self.name}: {last.stderr!r}", stacklevel=2)


@dataclass
class Tokens:
    """The site's tokens: admin, reader, and each calling service's own peer token
    (``peers["software"]``, named ``peer-software`` in the file, role peer), as ``make run``
    makes them."""

    admin: str
    reader: str
    path: Path
    peers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, directory: Path) -> Tokens:
        admin, reader = new_token(), new_token()
        peers = {s: new_token() for s in PEER_SERVICES}
        path = directory / "tokens.json"
        write_tokens_file(
            path,
            {
                "admin": (Role.admin, admin),
                "reader": (Role.reader, reader),
                **{f"peer-{s}": (Role.peer, t) for s, t in peers.items()},
            },
        )
        return cls(admin, reader, path, peers)


def start_database(directory: Path) -> tuple[ManagedProcess, str]:
    port = free_port()
    proc = embedded_db(port, directory / "db", directory / "db.log").start()
    proc.wait_ready(60)
    return proc, url_for(port)


@dataclass
class ServiceUnderTest:
    """A Roost service running as its own process on a free port."""

    name: str
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> ServiceUnderTest:
        self.proc = ManagedProcess(
            self.name,
            python_module(f"roost_{self.name}.app"),
            env={**self.env, "ROOST_PORT": str(self.port)},
            log_path=self.log_path,
            ready=http_ready(f"{self.url}/readyz"),
        ).start()
        self.proc.wait_ready(timeout_s)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        """SIGKILL, mid-whatever-it-is-doing."""
        if self.proc is not None:
            self.proc.kill()

    def client(self, token: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10.0)
