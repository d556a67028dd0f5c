"""Well-known all-in-one ports (ARCHITECTURE.md) and a free-port finder for tests."""

from __future__ import annotations

import random
import socket

from roost_shared.settings import EMBEDDED_DB_PORT

SERVICE_PORTS: dict[str, int] = {
    "dashboard": 8100,
    "config": 8101,
    "fault": 8102,
    "host": 8103,
    "service": 8104,
    "software": 8105,
}
DB_PORT = EMBEDDED_DB_PORT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port(low: int = 10000, high: int = 20000) -> int:
    """A UDP port on 127.0.0.1 that nothing is bound to right now (TCP and UDP ports are
    separate: a free TCP port may be some sender's or simulated BMC's UDP port).

    Chosen below the kernel's ephemeral range (``ip_local_port_range``, 32768+) and below the
    simulated BMCs' blocks (20000+), like the all-in-one's fixed 8198/8199: a leader's link
    port is free between two terms, and an ephemeral one could meanwhile go to any socket the
    system opens (at 200 simulated hosts a new term of the service service found its port
    taken and could not bind it)."""
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free UDP port in [{low}, {high})")


def udp_port_block(count: int, low: int = 20000, high: int = 40000) -> int:
    """The first of ``count`` consecutive UDP ports on 127.0.0.1 that are free right now (for
    simulated BMCs, which take one port each)."""
    for _ in range(200):
        base = random.randrange(low, high - count)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {count} free UDP ports")


def is_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0
