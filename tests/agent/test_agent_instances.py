"""The agent runs the service instances it is assigned (``service.instance.assign`` /
``service.instance.remove``) under its process monitor and reports every transition as
``agent.instance.changed``; real agent processes, real child processes, the test's own vhost."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from roost_shared.bus import COMMANDS_EXCHANGE, Bus
from roost_shared.catalog import InstanceAssign, InstanceRemove
from roost_shared.commands import agent_key, command
from roost_shared.hostkeys import link_key
from roost_shared.smlink import Grant, Hello, Lease, decode_hello, encode
from roost_sim.ports import free_udp_port
from tests.support.agents import AgentUnderTest, Events, listen
from tests.support.stack import key_of
from tests.support.waiting import eventually

CHANGED = "agent.instance.changed"
ANNOUNCED = "agent.host.announced"
INSTANCE = "gw-gateway-worker-0"


def spec(envs: Path, **extra: Any) -> dict[str, Any]:
    """A service that writes its environment to ``envs/<pid>`` and then waits to be stopped."""
    script = f"env > {envs}/.$$ && mv {envs}/.$$ {envs}/$$ && exec sleep 600"
    return {"name": "gateway", "argv": ["/bin/sh", "-c", script], **extra}


async def send(bus: Bus, mac: str, payload: BaseModel, deadline_s: float = 30.0) -> str:
    envelope = command(payload, source="test", subject=mac, deadline_s=deadline_s)
    await bus.publish([envelope], exchange=COMMANDS_EXCHANGE, routing_key=agent_key(mac))
    return envelope.id


def assign(envs: Path, role: str, token: int | None, **spec_extra: Any) -> InstanceAssign:
    return InstanceAssign(
        group="gw",
        service="gateway",
        instance_id=INSTANCE,
        role=role,
        fencing_token=token,
        spec=spec(envs, **spec_extra),
    )


async def env_of(envs: Path, pid: int) -> dict[str, str]:
    """The environment the service with ``pid`` wrote (waits for it)."""
    path = envs / str(pid)
    await eventually(lambda: _exists(path), timeout=5, what=f"{path}")
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


async def _exists(path: Path) -> bool:
    return path.exists()  # noqa: ASYNC240 - a stat of a tmp file


async def state(events: Events, mac: str, want: str, after: int, **match: Any) -> dict[str, Any]:
    def fits(d: dict[str, Any]) -> bool:
        return d["state"] == want and all(d.get(k) == v for k, v in match.items())

    return (await events.wait_for(CHANGED, mac, fits, after=after, timeout=10))["data"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return stat[0] != "Z"


async def gone(pid: int) -> bool:
    return not alive(pid)


async def announced(stack, agents, **env: str) -> tuple[Bus, Events, AgentUnderTest]:
    """A producer's bus, a listener on it, and one more agent (``env``) that has announced."""
    bus = await stack.bus()
    events = await listen(bus)
    agent = agents(**env)
    await events.wait_for(ANNOUNCED, agent.mac)
    return bus, events, agent


def envs_dir(tmp_path: Path) -> Path:
    """Where the test services write their environments (``spec``)."""
    envs = tmp_path / "envs"
    envs.mkdir()
    return envs


async def test_assign_restart_in_place_stale_role_change_and_remove(stack, agents, tmp_path):
    envs = envs_dir(tmp_path)
    bus, events, agent = await announced(stack, agents)

    # Assigned: starting, running, healthy, each with its role and token; the process has both.
    command_id = await send(bus, agent.mac, assign(envs, "standby", 4))
    healthy = await state(events, agent.mac, "healthy", 0)
    states = [e["data"]["state"] for e in events.of(CHANGED, agent.mac)]
    assert states[:3] == ["starting", "running", "healthy"]
    for e in events.of(CHANGED, agent.mac):
        d = e["data"]
        assert (d["group"], d["service"], d["instance_id"]) == ("gw", "gateway", INSTANCE)
        assert (d["role"], d["fencing_token"], d["hostname"]) == ("standby", 4, "worker-0")
    pid = healthy["pid"]
    env = await env_of(envs, pid)
    assert (env["ROOST_ROLE"], env["ROOST_FENCING_TOKEN"]) == ("standby", "4")
    assert "ROOST_AMQP_URL" not in env, "the agent's own settings are not passed on"
    assert (agent.state_dir / "instances.json").exists()

    # Killed: exited (by signal 9), then running again in place, same role and token.
    seen = len(events.got)
    os.kill(pid, signal.SIGKILL)
    exited = await state(events, agent.mac, "exited", seen)
    assert exited["signal"] == signal.SIGKILL and exited["pid"] == pid
    again = await state(events, agent.mac, "running", seen)
    assert again["pid"] != pid and (again["role"], again["fencing_token"]) == ("standby", 4)
    pid = again["pid"]
    await state(events, agent.mac, "healthy", seen)

    # The same assignment again: nothing restarts, the current state is re-reported.
    seen = len(events.got)
    command_id = await send(bus, agent.mac, assign(envs, "standby", 4))
    same = await events.wait_for(CHANGED, agent.mac, after=seen)
    assert same["correlationid"] == command_id
    assert same["data"]["command"] == command_id  # reports name the last command applied
    assert (same["data"]["state"], same["data"]["pid"]) == ("healthy", pid)

    # A stale token: refused, reported with the state and token it keeps, nothing restarted.
    seen = len(events.got)
    await send(bus, agent.mac, assign(envs, "active", 3))
    stale = (await events.wait_for(CHANGED, agent.mac, after=seen))["data"]
    assert "stale" in stale["reason"] and stale["state"] == "healthy"
    assert (stale["role"], stale["fencing_token"], stale["pid"]) == ("standby", 4, pid)
    assert alive(pid)

    # Promoted with a higher token: the old process stops, a new one runs with the new env.
    seen = len(events.got)
    await send(bus, agent.mac, assign(envs, "active", 5))
    stopped = await state(events, agent.mac, "stopped", seen, role="standby")
    assert "role standby -> active" in stopped["reason"]
    promoted = await state(events, agent.mac, "healthy", seen, role="active", fencing_token=5)
    assert not alive(pid)
    env = await env_of(envs, promoted["pid"])
    assert (env["ROOST_ROLE"], env["ROOST_FENCING_TOKEN"]) == ("active", "5")

    # Removed: stopped, the process gone, forgotten (also on disk).
    seen = len(events.got)
    await send(bus, agent.mac, InstanceRemove(group="gw", service="gateway", instance_id=INSTANCE))
    await state(events, agent.mac, "stopped", seen, role="active")
    await eventually(lambda: gone(promoted["pid"]), timeout=5, what="the process to be gone")
    assert '"instances": []' in (agent.state_dir / "instances.json").read_text()
    assert agent.metric("roost_agent_commands_total", type="service.instance.assign") == 4

    # A delayed active assign from before the removal (token 5, not newer) is refused: an
    # active taken away is not revived. A newer token runs.
    seen = len(events.got)
    await send(bus, agent.mac, assign(envs, "active", 5))
    refused = await state(events, agent.mac, "stopped", seen, fencing_token=5)
    assert "stale assign refused: removed" in refused["reason"], refused
    assert not [e for e in events.of(CHANGED, agent.mac)[seen:] if e["data"]["state"] == "running"]
    await send(bus, agent.mac, assign(envs, "active", 6))
    await state(events, agent.mac, "healthy", seen, role="active", fencing_token=6)


async def test_agent_restart_runs_its_instances_again(stack, agents, tmp_path):
    envs = envs_dir(tmp_path)
    bus, events, agent = await announced(stack, agents)
    await send(bus, agent.mac, assign(envs, "active", 9))
    first = await state(events, agent.mac, "healthy", 0)

    assert agent.stop() == 0
    assert not alive(first["pid"]), "a clean agent stop ends its services"
    seen = len(events.got)
    agent.start()
    resumed = await state(events, agent.mac, "healthy", seen, role="active", fencing_token=9)
    assert resumed["pid"] != first["pid"] and alive(resumed["pid"])
    env = await env_of(envs, resumed["pid"])
    assert (env["ROOST_ROLE"], env["ROOST_FENCING_TOKEN"]) == ("active", "9")


async def test_invalid_spec_fails_naming_the_field_and_expired_assign_is_ignored(
    stack, agents, tmp_path
):
    bus, events, agent = await announced(stack, agents)
    bad = InstanceAssign(
        group="gw",
        service="gateway",
        instance_id="gw-bad",
        role="active",
        fencing_token=1,
        spec={"name": "gateway", "argv": [], "stop_timeout_s": 0},
    )
    await send(bus, agent.mac, assign(tmp_path, "active", 1), deadline_s=-1)  # expired
    await send(bus, agent.mac, bad)
    failed = (await events.wait_for(CHANGED, agent.mac))["data"]
    assert failed["instance_id"] == "gw-bad" and failed["state"] == "failed"
    assert "spec.argv" in failed["reason"] and "spec.stop_timeout_s" in failed["reason"]
    assert "\n" not in failed["reason"]
    assert [e["data"]["instance_id"] for e in events.of(CHANGED, agent.mac)] == ["gw-bad"]
    await eventually(
        lambda: _metric(agent, "service.instance.assign", "refused-expired"), what="expired counted"
    )


async def _metric(agent: Any, type_: str, outcome: str) -> bool:
    return agent.metric("roost_agent_commands_total", type=type_, outcome=outcome) == 1


class _LinkPeer(asyncio.DatagramProtocol):
    """The service service's end of the link, played by the test: counts hellos and answers
    them with ``grant`` (None: silent, as when no path reaches the controller)."""

    def __init__(self) -> None:
        self.hellos: list[Hello] = []
        self.grant: Grant | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        hello = decode_hello(data)
        self.hellos.append(hello)
        if self.grant is not None and self.transport is not None:
            # Signed with the host's link key and answering this hello, as the service's are.
            grant = self.grant.model_copy(update={"seq": hello.seq})
            self.transport.sendto(encode(grant, link_key(key_of(hello.mac)), hello.mac), addr)


async def test_an_active_steps_down_when_no_grant_renews_its_lease_and_resumes_when_granted(
    stack, agents, tmp_path
):
    envs = envs_dir(tmp_path)
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(
        _LinkPeer, local_addr=("127.0.0.1", free_udp_port())
    )
    port = transport.get_extra_info("sockname")[1]
    try:
        link = {"ROOST_SM_LINK_ADDR": f"127.0.0.1:{port}", "ROOST_LEASE_MARGIN_S": "0.3"}
        bus, events, agent = await announced(stack, agents, **link)
        expires = datetime.now(UTC) + timedelta(seconds=1.5)
        lease = assign(envs, "active", 5).model_copy(update={"lease_expires_at": expires})
        await send(bus, agent.mac, lease)
        first = await state(events, agent.mac, "healthy", 0, role="active", fencing_token=5)
        env = await env_of(envs, first["pid"])
        assert (env["ROOST_ROLE"], env["ROOST_FENCING_TOKEN"]) == ("active", "5")

        # No grant on any path: before the lease runs out it is running as standby, no token.
        down = await state(events, agent.mac, "running", 0, role="standby")
        assert datetime.now(UTC) < expires, "stepped down only after the lease had expired"
        assert down.get("fencing_token") is None and down["pid"] != first["pid"]
        assert not alive(first["pid"])
        env = await env_of(envs, down["pid"])
        assert env["ROOST_ROLE"] == "standby" and "ROOST_FENCING_TOKEN" not in env
        stepped = [e["data"] for e in events.of(CHANGED, agent.mac) if "stepped down" in
                   e["data"]["reason"]]  # fmt: skip
        assert stepped, "the step-down is reported with its reason"
        assert {h.path for h in peer.hellos} == {"udp"} and len(peer.hellos) >= 3

        # A grant for another token changes nothing; one for its own token makes it active.
        later = int((datetime.now(UTC) + timedelta(seconds=30)).timestamp() * 1000)
        peer.grant = Grant(seq=0, path="udp", leases=[Lease(i=INSTANCE, k=4, e=later)])
        seen = len(events.got)
        n = len(peer.hellos)
        await eventually(lambda: len(peer.hellos) >= n + 3, what="three more hellos")
        roles = [e["data"].get("role") for e in events.of(CHANGED, agent.mac)[seen:]]
        assert "active" not in roles, roles
        soon = int((datetime.now(UTC) + timedelta(seconds=2)).timestamp() * 1000)
        peer.grant = Grant(seq=0, path="udp", leases=[Lease(i=INSTANCE, k=5, e=soon)])
        back = await state(events, agent.mac, "healthy", seen, role="active", fencing_token=5)
        env = await env_of(envs, back["pid"])
        assert (env["ROOST_ROLE"], env["ROOST_FENCING_TOKEN"]) == ("active", "5")

        # Promoted, it is watched again: grants stop, it steps down again before the expiry.
        peer.grant = None
        seen = len(events.got)
        await state(events, agent.mac, "running", seen, role="standby")
        assert datetime.now(UTC).timestamp() * 1000 < soon, "stepped down after the expiry"
    finally:
        transport.close()
