"""Commands an attacker sends to a real agent over the real broker run nothing.

The attacker holds the site's shared broker credentials (the test vhost's user: what any host,
pod or reader of the AMQP URL has) and so can publish to ``roost.commands`` and read what is sent
there. Each attack is an ``service.instance.assign`` whose service would write a marker file:
the agent must refuse it (reported as ``agent.command.refused``, counted) and no marker appears.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from roost_shared.bus import COMMANDS_EXCHANGE, Bus, to_message
from roost_shared.catalog import ConfigApply, InstanceAssign, InstanceRemove, Personality
from roost_shared.commands import CommandSigner, agent_key, command
from roost_shared.events import Envelope
from roost_shared.signing import Signer
from tests.conftest import site_signers
from tests.support.agents import Events, listen
from tests.support.waiting import eventually

REFUSED = "agent.command.refused"
CHANGED = "agent.instance.changed"


def assign(markers: Path, instance: str) -> InstanceAssign:
    """Assign a service that writes ``markers/<instance>.<pid>`` when it runs."""
    script = f"touch {markers}/{instance}.$$ && exec sleep 600"
    return InstanceAssign(
        group="gw",
        service="gateway",
        instance_id=instance,
        role="active",
        fencing_token=None,
        spec={"name": "gateway", "argv": ["/bin/sh", "-c", script]},
    )


def ran(markers: Path, instance: str) -> int:
    return len(list(markers.glob(f"{instance}.*")))


async def publish_raw(url: str, envelope: Envelope | dict[str, Any], routing_key: str) -> None:
    """Publish as the attacker: its own connection with the shared credentials, no Roost code
    in the path but the envelope's JSON."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(COMMANDS_EXCHANGE)
        if isinstance(envelope, Envelope):
            message = to_message(envelope)
        else:
            message = aio_pika.Message(json.dumps(envelope).encode())
        await exchange.publish(message, routing_key=routing_key)


async def refusal(events: Events, mac: str, command_id: str) -> dict[str, Any]:
    found = await events.wait_for(REFUSED, mac, lambda d: d["command_id"] == command_id)
    return found["data"]


@pytest.fixture
async def target(stack, agents, tmp_path):
    bus = await stack.bus()
    events = await listen(bus)
    agent = agents()
    await events.wait_for("agent.host.announced", agent.mac)
    markers = tmp_path / "markers"
    markers.mkdir()
    return bus, events, agent, markers


async def proves_alive(bus: Bus, events: Events, agent: Any, markers: Path, name: str) -> None:
    """A genuine command sent after the attack runs: the agent read past the forgery."""
    env = command(assign(markers, name), source="service", subject=agent.mac, deadline_s=30)
    await bus.publish([env], exchange=COMMANDS_EXCHANGE, routing_key=agent_key(agent.mac))
    await eventually(lambda: ran(markers, name) == 1, timeout=15, what=f"{name} running")


async def test_an_unsigned_command_from_the_shared_broker_user_runs_nothing(stack, target):
    bus, events, agent, markers = target
    forged = command(assign(markers, "forged"), source="service", subject=agent.mac, deadline_s=30)
    await publish_raw(stack.amqp_url, forged, agent_key(agent.mac))

    refused = await refusal(events, agent.mac, forged.id)
    assert (refused["reason"], refused["forgery"]) == ("unsigned", True)
    await proves_alive(bus, events, agent, markers, "genuine")
    assert ran(markers, "forged") == 0
    outcome = "refused-unsigned"
    assert agent.metric("roost_agent_commands_total", type=forged.type, outcome=outcome) == 1


async def test_a_command_signed_with_a_key_the_agent_does_not_trust_runs_nothing(stack, target):
    bus, events, agent, markers = target
    attacker = CommandSigner("service", Signer.generate())  # claims to be the service service
    forged = attacker.sign(
        command(assign(markers, "forged"), source="service", subject=agent.mac, deadline_s=30),
        agent_key(agent.mac),
    )
    await publish_raw(stack.amqp_url, forged, agent_key(agent.mac))

    refused = await refusal(events, agent.mac, forged.id)
    assert refused["reason"] == "bad-signature"
    await proves_alive(bus, events, agent, markers, "genuine")
    assert ran(markers, "forged") == 0


async def test_a_command_signed_by_another_issuer_runs_nothing(stack, target):
    """The config service's key (stolen, or config compromised) cannot make agents run
    programs: service.instance.assign is the service service's alone."""
    bus, events, agent, markers = target
    config = CommandSigner("config", site_signers()["config"])
    forged = config.sign(
        command(assign(markers, "forged"), source="config", subject=agent.mac, deadline_s=30),
        agent_key(agent.mac),
    )
    await publish_raw(stack.amqp_url, forged, agent_key(agent.mac))

    assert (await refusal(events, agent.mac, forged.id))["reason"] == "wrong-signer"
    await proves_alive(bus, events, agent, markers, "genuine")
    assert ran(markers, "forged") == 0


async def test_a_tampered_payload_runs_nothing(stack, target):
    """A genuine signed command whose payload the attacker rewrote on the way."""
    bus, events, agent, markers = target
    genuine = CommandSigner("service", site_signers()["service"]).sign(
        command(assign(markers, "decoy"), source="service", subject=agent.mac, deadline_s=30),
        agent_key(agent.mac),
    )
    tampered = genuine.model_dump(mode="json")
    tampered["data"] = assign(markers, "forged").model_dump(mode="json", exclude_none=True)
    await publish_raw(stack.amqp_url, tampered, agent_key(agent.mac))

    assert (await refusal(events, agent.mac, genuine.id))["reason"] == "bad-signature"
    await proves_alive(bus, events, agent, markers, "genuine")
    assert ran(markers, "forged") == 0 and ran(markers, "decoy") == 0


async def test_a_replayed_command_runs_nothing_twice(stack, target):
    """The attacker records a genuine assign off the commands exchange; after the operator's
    remove, replaying it must not start the service again (nor after the agent restarts)."""
    bus, events, agent, markers = target
    connection = await aio_pika.connect(stack.amqp_url)
    async with connection:
        channel = await connection.channel()
        tap = await channel.declare_queue(exclusive=True)
        await tap.bind(COMMANDS_EXCHANGE, routing_key=agent_key(agent.mac))

        await proves_alive(bus, events, agent, markers, "svc")
        recorded = await tap.get(timeout=5)
        assert recorded is not None
        captured = json.loads(recorded.body)
        assert captured["type"] == "service.instance.assign" and captured["signature"]
        remove = command(
            InstanceRemove(group="gw", service="gateway", instance_id="svc"),
            source="service",
            subject=agent.mac,
            deadline_s=30,
        )
        seen = len(events.got)
        await bus.publish([remove], exchange=COMMANDS_EXCHANGE, routing_key=agent_key(agent.mac))
        await events.wait_for(CHANGED, agent.mac, lambda d: d["state"] == "stopped", after=seen)

        for attempt in range(2):
            if attempt == 1:  # the agent remembers what it ran across a restart
                agent.stop()
                agent.start()
                await events.wait_for("agent.host.announced", agent.mac, after=len(events.got))
            await publish_raw(stack.amqp_url, captured, agent_key(agent.mac))
            got = await refusal(events, agent.mac, captured["id"])
            assert got["reason"] == "replayed"
            events.got = [e for e in events.got if e["type"] != REFUSED]
        assert ran(markers, "svc") == 1


async def test_a_command_for_another_host_runs_nothing(stack, agents, target):
    """A genuine command recorded off one host's queue and re-published to another's."""
    bus, events, agent, markers = target
    other = agents()
    await events.wait_for("agent.host.announced", other.mac)
    meant = CommandSigner("service", site_signers()["service"]).sign(
        command(assign(markers, "elsewhere"), source="service", subject=other.mac, deadline_s=30),
        agent_key(other.mac),
    )
    await publish_raw(stack.amqp_url, meant, agent_key(agent.mac))

    assert (await refusal(events, agent.mac, meant.id))["reason"] == "misdirected"
    await proves_alive(bus, events, agent, markers, "genuine")
    assert ran(markers, "elsewhere") == 0


async def test_a_signature_cannot_be_moved_to_a_command_without_a_deadline(stack, target):
    """Deadlines are mandatory and signed: stripping one breaks the signature; an issuer never
    signs a command without one."""
    _bus, events, agent, markers = target
    signer = CommandSigner("service", site_signers()["service"])
    genuine = signer.sign(
        command(assign(markers, "forever"), source="service", subject=agent.mac, deadline_s=30),
        agent_key(agent.mac),
    )
    stripped = genuine.model_dump(mode="json")
    stripped.pop("deadline")
    await publish_raw(stack.amqp_url, stripped, agent_key(agent.mac))
    assert (await refusal(events, agent.mac, genuine.id))["reason"] == "bad-signature"
    assert ran(markers, "forever") == 0

    undated = Envelope.of(assign(markers, "forever"), source="service", subject=agent.mac)
    with pytest.raises(ValueError, match="no deadline"):
        signer.sign(undated, agent_key(agent.mac))
    assert base64.b64decode(genuine.signature or "")  # a real signature was there to strip


async def test_repeated_forgeries_raise_an_alarm_and_genuine_config_still_applies(
    stack,
    agents,
    start_config,
):
    """The config service signs what it sends (the agent applies it) and alarms (250.011) when a
    host's agent keeps refusing forged commands."""
    config = start_config(ROOST_FORGERY_ALARM_THRESHOLD="3")
    bus = await stack.bus()
    events = await listen(bus, "#")
    agent = agents()
    async with config.client(stack.tokens.admin) as http:
        r = await http.post(
            "/v1/hosts",
            json={"hostname": "worker-0", "personality": "worker", "mgmt_mac": agent.mac},
        )
        assert r.status_code in (200, 201), r.text
        applied = await events.wait_for("agent.config.applied", agent.mac, timeout=30)
        assert applied["data"]["ok"] is True and applied["data"]["version"] >= 1

        forged = [
            ConfigApply(version=10**9, hostname="worker-0", personality=Personality.worker)
            for _ in range(3)
        ]
        for payload in forged:
            env = command(payload, source="config", subject=agent.mac, deadline_s=30)
            await publish_raw(stack.amqp_url, env, agent_key(agent.mac))

        def raised(data: dict[str, Any]) -> bool:
            return data["alarm_id"] == "250.011" and data["entity_instance_id"] == "host=worker-0"

        alarm = await events.wait_for("fault.alarm.set", where=raised, timeout=20)
        assert (
            alarm["data"]["severity"] == "critical"
            and "config.apply" in (alarm["data"]["reason_text"])
        )
        host = (await http.get(f"/v1/hosts/{agent.mac}")).json()
        assert host["config_applied"] == applied["data"]["version"], "the host is not wedged"
