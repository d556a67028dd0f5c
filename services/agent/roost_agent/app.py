"""``roost-agent`` / ``python -m roost_agent.app``: run the agent until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from roost_agent.agent import Agent
from roost_agent.settings import AgentSettings
from roost_agent.tally import Tally
from roost_shared.agentbus import AgentBusNames
from roost_shared.bus import Bus
from roost_shared.hostkeys import KeyFileError
from roost_shared.logging import configure_logging

log = logging.getLogger("roost_agent")

#: Pause between connection attempts that failed at once (e.g. ACCESS_REFUSED, NOT_FOUND).
RETRY_S = 5.0


async def connect(bus: Bus, stop: asyncio.Event) -> bool:
    """Connect, however long the broker takes (a node may boot before it); False if stopped."""
    while not stop.is_set():
        try:
            await bus.connect(deadline_s=30)
            return True
        except Exception as exc:
            # Unreachable (after bus.connect's own 30 s of retries), or reachable but refusing
            # (per-host credentials not provisioned yet): try again shortly, until stopped.
            log.warning("broker unreachable or refusing (%s); still trying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_S)
    return False


async def run(settings: AgentSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tally = Tally(settings.service)
    # With per-host credentials everything is published through the agent's own exchange.
    via = AgentBusNames.of(settings.mgmt_mac).exchange if settings.bus_secured else None
    bus = Bus(settings, tally, via=via)  # type: ignore[arg-type]  # Tally is the light Metrics
    agent = Agent(settings, bus, tally)
    agent.start_heartbeats()  # UDP needs no broker: the host is seen alive while we connect
    agent.start_instances()  # nor do its services: they run whether the broker answers or not
    await agent.start_link()  # nor the UDP path of the service link that keeps their leases
    connecting = asyncio.create_task(connect(bus, stop))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not connecting.done():
        connecting.cancel()
        await agent.heartbeats.stop()
        await agent.link.stop()
        await agent.instances.stop()
        await agent.reports.close(flush_s=0)
        await bus.close()
        return
    try:
        await agent.start()
        await stopping
        log.info("stopping")
    finally:
        await agent.stop()
        await bus.close()


def main() -> None:
    """Run the agent with settings from ``ROOST_*`` environment variables."""
    settings = AgentSettings()
    configure_logging(f"agent/{settings.hostname}", settings.log_level, settings.log_json)
    # ``agent.pid`` in the state directory: which process is this node's agent (operators and
    # the simulated fleet's users freeze or kill it by it). Removed at a clean exit only.
    pid_file = settings.state_dir / "agent.pid"
    with contextlib.suppress(OSError):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
    try:
        asyncio.run(run(settings))
    except KeyFileError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    finally:
        with contextlib.suppress(OSError):
            pid_file.unlink()


if __name__ == "__main__":
    main()
