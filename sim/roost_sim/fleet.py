"""A simulated fleet: every simulated host runs the real agent, pointed at a hardware profile.

A host is a row in ``<state>/fleet/hosts.json`` (the registry): index, hostname, profile. From
the index come its management MAC (locally administered ``02:00:00:HH:LL:00``; port ``p`` of
the profile gets ``...:0p``), its management address (``127.1.x.y``: all of 127/8 reaches this
machine, so every simulated host has an address of its own) and its state directory
``<state>/fleet/<hostname>/`` (the agent's applied config, and ``profile.json``, the template
with the host's MACs filled in).

* ``make run`` (``roost_sim.aio``) seeds the registry with controller-0, worker-0 and worker-1
  (``ROOST_SIM_HOSTS``, default 3; 0 = no fleet), runs one agent process per host, restarts
  the ones that die and starts hosts added while it runs.
* Every host's agent gets its own heartbeat and service-link key (:mod:`roost_shared.hostkeys`),
  derived from the site secret (``ROOST_HEARTBEAT_SECRET_FILE``, default
  ``<state>/fleet/heartbeat-secret.key``, made once, mode 0600) and written to
  ``<host state>/heartbeat.key``: what enrolment gives a real node. The agent never sees the
  site secret.
* Every host has a simulated BMC (:mod:`roost_sim.bmc`) on 127.0.0.1, UDP port
  ``16230 + index``, user ``admin`` and the password in ``<state>/fleet/bmc.json`` (made once,
  mode 0600). One ``python -m roost_sim.bmc serve`` child serves them all (:class:`FleetBmcs`).
  Their power drives the hosts: power-off kills the host's agent (the power is cut) and keeps
  it down, power-on starts it, cycle and reset restart it.
* ``python -m roost_sim.fleet add-host [--hostname H] [--profile worker]`` registers one more
  host; a running ``make run`` starts its agent within a second. ``roost sim add-host`` should
  call :func:`add_host` (or run this command).
* ``python -m roost_sim.fleet run`` runs the registered fleet without the services;
  ``python -m roost_sim.fleet in-process N`` runs N agents in one process (see
  :func:`run_in_process`) and prints its memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from roost_agent.software import REBOOT_EXIT_CODE
from roost_shared.hostkeys import HOST_KEY_FILE, ensure_secret, host_key, install_key
from roost_sim.bmc import CONTROL_PORT as BMC_CONTROL_PORT
from roost_sim.bmc import FIRST_PORT as BMC_FIRST_PORT
from roost_sim.credentials import COMMAND_TRUST_FILE, RELEASE_PUBLIC_KEYS
from roost_sim.ports import SERVICE_PORTS
from roost_sim.processes import ManagedProcess, ReadyTimeout, http_ready, python_module

PROFILES_DIR = Path(__file__).parent / "profiles"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_HOSTS = ("controller", "worker", "worker")
RESTARTS_PER_MINUTE = 5
BMC_USER = "admin"


def profiles() -> list[str]:
    """The profile names shipped with the simulator."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


def host_mac(index: int, port: int = 0) -> str:
    """Locally administered, unicast, unique per (host, port): ``02:00:00:HH:LL:PP``."""
    if not 0 <= index < 1 << 16 or not 0 <= port < 256:
        raise ValueError("host index must be below 65536 and port below 256")
    return f"02:00:00:{index >> 8:02x}:{index & 0xFF:02x}:{port:02x}"


def host_ip(index: int) -> str:
    return f"127.1.{index // 250}.{index % 250 + 1}"


def render_profile(profile: str, index: int) -> dict[str, Any]:
    """The profile template with this host's port MACs (port 0 is the management port)."""
    document = json.loads((PROFILES_DIR / f"{profile}.json").read_text())
    for port, entry in enumerate(document.get("ports", [])):
        entry["mac"] = host_mac(index, port)
    return document


#: Under the state directory: the agents' broker password alone (roost_sim.aio).
AGENT_BROKER_DIR = "agent-broker"


@dataclass
class SimHost:
    index: int
    hostname: str
    profile: str

    @property
    def mac(self) -> str:
        return host_mac(self.index)

    @property
    def ip(self) -> str:
        return host_ip(self.index)


class Fleet:
    """The registry of simulated hosts under ``<state>/fleet``.

    Every agent is provisioned as a node is at enrolment: the site's release signing keys
    (``<state>/release-keys.pub``, which ``make run`` makes with its signing key) and the
    software service it downloads releases from (``make run``'s, 127.0.0.1:8105); without
    them an agent installs no release. A test's own service overrides both in ``extra_env``."""

    def __init__(
        self,
        state_dir: Path,
        bmc_first_port: int = BMC_FIRST_PORT,
        site_secret_file: Path | None = None,
    ) -> None:
        """``site_secret_file``: the secret the host and service services check heartbeats and
        hellos with; default ``ROOST_HEARTBEAT_SECRET_FILE``, else one of the fleet's own."""
        self.dir = state_dir / "fleet"
        self.registry = self.dir / "hosts.json"
        self.bmc_first_port = bmc_first_port
        self.release_keys = state_dir / RELEASE_PUBLIC_KEYS
        self.software_url = f"http://127.0.0.1:{SERVICE_PORTS['software']}"
        configured = os.environ.get("ROOST_HEARTBEAT_SECRET_FILE")
        self.site_secret_file = site_secret_file or (
            Path(configured) if configured else self.dir / "heartbeat-secret.key"
        )

    def provision_key(self, host: SimHost) -> Path:
        """Write the host's own key into its state directory (what enrolment does for a real
        node); rewritten when the site secret changed."""
        key = host_key(ensure_secret(self.site_secret_file), host.mac)
        return install_key(self.host_dir(host) / HOST_KEY_FILE, key)

    def bmc_port(self, host: SimHost) -> int:
        """The UDP port of the host's BMC on 127.0.0.1."""
        return self.bmc_first_port + host.index

    def inventory_record(self, host: SimHost) -> dict[str, str | int]:
        """The config service's ``POST /v1/hosts`` body for ``host``, with its BMC (127.0.0.1,
        its port, the fleet's user and password)."""
        user, password = self.bmc_credentials()
        return {
            "hostname": host.hostname,
            "personality": host.profile,
            "mgmt_mac": host.mac,
            "mgmt_ip": host.ip,
            "bmc_type": "ipmi",
            "bmc_address": "127.0.0.1",
            "bmc_port": self.bmc_port(host),
            "bmc_username": user,
            "bmc_password": password,
        }

    def bmc_credentials(self) -> tuple[str, str]:
        """``(user, password)`` of every BMC of the fleet, from ``<state>/fleet/bmc.json``
        (made at first use, mode 0600)."""
        path = self.dir / "bmc.json"
        with contextlib.suppress(FileNotFoundError):
            doc = json.loads(path.read_text())
            return doc["user"], doc["password"]
        self.dir.mkdir(parents=True, exist_ok=True)
        doc = {"user": BMC_USER, "password": secrets.token_urlsafe(12)}  # IPMI allows 20 bytes
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made by another process just now
            return self.bmc_credentials()
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
        return doc["user"], doc["password"]

    def hosts(self) -> list[SimHost]:
        try:
            rows = json.loads(self.registry.read_text())
        except FileNotFoundError:
            return []
        return [SimHost(**row) for row in rows]

    def _save(self, hosts: list[SimHost]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.registry.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(h) for h in hosts], indent=2))
        os.replace(tmp, self.registry)

    def add(self, profile: str = "worker", hostname: str | None = None) -> SimHost:
        """Register a host; its hostname defaults to ``<profile>-<n>`` (next free n)."""
        if profile not in profiles():
            raise ValueError(f"unknown profile {profile!r}; known: {', '.join(profiles())}")
        hosts = self.hosts()
        names = {h.hostname for h in hosts}
        if hostname is None:
            n = 0
            while f"{profile}-{n}" in names:
                n += 1
            hostname = f"{profile}-{n}"
        elif hostname in names:
            raise ValueError(f"host {hostname!r} already exists")
        index = max((h.index for h in hosts), default=-1) + 1
        host = SimHost(index, hostname, profile)
        self._save([*hosts, host])
        return host

    def seed(self, count: int) -> list[SimHost]:
        """An empty registry gets ``count`` hosts: controller-0, then workers."""
        if not self.hosts():
            for i in range(count):
                self.add(DEFAULT_HOSTS[i] if i < len(DEFAULT_HOSTS) else "worker")
        return self.hosts()

    def host_dir(self, host: SimHost) -> Path:
        return self.dir / host.hostname

    def agent_env(self, host: SimHost, amqp_url: str) -> dict[str, str]:
        """The environment of the host's agent; writes the host's rendered profile."""
        state = self.host_dir(host)
        state.mkdir(parents=True, exist_ok=True)
        profile = state / "profile.json"
        if not profile.exists():  # a test or a user may edit it to change the inventory
            profile.write_text(json.dumps(render_profile(host.profile, host.index), indent=2))
        self.provision_key(host)
        env = {
            "ROOST_AMQP_URL": amqp_url,
            "ROOST_MGMT_MAC": host.mac,
            "ROOST_HOSTNAME": host.hostname,
            "ROOST_MGMT_IP": host.ip,
            "ROOST_STATE_DIR": str(state),
            "ROOST_PROFILE": str(profile),
            "ROOST_RELEASE_KEYS_FILE": str(self.release_keys),
            "ROOST_SOFTWARE_URL": self.software_url,
            **bytecode_env(self.dir),
        }
        # The site's command keys, as a real node gets them at enrolment (made by make run).
        trust = self.dir.parent / COMMAND_TRUST_FILE
        if trust.exists():
            env["ROOST_COMMAND_KEYS_FILE"] = str(trust)
        # The agents' broker user's password, and no service's (made by make run).
        broker = self.dir.parent / AGENT_BROKER_DIR
        if broker.is_dir():
            env["ROOST_BROKER_PASSWORDS_DIR"] = str(broker)
        return env

    def process(
        self,
        host: SimHost,
        amqp_url: str,
        logs: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        return ManagedProcess(
            f"agent:{host.hostname}",
            python_module("roost_agent.app"),
            env={**self.agent_env(host, amqp_url), **(extra_env or {})},
            log_path=logs / f"agent-{host.hostname}.log",
        )


def bytecode_env(cache_root: Path) -> dict[str, str]:
    """How agent processes run Python: with cached bytecode and without docstrings.

    Without .pyc files (``PYTHONDONTWRITEBYTECODE`` is set on the development machines and uv
    does not compile a venv) every agent compiles its ~380 modules at start: ~0.3 s more CPU
    and ~2.5 MB more resident memory per agent; the cache goes beside the fleet, not into the
    venv. ``PYTHONOPTIMIZE=2`` (``-OO``) drops docstrings, another ~1.7 MB, and is what keeps an
    idle agent under its 40 MB budget (services/agent/README.md has the figures). The agent's
    image sets the same.
    """
    return {
        "PYTHONDONTWRITEBYTECODE": "",
        "PYTHONPYCACHEPREFIX": str(cache_root / "pycache"),
        "PYTHONOPTIMIZE": "2",
    }


class FleetBmcs:
    """The fleet's BMCs: one ``python -m roost_sim.bmc serve`` child for every host (one receive
    loop), driven over its HTTP control channel. BMCs are added per host (``POST /bmcs``, named
    after the host) and power changes are read from ``GET /events``."""

    def __init__(self, fleet: Fleet, logs: Path, control_port: int = BMC_CONTROL_PORT) -> None:
        self.fleet = fleet
        user, password = fleet.bmc_credentials()
        self.url = f"http://127.0.0.1:{control_port}"
        serve = ["serve", "--count", "0", "--user", user, "--control-port", str(control_port)]
        self.proc = ManagedProcess(
            "bmcs",
            python_module("roost_sim.bmc", *serve),
            env={"ROOST_SIM_BMC_PASSWORD": password},  # not on the command line
            log_path=logs / "bmcs.log",
            ready=http_ready(f"{self.url}/healthz"),
        )
        self.client = httpx.Client(base_url=self.url, timeout=5)
        self._seq = 0

    def start(self) -> None:
        """(Re)start the simulator; it starts empty, with no events."""
        self.proc.start()
        self.proc.wait_ready(30)
        self._seq = 0

    def add(self, host: SimHost, power: str = "on") -> None:
        body = {"port": self.fleet.bmc_port(host), "name": host.hostname, "power": power}
        self.client.post("/bmcs", json=body).raise_for_status()

    def events(self) -> list[tuple[str, str]]:
        """Power changes since the last call, oldest first: ``(hostname, "on" | "off")``."""
        response = self.client.get("/events", params={"after": self._seq})
        response.raise_for_status()
        body = response.json()
        self._seq = body["last"]
        return [(e["name"], e["state"]) for e in body["events"]]

    def stop(self) -> None:
        self.client.close()
        self.proc.stop()


class FleetSupervisor:
    """Runs one agent process per registered host and one BMC per host; restarts dead agents,
    starts added hosts, and follows the BMCs' power: a host that is off has no agent."""

    def __init__(
        self,
        fleet: Fleet,
        amqp_url: str,
        logs: Path,
        bmc_control_port: int = BMC_CONTROL_PORT,
        agent_env: Mapping[str, str] | None = None,
        provision: Callable[[list[SimHost]], dict[str, str]] | None = None,
    ) -> None:
        """``provision``: gives new hosts their own broker users, as enrolment does; called
        with the hosts about to start, returns each one's AMQP URL by hostname (its agent then
        runs with ``ROOST_BUS_SECURED``). None: agents use ``amqp_url``'s (or the agents') user."""
        self.fleet = fleet
        self.amqp_url = amqp_url
        self.logs = logs
        #: More environment for every agent (e.g. ``ROOST_HEARTBEAT_ADDR`` of a test's service).
        self.agent_env = dict(agent_env or {})
        self.provision = provision
        self.procs: dict[str, ManagedProcess] = {}
        self.given_up: set[str] = set()
        self.powered_off: set[str] = set()
        self.bmcs_failed = False
        self.bmcs = FleetBmcs(fleet, logs, bmc_control_port)
        self._hosts: dict[str, SimHost] = {}
        self._restarts: dict[str, list[float]] = {}
        self._registry_mtime = -1.0

    def poll(self) -> list[str]:
        """Start new hosts, apply power changes, restart exited agents of hosts that are on;
        returns the agents it (re)started."""
        started = []
        self._ensure_bmcs()
        with contextlib.suppress(FileNotFoundError):
            mtime = self.fleet.registry.stat().st_mtime
            if mtime != self._registry_mtime:
                self._registry_mtime = mtime
                new = [h for h in self.fleet.hosts() if h.hostname not in self.procs]
                urls = self.provision(new) if self.provision is not None and new else {}
                for host in new:
                    self.bmcs.add(host)
                    self._hosts[host.hostname] = host
                    env = dict(self.agent_env)
                    if host.hostname in urls:
                        env |= {"ROOST_AMQP_URL": urls[host.hostname], "ROOST_BUS_SECURED": "true"}
                    proc = self.fleet.process(host, self.amqp_url, self.logs, env)
                    self.procs[host.hostname] = proc.start()
                    started.append(proc.name)
        started += self._apply_power()
        now = time.monotonic()
        for name, proc in self.procs.items():
            if proc.running or name in self.given_up or name in self.powered_off:
                continue
            if proc.returncode == REBOOT_EXIT_CODE:
                # The agent asked for it (a software update's simulated reboot): started again
                # at once (a new process: a new boot id), not counted as a crash.
                print(f"roost: {proc.name} rebooted for a software update; starting", flush=True)
                proc.start()
                started.append(proc.name)
                continue
            recent = [t for t in self._restarts.get(name, []) if t > now - 60]
            if len(recent) >= RESTARTS_PER_MINUTE:
                print(f"roost: {proc.name} keeps exiting; left down. Log: {proc.log_path}")
                self.given_up.add(name)
                continue
            print(f"roost: {proc.name} exited ({proc.returncode}); restarting", flush=True)
            self._restarts[name] = [*recent, now]
            proc.start()
            started.append(proc.name)
        return started

    def forgive(self, name: str) -> None:
        """Forget ``name``'s recent exits: they were asked for (a planned agent restart), so
        they must not count toward the crash-loop guard."""
        self._restarts.pop(name, None)

    def _ensure_bmcs(self) -> None:
        """Start the BMC simulator, or restart it if it died; its BMCs keep their power."""
        if self.bmcs.proc.running or self.bmcs_failed:
            return
        if self.bmcs.proc.proc is not None:
            print(f"roost: bmcs exited ({self.bmcs.proc.returncode}); restarting", flush=True)
            try:
                self.bmcs.start()
            except ReadyTimeout as exc:  # the agents run on, with their last power state
                print(f"roost: BMCs left down: {exc}", flush=True)
                self.bmcs_failed = True
                return
        else:
            self.bmcs.start()  # the first start fails loudly
        for name, host in self._hosts.items():
            self.bmcs.add(host, "off" if name in self.powered_off else "on")

    def _apply_power(self) -> list[str]:
        """Power-off kills the agent (no clean shutdown: the power is cut); power-on starts it.
        Cycle and reset arrive as off then on: the agent restarts."""
        if not self.bmcs.proc.running:
            return []
        try:
            events = self.bmcs.events()
        except httpx.HTTPError as exc:
            print(f"roost: cannot read BMC power events: {exc}", flush=True)
            return []
        cut, powered_on = set(), set()
        for name, state in events:
            if name not in self.procs:
                continue
            if state == "off":
                self.powered_off.add(name)
                cut.add(name)
            else:
                self.powered_off.discard(name)
                powered_on.add(name)
        for name in cut:
            print(f"roost: {name} powered off; agent stopped", flush=True)
            self.procs[name].kill()
        started = []
        for name in powered_on - self.powered_off:
            proc = self.procs[name]
            self.given_up.discard(name)  # power-on is a fresh start
            self._restarts.pop(name, None)
            if not proc.running:
                print(f"roost: {name} powered on; agent starting", flush=True)
                proc.start()
                started.append(proc.name)
        return started

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.running and proc.proc is not None:
                proc.proc.send_signal(signal.SIGTERM)  # all at once, then wait for each
        for proc in self.procs.values():
            proc.stop()
        self.bmcs.stop()


# Many agents in one process (benchmarks) -------------------------------------------------------


async def run_in_process(
    n: int,
    *,
    amqp_url: str = DEFAULT_AMQP,
    state_dir: Path,
    profile: str = "worker",
    first_index: int = 0x8000,
    **settings: Any,
) -> tuple[Any, list[Any]]:
    """Start ``n`` agents in this event loop on ONE AMQP connection; returns ``(bus, agents)``.

    They share the connection and its publishing channel; each has its own consuming channel
    and queue, its own state directory and profile. Stop with ``await stop_in_process(bus,
    agents)``. Trade-off: measured, 100 agents take 49.7 MB in one process (~0.1 MB each
    above the first) against ~39 MB per agent process, and one broker connection instead of n;
    but the agents share one CPU and one event loop (a blocked handler stalls them all), a
    broker restart reconnects them together (a thundering herd of n re-announces, realistic
    for a broker restart anyway), and killing one host means ``agent.stop()``, not a crash.
    Use processes for fault-injection tests, this for scale.
    """
    from roost_agent.agent import Agent
    from roost_agent.settings import AgentSettings
    from roost_agent.tally import Tally
    from roost_shared.bus import Bus

    fleet = Fleet(state_dir)
    tally = Tally("agent")
    provisioned = {"release_keys_file": fleet.release_keys, "software_url": fleet.software_url}
    base = AgentSettings(amqp_url=amqp_url, state_dir=state_dir, **{**provisioned, **settings})
    bus = Bus(base, tally)  # type: ignore[arg-type]
    await bus.connect(deadline_s=30)
    agents = []
    for i in range(n):
        host = SimHost(first_index + i, f"sim-{first_index + i}", profile)
        env = fleet.agent_env(host, amqp_url)
        agent_settings = base.model_copy(
            update={
                "mgmt_mac": host.mac,
                "hostname": host.hostname,
                "mgmt_ip": host.ip,
                "state_dir": Path(env["ROOST_STATE_DIR"]),
                "profile": Path(env["ROOST_PROFILE"]),
            }
        )
        agent = Agent(agent_settings, bus, tally)
        await agent.start()
        agents.append(agent)
    return bus, agents


async def stop_in_process(bus: Any, agents: list[Any]) -> None:
    await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
    await bus.close()


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# Command line ----------------------------------------------------------------------------------


def add_host(state_dir: Path, profile: str = "worker", hostname: str | None = None) -> SimHost:
    """Register a simulated host (what ``roost sim add-host`` should call)."""
    return Fleet(state_dir).add(profile, hostname)


def _running_supervisor(fleet: Fleet) -> int | None:
    try:
        pid = int((fleet.dir / "supervisor.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roost_sim.fleet", description=__doc__)
    parser.add_argument(
        "--state-dir", type=Path, default=Path(os.environ.get("ROOST_STATE_DIR", "state"))
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add-host", help="register one more simulated host")
    add.add_argument("--hostname")
    add.add_argument("--profile", default="worker", choices=profiles())
    sub.add_parser("list", help="list the registered hosts")
    run = sub.add_parser("run", help="run the registered fleet (no services) until Ctrl-C")
    run.add_argument("--hosts", type=int, default=3, help="hosts to seed an empty registry with")
    inproc = sub.add_parser("in-process", help="run N agents in one process until Ctrl-C")
    inproc.add_argument("n", type=int)
    inproc.add_argument("--profile", default="worker", choices=profiles())
    args = parser.parse_args(argv)
    state: Path = args.state_dir.resolve()
    fleet = Fleet(state)
    amqp_url = os.environ.get("ROOST_AMQP_URL", DEFAULT_AMQP)

    if args.cmd == "add-host":
        try:
            host = fleet.add(args.profile, args.hostname)
        except ValueError as exc:
            print(f"roost: {exc}", file=sys.stderr)
            return 1
        pid = _running_supervisor(fleet)
        where = f"make run (pid {pid}) starts its agent" if pid else "starts with the next make run"
        print(f"added {host.hostname} ({host.profile}, mac {host.mac}, ip {host.ip}); {where}")
        return 0
    if args.cmd == "list":
        for h in fleet.hosts():
            bmc = f"127.0.0.1:{fleet.bmc_port(h)}"
            print(f"{h.hostname:<16} {h.profile:<11} {h.mac}  {h.ip:<12} bmc {bmc}")
        return 0
    if args.cmd == "run":
        fleet.seed(args.hosts)
        supervisor = FleetSupervisor(fleet, amqp_url, state / "logs")
        return _supervise(fleet, supervisor)
    return asyncio.run(_in_process(args.n, amqp_url, state / "inproc", args.profile))


def _supervise(fleet: Fleet, supervisor: FleetSupervisor) -> int:
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    fleet.dir.mkdir(parents=True, exist_ok=True)
    (fleet.dir / "supervisor.pid").write_text(str(os.getpid()))
    try:
        while not stopping:
            for name in supervisor.poll():
                print(f"started {name}", flush=True)
            time.sleep(0.5)
    finally:
        supervisor.stop()
        (fleet.dir / "supervisor.pid").unlink(missing_ok=True)
    return 0


async def _in_process(n: int, amqp_url: str, state: Path, profile: str) -> int:
    before = rss_mb()
    started = time.monotonic()
    bus, agents = await run_in_process(n, amqp_url=amqp_url, state_dir=state, profile=profile)
    print(
        f"{n} agents in one process in {time.monotonic() - started:.1f}s: "
        f"RSS {rss_mb():.1f} MB (was {before:.1f} MB before the agents). Ctrl-C stops.",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await stop_in_process(bus, agents)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
