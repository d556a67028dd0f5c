"""A simulated site for end-to-end tests: the real config, host and fault services (and,
when asked, the service service and the software service), a fleet of real agent processes
with IPMI BMCs, every host unlocked and available. What ``make run`` brings up, in a test's
own vhost and databases."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

from roost_shared.releases import generate_key
from roost_sim.fleet import Fleet, FleetSupervisor
from roost_sim.ports import free_port, free_udp_port, udp_port_block
from tests.support.waiting import eventually

HOST_FAST = {
    "ROOST_INTEST_S": "0.5",
    "ROOST_RECOVERY_BACKOFF_S": "1",
    "ROOST_RECOVERY_BOOT_S": "30",
    "ROOST_SENSOR_POLL_S": "1",
    # A BMC back from a fault is tried again after 2 s, not the default 30 s.
    "ROOST_BMC_BREAKER_RESET_S": "2",
    "ROOST_BMC_TIMEOUT_S": "2",  # loopback BMCs; an unreachable one is noticed sooner
}


@dataclass
class Site:
    config: Any
    host: Any
    fault: Any
    fleet: Fleet
    supervisor: FleetSupervisor
    token: str
    service: Any = None
    #: The software service (``open_site(software=True)``) and the private key (PEM) of the
    #: release signing key it accepts (None when it accepts unsigned releases).
    software: Any = None
    release_key: str | None = None
    #: While set, the fleet does not restart exited agents (a host that takes a while to boot).
    paused: bool = False

    def client(self, svc: Any) -> httpx.AsyncClient:
        return svc.client(self.token)

    def agent_pid(self, hostname: str) -> int:
        proc = self.supervisor.procs[hostname]
        assert proc.running and proc.proc is not None
        return proc.proc.pid


async def _poll(site: Site) -> None:
    """What ``make run`` does: follow BMC power, restart exited agents."""
    while True:
        if not site.paused:
            try:
                await asyncio.to_thread(site.supervisor.poll)
            except Exception as exc:  # a slow BMC simulator, say: poll again, never stop
                print(f"fleet supervisor poll failed: {exc!r}; polling on", flush=True)
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def open_site(
    stack: Any,
    tmp_path: Path,
    count: int = 2,
    *,
    service: bool = False,
    software: bool = False,
    unsigned_releases: bool = False,
    host_env: dict[str, str] | None = None,
    software_env: dict[str, str] | None = None,
    ready_within: float = 30.0,
    **service_env: str,
) -> AsyncIterator[Site]:
    """Config, host and fault services (+ the service service with ``service``, the software
    service with ``software``) and a simulated fleet of ``count`` hosts, every host
    unlocked-available. ``host_env`` adds to (or overrides) the host service's fast test
    settings; ``service_env`` is the service service's, ``software_env`` the software
    service's. ``ready_within``: how long each host may take to be online, then available
    (a benchmark's hundreds of agents start slowly on 2 cores). Each service calls its peers
    with its own peer token (never the admin token); the software service accepts
    releases signed by ``Site.release_key`` (or, with ``unsigned_releases``, unsigned ones,
    which the agents, verifying releases themselves, refuse to install)."""
    key = Fernet.generate_key().decode()  # config encrypts BMC passwords, host decrypts them
    fault = stack.start("fault")
    common = {"ROOST_SECRET_KEY": key, "ROOST_FAULT_URL": fault.url}
    host = stack.start("host", **common, **{**HOST_FAST, **(host_env or {})})
    config = stack.start(
        "config",
        **common,
        ROOST_HOST_SERVICE_URL=host.url,
        ROOST_HOST_SERVICE_TOKEN=stack.tokens.peers["config"],
        ROOST_CONFIG_GRACE_S="1",
    )
    sm = None
    agent_env = {"ROOST_HEARTBEAT_ADDR": f"127.0.0.1:{host.env['ROOST_HEARTBEAT_PORT']}"}
    if service:
        link_port = str(free_udp_port())
        sm = stack.start(
            "service",
            ROOST_CONFIG_SERVICE_URL=config.url,
            ROOST_CONFIG_SERVICE_TOKEN=stack.tokens.peers["service"],
            ROOST_SM_LINK_PORT=link_port,
            **service_env,
        )
        agent_env["ROOST_SM_LINK_ADDR"] = f"127.0.0.1:{link_port}"
    sw = None
    release_key = None
    if software:
        peers = {
            "ROOST_HOST_URL": host.url,
            "ROOST_FAULT_URL": fault.url,
            "ROOST_CONFIG_URL": config.url,
            "ROOST_PEER_TOKEN": stack.tokens.peers["software"],
        }
        if sm is not None:
            peers["ROOST_SERVICE_URL"] = sm.url
        if unsigned_releases:
            peers["ROOST_ALLOW_UNSIGNED_RELEASES"] = "true"
        else:
            release_key, public = generate_key()
            peers["ROOST_RELEASE_PUBLIC_KEYS"] = f'["{public}"]'
        sw = stack.start("software", **{**peers, **(software_env or {})})
        # The agents are provisioned as nodes are at enrolment: the software service to
        # download from, the site's release key to verify with (none: they install nothing).
        agent_env["ROOST_SOFTWARE_URL"] = sw.url
        agent_env["ROOST_RELEASE_PUBLIC_KEYS"] = peers.get("ROOST_RELEASE_PUBLIC_KEYS", "[]")
    fleet = Fleet(tmp_path / "fleet", bmc_first_port=udp_port_block(count))
    hosts = fleet.seed(count)  # controller-0, worker-0, worker-1, ...
    supervisor = FleetSupervisor(
        fleet,
        stack.amqp_url,
        tmp_path / "logs",
        bmc_control_port=free_port(),
        agent_env=agent_env,
    )
    async with config.client(stack.tokens.admin) as http:
        for h in hosts:
            body = fleet.inventory_record(h)
            r = await http.post("/v1/hosts", json=body)
            assert r.status_code == 201, r.text
    s = Site(
        config,
        host,
        fault,
        fleet,
        supervisor,
        stack.tokens.admin,
        service=sm,
        software=sw,
        release_key=release_key,
    )
    task = asyncio.create_task(_poll(s))
    try:
        async with s.client(host) as http:
            for h in hosts:
                await where(
                    http,
                    h.hostname,
                    lambda d: d["availability"] == "online",
                    "online",
                    ready_within,
                )
            for h in hosts:
                r = await http.post(f"/v1/hosts/{h.hostname}/actions", json={"action": "unlock"})
                assert r.status_code == 200, r.text
            for h in hosts:
                await where(
                    http,
                    h.hostname,
                    lambda d: d["availability"] == "available",
                    "available",
                    ready_within,
                )
        yield s
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # Thaw anything a failed test left frozen, so it can be stopped.
        for proc in supervisor.procs.values():
            if proc.running and proc.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.proc.pid, signal.SIGCONT)
        await asyncio.to_thread(supervisor.stop)


async def where(http: httpx.AsyncClient, ref: str, check, what: str, within: float = 30):
    """Wait until host ``ref`` (host service API) passes ``check``; its document."""

    async def probe():
        try:
            r = await http.get(f"/v1/hosts/{ref}")
        except httpx.TimeoutException:  # a slow answer is asked again until the deadline
            return None
        return r.json() if r.status_code == 200 and check(r.json()) else None

    return await eventually(probe, timeout=within, what=f"{ref} {what}")
