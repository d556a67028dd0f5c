"""Real parts for every test: RabbitMQ (a vhost per test, so runs and tests never see each
other's queues), the embedded SecantusDB server, API tokens, and service processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from roost_shared import brokerusers
from roost_shared.bus import Bus
from roost_shared.hostkeys import ensure_secret
from roost_shared.metrics import Metrics
from roost_shared.producer import ProducerBus
from roost_shared.settings import RoostSettings
from roost_shared.signing import Signer
from roost_sim.credentials import ensure_command_keys
from roost_sim.ports import free_udp_port
from tests.support import nft
from tests.support.stack import (
    PASSWORDS_ENV,
    SECRET_ENV,
    SITE_ENV,
    ServiceUnderTest,
    Tokens,
    Vhost,
    start_database,
)


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_nft_tables() -> None:
    """Packet-dropping tables left by a killed run would make this one lose packets."""
    if nft.available():
        for name in nft.clean_leftovers():
            print(f"removed leftover nftables table inet {name}")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("roost")


@pytest.fixture(scope="session", autouse=True)
def command_keys(workdir: Path) -> Iterator[Path]:
    """The site's command signing keys, as make run makes them: every service process a test
    starts signs with its own (ROOST_COMMAND_KEYS_DIR), every agent trusts them all
    (ROOST_COMMAND_KEYS_FILE); children inherit both from this process's environment."""
    keys_dir, trust_file = ensure_command_keys(workdir)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ROOST_COMMAND_KEYS_DIR", str(keys_dir))
        env.setenv("ROOST_COMMAND_KEYS_FILE", str(trust_file))
        yield keys_dir


@pytest.fixture(scope="session", autouse=True)
def broker_users(workdir: Path) -> Iterator[Path]:
    """The site's broker users, as make run makes them: every service process connects as its
    own ``roost-<service>`` and agents as ``roost-agent`` (ROOST_BROKER_PASSWORDS_DIR, inherited
    by children); each test vhost grants them their permissions (``Vhost.create``)."""
    directory = workdir / "broker-users"
    # Its own user names (roost-<service>.<site>): a make run on this broker keeps its users.
    site = f"t{uuid.uuid4().hex[:8]}"
    brokerusers.ensure(directory, [], site=site)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(PASSWORDS_ENV, str(directory))
        env.setenv(SITE_ENV, site)
        yield directory
    brokerusers.remove(site)


def site_signers() -> dict[str, Signer]:
    """Every issuer's command signing key: a test stands in for any issuing service."""
    keys_dir = Path(os.environ["ROOST_COMMAND_KEYS_DIR"])
    return {path.stem: Signer.from_file(path) for path in sorted(keys_dir.glob("*.pem"))}


@pytest.fixture(scope="session", autouse=True)
def heartbeat_secret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The site secret of every test's host and service services, as ``make run`` has one: in
    the environment, so every agent a test's fleet starts is given its own key from it."""
    path = tmp_path_factory.mktemp("site") / "heartbeat-secret.key"
    ensure_secret(path)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(SECRET_ENV, str(path))
        yield path


@pytest.fixture(scope="session")
def mongo_url(workdir: Path) -> Iterator[str]:
    proc, url = start_database(workdir)
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def tokens(workdir: Path) -> Tokens:
    return Tokens.create(workdir)


@dataclass
class Stack:
    """One test's slice of the real system: its own vhost and databases."""

    vhost: Vhost
    mongo_url: str
    tokens: Tokens
    workdir: Path
    services: list[ServiceUnderTest] = field(default_factory=list)
    buses: list[Bus] = field(default_factory=list)

    @property
    def amqp_url(self) -> str:
        return self.vhost.url

    def env(self) -> dict[str, str]:
        return {
            "ROOST_AMQP_URL": self.amqp_url,
            "ROOST_MONGO_URL": self.mongo_url,
            "ROOST_AUTH_TOKENS_FILE": str(self.tokens.path),
            SECRET_ENV: os.environ[SECRET_ENV],
            # Short back-offs keep failure-path tests quick; production defaults are longer.
            "ROOST_RETRY_DELAYS_MS": "[100, 200]",
            "ROOST_WEBHOOK_RETRY_CAP_S": "0.5",
            # The tests' webhook receivers listen on 127.0.0.1, which webhooks may not reach
            # unless allow-listed (tests/security/test_webhook_ssrf.py starts without it).
            "ROOST_WEBHOOK_ALLOW_NETS": '["127.0.0.0/8"]',
            # Refused requests are audited as per-address counts per window: a short one.
            "ROOST_AUDIT_REFUSALS_WINDOW_S": "1",
        }

    def start(
        self, name: str, *, database: str | None = None, replica: int | None = None, **env: str
    ) -> ServiceUnderTest:
        """Start service ``name`` as a process with a fresh database (or ``database``, shared
        with the other ``replica`` numbers of it, each logging to its own file)."""
        db = database or f"roost_{name}_{uuid.uuid4().hex[:8]}"
        log_name = db if replica is None else f"{db}-{replica}"
        if name == "host":
            # Its own heartbeat port: never the all-in-one 8199 a `make run` may hold.
            env.setdefault("ROOST_HEARTBEAT_PORT", str(free_udp_port()))
        if name == "service":
            env.setdefault("ROOST_SM_LINK_PORT", str(free_udp_port()))  # not the all-in-one 8198
        svc = ServiceUnderTest(
            name,
            {
                **self.env(),
                "ROOST_DATABASE": db,
                "ROOST_STATE_DIR": str(self.workdir / "state" / db),
                **env,
            },
            self.workdir / "logs" / f"{log_name}.log",
        )
        self.services.append(svc)
        return svc.start()

    async def bus(self) -> Bus:
        """A producer's bus connection: the test stands in for every sender, each message
        published as its owner's broker user (listening as the vhost's admin)."""
        b = ProducerBus(
            RoostSettings(service="test-producer", amqp_url=self.amqp_url),
            Metrics("test"),
            signers=site_signers(),
        )
        await b.connect(deadline_s=10)
        self.buses.append(b)
        return b


@pytest.fixture
async def stack(mongo_url: str, tokens: Tokens, workdir: Path) -> AsyncIterator[Stack]:
    s = Stack(Vhost.create(), mongo_url, tokens, workdir)
    yield s
    for b in s.buses:
        await b.close()
    for svc in s.services:
        svc.stop()
    s.vhost.delete()
