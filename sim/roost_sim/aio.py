"""``make run``: an all-in-one Roost on this machine.

Starts the embedded database (unless ``ROOST_MONGO_URL`` names one), makes sure RabbitMQ answers
at ``ROOST_AMQP_URL`` (starting a local ``rabbitmq-server`` if one is installed), starts every
Roost service that exists, then a simulated fleet (``ROOST_SIM_HOSTS`` hosts, default 3:
controller-0, worker-0, worker-1; 0 for none; see ``roost_sim.fleet``), prints where everything
listens and stops it all on Ctrl-C.

One run per state directory (``runlock``): a second says so in one line and exits with 1. The
services, the database and the fleet die with this process, even when it is SIGKILLed
(``roost_sim.processes``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn
from urllib.parse import unquote, urlparse

import httpx

from roost_shared import brokerusers
from roost_shared.auth import (
    PEER_SERVICES,
    Role,
    issue_token,
    read_tokens_file,
    save_tokens_file,
)
from roost_shared.files import write_atomic
from roost_shared.hostkeys import ensure_secret
from roost_shared.publishers import user_of
from roost_sim import runlock
from roost_sim.credentials import (
    credentials_path,
    ensure_command_keys,
    ensure_credentials,
    ensure_release_keys,
)
from roost_sim.embedded_db import embedded_db, url_for
from roost_sim.fleet import AGENT_BROKER_DIR, Fleet, FleetSupervisor, SimHost
from roost_sim.ports import DB_PORT, SERVICE_PORTS, is_listening
from roost_sim.processes import (
    ManagedProcess,
    ReadyTimeout,
    http_ready,
    python_module,
    stop_together,
)

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
RESTARTS_PER_MINUTE = 5


def fail(message: str) -> NoReturn:
    print(f"roost: {message}", file=sys.stderr)
    raise SystemExit(1)


def ensure_broker(url: str) -> None:
    """RabbitMQ must answer; start the local one if it is installed but down."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 5672
    if is_listening(port, host):
        return
    local = host in ("127.0.0.1", "localhost", "::1")
    if not local or shutil.which("rabbitmq-server") is None:
        fail(
            f"no RabbitMQ at {host}:{port}. Install it (Debian: apt-get install rabbitmq-server), "
            "run one with 'docker compose up -d rabbitmq', or set ROOST_AMQP_URL."
        )
    print("starting rabbitmq-server ...", flush=True)
    subprocess.run(["rabbitmq-server", "-detached"], check=False)
    deadline = time.monotonic() + 90
    while not is_listening(port, host):
        if time.monotonic() > deadline:
            fail("rabbitmq-server did not start within 90 s; see /var/log/rabbitmq/")
        time.sleep(0.5)


def ensure_broker_users(state: Path, amqp_url: str) -> Path:
    """The site's broker users (one per service, one for agents), made once with their
    passwords in ``state/broker-users`` (or ``ROOST_BROKER_PASSWORDS_DIR``) and (re)loaded into
    the broker on every run; the agents' password alone is copied to ``state/agent-broker`` for
    the simulated agents."""
    # A site whose users exist already (ROOST_BROKER_PASSWORDS_DIR: a test session, an operator)
    # keeps their passwords: loading new ones would lock out every process still using them.
    directory = Path(os.environ.get("ROOST_BROKER_PASSWORDS_DIR") or state / "broker-users")
    if shutil.which(os.environ.get("ROOST_RABBITMQCTL", "rabbitmqctl").split()[0]) is None:
        fail(
            "rabbitmqctl is needed to create Roost's broker users (each service has its own); "
            "set ROOST_RABBITMQCTL to reach the broker's (e.g. 'docker compose exec rabbitmq "
            "rabbitmqctl')."
        )
    path = urlparse(amqp_url).path
    vhost = unquote(path[1:]) if len(path) > 1 else "/"
    site = os.environ.get("ROOST_BROKER_SITE", "")
    try:
        passwords = brokerusers.ensure(directory, [vhost], site=site)
    except RuntimeError as exc:
        fail(str(exc))
    agent_user = user_of("agent", site)
    write_atomic(state / AGENT_BROKER_DIR / agent_user, passwords[agent_user].encode(), mode=0o600)
    return directory


def provision_agents(hosts: list[SimHost], admin_url: str) -> dict[str, str]:
    """Each new simulated host gets its own broker user ``agent-<mac hex>`` (new password each
    start), as enrolment gives a real node: its agent can publish only its own host's reports.
    A host that cannot be provisioned runs with the agents' shared user, and says so."""
    from roost_agent.credentials import add_many

    try:
        by_mac = asyncio.run(add_many([h.mac for h in hosts], admin_url))
    except Exception as exc:
        print(
            f"roost: could not give {', '.join(h.hostname for h in hosts)} their own broker "
            f"users ({exc}); they use the agents' shared user",
            flush=True,
        )
        return {}
    return {h.hostname: by_mac[h.mac] for h in hosts}


def installed_services() -> list[str]:
    """The services whose package is installed, in port order."""
    return [n for n in SERVICE_PORTS if importlib.util.find_spec(f"roost_{n}") is not None]


def service_env(
    name: str, installed: list[str], peer_tokens: dict[str, str] | None = None
) -> dict[str, str]:
    """What one service needs to know about the others, each calling them with its own peer
    token (role peer, never the admin token): config asks the host service whether a host is
    unlocked before deleting it; the service service asks config whether a group's member
    hosts exist; the software service reads hosts, alarms and personalities and locks, unlocks
    and swacts for its strategies (audited under its peer token's name)."""
    peer = (peer_tokens or {}).get(name)
    if name == "config" and "host" in installed:
        env = {"ROOST_HOST_SERVICE_URL": f"http://127.0.0.1:{SERVICE_PORTS['host']}"}
        if peer is not None:
            env["ROOST_HOST_SERVICE_TOKEN"] = peer
        return env
    if name == "dashboard":  # the APIs it calls (the operator's token comes from the browser)
        return {
            f"ROOST_{other.upper()}_URL": f"http://127.0.0.1:{SERVICE_PORTS[other]}"
            for other in ("fault", "config", "host", "service", "software")
            if other in installed
        }
    if name == "software":
        env = {
            f"ROOST_{other.upper()}_URL": f"http://127.0.0.1:{SERVICE_PORTS[other]}"
            for other in ("host", "service", "fault", "config")
            if other in installed
        }
        if peer is not None:
            env["ROOST_PEER_TOKEN"] = peer
        return env
    if name == "service" and "config" in installed:
        env = {"ROOST_CONFIG_SERVICE_URL": f"http://127.0.0.1:{SERVICE_PORTS['config']}"}
        if peer is not None:
            env["ROOST_CONFIG_SERVICE_TOKEN"] = peer
        return env
    return {}


def issue_peer_tokens(tokens_file: Path) -> dict[str, str]:
    """Each calling service's own peer token (role peer, new each run, never on disk in
    plain): never rate-limited, allowed reads and the few actions peers need, audited as
    ``peer-<service>``. The admin token of earlier runs' ``peers`` record is removed."""
    records = read_tokens_file(tokens_file) if tokens_file.exists() else []
    if any(r.name == "peers" for r in records):
        save_tokens_file(tokens_file, [r for r in records if r.name != "peers"])
    return {s: issue_token(tokens_file, f"peer-{s}", Role.peer) for s in PEER_SERVICES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="roost-aio", description=__doc__)
    parser.add_argument(
        "--state-dir", type=Path, default=Path(os.environ.get("ROOST_STATE_DIR", "state"))
    )
    args = parser.parse_args(argv)
    state: Path = args.state_dir.resolve()
    try:
        lock = runlock.acquire(state, f"http://127.0.0.1:{SERVICE_PORTS['dashboard']}")
    except runlock.AlreadyRunning as exc:
        fail(str(exc))
    logs = state / "logs"
    creds, tokens_file = ensure_credentials(state)
    peer_tokens = issue_peer_tokens(tokens_file)
    ensure_release_keys(state)  # roost software pack --key state/release-signing.pem
    command_keys, _ = ensure_command_keys(state)  # agents trust them (Fleet.agent_env)
    # The site secret every host's heartbeat and service-link key is derived from: the host and
    # service services read it, each simulated agent gets only its own key (roost_sim.fleet).
    secret_file = state / "heartbeat-secret.key"
    ensure_secret(secret_file)

    amqp_url = os.environ.get("ROOST_AMQP_URL", DEFAULT_AMQP)
    ensure_broker(amqp_url)
    # Each service connects as its own broker user, agents as the agent user (Fleet.agent_env).
    broker_users = ensure_broker_users(state, amqp_url)

    children: list[ManagedProcess] = []
    mongo_url = os.environ.get("ROOST_MONGO_URL")
    if not mongo_url:
        if is_listening(DB_PORT):
            fail(f"port {DB_PORT} (embedded database) is in use: is Roost already running?")
        db = embedded_db(DB_PORT, state / "db", logs / "database.log").start()
        children.append(db)
        db.wait_ready(60)
        mongo_url = url_for(DB_PORT)

    env = {
        "ROOST_AMQP_URL": amqp_url,
        "ROOST_MONGO_URL": mongo_url,
        "ROOST_AUTH_TOKENS_FILE": str(tokens_file),
        "ROOST_STATE_DIR": str(state),
        "ROOST_COMMAND_KEYS_DIR": str(command_keys),
        "ROOST_BROKER_PASSWORDS_DIR": str(broker_users),
        "ROOST_HEARTBEAT_SECRET_FILE": str(secret_file),
    }
    services: list[ManagedProcess] = []
    installed = installed_services()
    for name in installed:
        port = SERVICE_PORTS[name]
        if is_listening(port):
            _stop_all(children, services)
            fail(f"port {port} ({name}) is in use: is Roost already running?")
        proc = ManagedProcess(
            name,
            python_module(f"roost_{name}.app"),
            env={
                **env,
                **service_env(name, installed, peer_tokens),
                "ROOST_PORT": str(port),
            },
            log_path=logs / f"{name}.log",
            ready=http_ready(f"http://127.0.0.1:{port}/readyz"),
        ).start()
        services.append(proc)
    try:
        for proc in services:
            proc.wait_ready(60)
    except ReadyTimeout as exc:
        _stop_all(children, services)
        fail(str(exc))

    fleet: FleetSupervisor | None = None
    sim_hosts = int(os.environ.get("ROOST_SIM_HOSTS", "3") or 0)
    if sim_hosts > 0:
        fleet = FleetSupervisor(
            Fleet(state, site_secret_file=secret_file),
            amqp_url,
            logs,
            provision=lambda hosts: provision_agents(hosts, amqp_url),
        )
        first_run = not fleet.fleet.hosts()
        seeded = fleet.fleet.seed(sim_hosts)
        if first_run and "config" in {p.name for p in services}:
            register_hosts(fleet.fleet, seeded, creds.admin_token)
        try:
            fleet.poll()  # starts the BMCs, then the agents
        except ReadyTimeout as exc:
            _stop_all(children, services)
            fail(f"{exc}\n(BMC ports: is Roost already running?)")
        (fleet.fleet.dir / "supervisor.pid").write_text(str(os.getpid()))

    _print_banner(services, mongo_url, amqp_url, state, fleet)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    restarts: dict[str, list[float]] = {p.name: [] for p in services + children}
    while not stopping:
        for proc in services + children:
            if not proc.running and not stopping:
                recent = [t for t in restarts[proc.name] if t > time.monotonic() - 60]
                if len(recent) >= RESTARTS_PER_MINUTE:
                    print(
                        f"roost: {proc.name} keeps exiting; stopping. Log: {proc.log_path}",
                        file=sys.stderr,
                    )
                    stopping = True
                    break
                print(f"roost: {proc.name} exited ({proc.returncode}); restarting", flush=True)
                restarts[proc.name] = [*recent, time.monotonic()]
                proc.start()
        if fleet is not None and not stopping:
            fleet.poll()  # restarts dead agents, starts hosts added with "fleet add-host"
        time.sleep(0.5)
    print("\nstopping Roost ...", flush=True)
    if fleet is not None:
        fleet.stop()
        (fleet.fleet.dir / "supervisor.pid").unlink(missing_ok=True)
    _stop_all(children, services)
    lock.close()
    print("stopped.")
    return 0


def register_hosts(fleet: Fleet, hosts: list[SimHost], admin_token: str) -> None:
    """Add the seed hosts, with their BMCs (127.0.0.1, port ``16230 + index``, the fleet's
    user and password), to the inventory, so a first ``make run`` shows a configured site whose
    BMCs the host service can reach; hosts added later (``roost sim add-host``) arrive unknown
    and show up as discovered.
    """
    url = f"http://127.0.0.1:{SERVICE_PORTS['config']}/v1/hosts"
    headers = {"Authorization": f"Bearer {admin_token}"}
    for host in hosts:
        body = fleet.inventory_record(host)
        try:
            response = httpx.post(url, json=body, headers=headers, timeout=10)
        except httpx.HTTPError as exc:
            print(f"roost: could not add {host.hostname} to the inventory: {exc}", file=sys.stderr)
            continue
        if response.status_code not in (201, 409):  # 409: already there from an earlier run
            print(
                f"roost: could not add {host.hostname}: {response.status_code} "
                f"{response.text[:200]}",
                file=sys.stderr,
            )


def _stop_all(infrastructure: list[ManagedProcess], services: list[ManagedProcess]) -> None:
    """Stop the services together (they flush their outboxes), then the database they use."""
    stop_together(services)
    stop_together(infrastructure)


def _print_banner(
    services: list[ManagedProcess],
    mongo_url: str,
    amqp_url: str,
    state: Path,
    fleet: FleetSupervisor | None = None,
) -> None:
    redacted_amqp = (
        urlparse(amqp_url)
        ._replace(netloc=f"{urlparse(amqp_url).hostname}:{urlparse(amqp_url).port or 5672}")
        .geturl()
    )
    print("\nRoost is running (all-in-one):")
    for proc in services:
        port = SERVICE_PORTS[proc.name]
        if proc.name == "dashboard":
            print(
                f"  dashboard  http://127.0.0.1:{port}   (web console: log in with a token from "
                f"{credentials_path()})"
            )
            continue
        print(f"  {proc.name:<10} http://127.0.0.1:{port}   (docs: http://127.0.0.1:{port}/docs)")
    if fleet is not None:
        hosts = ", ".join(h.hostname for h in fleet.fleet.hosts())
        print(f"  fleet      {hosts}   (simulated hosts; more: python -m roost_sim.fleet add-host)")
        ports = [fleet.fleet.bmc_port(h) for h in fleet.fleet.hosts()]
        user = fleet.fleet.bmc_credentials()[0]
        print(
            f"  bmcs       127.0.0.1:{min(ports)}-{max(ports)}   (ipmitool -I lanplus -p PORT "
            f"-U {user} -P <in {fleet.fleet.dir / 'bmc.json'}>; control {fleet.bmcs.url}/bmcs)"
        )
    print(f"  database   {mongo_url}")
    print(
        f"  broker     {redacted_amqp}   (each service as its own user: "
        f"{os.environ.get('ROOST_BROKER_PASSWORDS_DIR') or state / 'broker-users'})"
    )
    print(f"  state      {state}   (logs in {state / 'logs'})")
    print(f"  tokens     {credentials_path()}   (the roost CLI reads them)")
    if (state / "release-signing.pem").exists():
        print(
            f"  releases   signing key {state / 'release-signing.pem'}   (roost software pack DIR "
            "-o R.tar.gz --key ...; the service accepts it)"
        )
    print("Try: .venv/bin/roost alarm-list    Stop: Ctrl-C\n", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
