"""Many simulated hosts' heartbeats in one process, driven over stdin (for heartbeat_detection).

The senders run apart from the benchmark's own process so that its HTTP calls and event
parsing never delay a heartbeat (a stalled sender process looks exactly like a site-wide
fault). Each host has the agent's own ``HeartbeatSender``; all share one ``HeartbeatBus``.

    python bench/_heartbeat_fleet.py AMQP_URL PORT FIRST_INDEX COUNT

Commands on stdin, one per line, each answered with one line on stdout:
``start I`` / ``stop I`` (host I's both paths, like power on/cut; answers ``ok I <wall time>``),
``startall`` (answers ``ok`` once every sender runs), ``quit``.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import uuid
from pathlib import Path

import uvloop

from roost_agent.heartbeat import HeartbeatBus, HeartbeatSender
from roost_shared.hostkeys import host_key, read_key
from roost_shared.metrics import Metrics
from roost_shared.producer import ProducerBus
from roost_shared.settings import RoostSettings

PERIOD_MS = 100
#: The agents' default; ROOST_BUS_HEARTBEAT_PERIOD_MS overrides it, as it does for an agent.
BUS_PERIOD_MS = int(os.environ.get("ROOST_BUS_HEARTBEAT_PERIOD_MS", "5000"))


def sim_mac(n: int) -> str:
    return f"02:00:00:{n >> 8:02x}:{n & 0xFF:02x}:00"


def sim_ip(n: int) -> str:
    return f"127.1.{n // 250 % 250}.{n % 250 + 1}"


async def main(amqp_url: str, port: int, first: int, count: int) -> None:
    # Only its connection is used (heartbeats, signed with each host's key); an event published
    # here would go out as its owner's broker user.
    bus = ProducerBus(RoostSettings(service="bench-senders", amqp_url=amqp_url), Metrics("bench"))
    await bus.connect(deadline_s=30)
    assert bus.connection is not None
    senders: dict[int, HeartbeatSender] = {}
    secret_file = os.environ.get("ROOST_HEARTBEAT_SECRET_FILE")
    secret = read_key(Path(secret_file)) if secret_file else None

    async def start(i: int) -> None:
        n = first + i
        sender = HeartbeatSender(
            sim_mac(n),
            str(uuid.uuid4()),  # a new boot each start
            addr=f"127.0.0.1:{port}",
            period_ms=PERIOD_MS,
            bus_period_ms=BUS_PERIOD_MS,
            bind_ip=sim_ip(n),
            key=host_key(secret, sim_mac(n)) if secret is not None else None,
            phase=random.random(),  # independent hosts are not in step
        )
        sender.start()
        await sender.attach(await HeartbeatBus.shared(bus.connection))  # type: ignore[arg-type]
        senders[i] = sender

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        match line:
            case ["startall"]:
                for i in range(0, count, 50):  # declares in flight together
                    await asyncio.gather(*(start(j) for j in range(i, min(i + 50, count))))
                print("ok", flush=True)
            case ["start", i]:
                await start(int(i))
                print(f"ok {i} {time.time()}", flush=True)
            case ["stop", i]:
                sender = senders.pop(int(i))
                at = time.time()
                await sender.stop()
                print(f"ok {i} {at}", flush=True)
            case ["quit"]:
                break
    for sender in senders.values():
        await sender.stop()
    await bus.close()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
