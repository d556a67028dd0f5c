"""The agent rides through a broker restart: reconnects, announces again, still takes commands.
``rabbitmqctl stop_app`` takes down the whole local broker for a few seconds (slow test)."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from roost_sim.ports import is_listening
from tests.support.agents import apply, listen


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, timeout=120)


@pytest.mark.slow
async def test_broker_restart_reconnects_reannounces_and_applies(stack, agents):
    bus = await stack.bus()
    events = await listen(bus, durable=True)  # keeps what the agent says while we reconnect
    agent = agents()
    await events.wait_for("agent.host.announced", agent.mac)
    await apply(bus, agent.mac, 1)
    await events.wait_for("agent.config.applied", agent.mac)
    seen = len(events.got)

    await asyncio.to_thread(rabbitmqctl, "stop_app")
    try:
        assert not is_listening(5672)
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")

    again = await events.wait_for("agent.host.announced", agent.mac, after=seen, timeout=60)
    assert again["data"]["config_applied"] == 1
    await events.wait_for("agent.inventory.reported", agent.mac, after=seen, timeout=30)
    # The command queue and its binding came back with the connection.
    await apply(bus, agent.mac, 2)
    done = await events.wait_for(
        "agent.config.applied", agent.mac, lambda d: d["version"] == 2, after=seen, timeout=30
    )
    assert done["data"]["ok"] is True
    assert agent.proc.running, "the agent reconnected rather than exiting"
