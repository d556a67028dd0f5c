"""Service link load at 10 and 100 groups: messages per second of service management's "mesh".

Issue 6 asks for the messages per second of the heartbeat mesh at 100 groups. In Roost it is a
star, not a mesh: every agent whose host holds an activity lease says hello to the service
service every 200 ms over UDP and every 1 s over the bus (exchange ``roost.sm``), and each hello
is answered with a grant on the same path. Standbys hold no lease and send nothing, so 100
active/standby groups cost at worst 100 hosts with one lease each: 100 x (5 + 1) hellos/s and as
many grants, 1,200 messages/s.

Measured, per N = 10, 100 (hosts = groups, the worst case): a fresh **real service service**
process (its own database, ``ROOST_SM_LINK_PORT`` a free UDP port) and N **real**
``roost_agent.link.LinkClient`` in **one child process** (this script run with ``--clients``;
not in the benchmark's own event loop, whose stalls would look like link loss), each with a
stand-in for ``Instances`` that always holds leases and counts grants, all on one robust
aio-pika connection to the run's vhost, so both paths work. Clients start spread over one
period (independent hosts are not in step). After ``WARMUP_S`` the window (``BENCH_SECONDS``,
default 30 s) is measured from the clients' counters (``LinkClient.sent`` / ``.grants`` per
path: hellos sent = hellos the service received unless lost on the way), the service's CPU
(``utime+stime`` of ``/proc/<pid>/stat``, % of one core) and its mean ``VmRSS`` (1 s samples).
Then the clients stop saying hello (the stand-in stops holding leases: both paths at once, so no
path alarm), 1.5 s of drain, and the lost fraction is ``1 - grants / hellos`` over the whole run
per path (every reply that was going to come has come). The service log is searched for
``400.005 raised`` (a path declared silent: none expected on an idle machine).

No groups are declared, so every grant carries an empty lease list (the controller has none for
these hosts): the message count and the service's per-hello work (decode, peer book-keeping,
``grants_for``, encode, send) are the real ones; a grant with one lease is ~50 bytes longer.

Peer (computed, not run): a full peer mesh as StarlingX's sm does it, every pair of a group's
members exchanging heartbeats at the same 200 ms on 2 paths. For active/standby groups (2
members, 1 pair): per group 2 directions x 2 paths x 5/s = 20 messages/s, so ``20 x groups``
(2,000/s at 100 groups) — with no replies counted, and standbys talking as much as actives.
The peer column is only given for the total link messages/s (lower is better there).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # bench's common, the tests' stack helpers

from common import Result, bench_vhost, report, result  # noqa: E402
from fault_throughput import cpu_s, rss_mb  # noqa: E402

if TYPE_CHECKING:
    from tests.conftest import Stack

NAME = "sm_link_mesh"
SIZES = (10, 100)
SECONDS = float(os.environ.get("BENCH_SECONDS", "30"))
WARMUP_S = 3.0
DRAIN_S = 1.5
PERIOD_MS = 200
BUS_PERIOD_MS = 1000
PATHS = ("udp", "bus")
# Peer mesh: per active/standby group, 1 pair x 2 directions x 2 paths x (1000 / 200 ms) per s.
PEER_PER_GROUP = 1 * 2 * 2 * (1000 / PERIOD_MS)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# The child: N LinkClients in one process, driven over stdin -------------------------------------


class _Holding:
    """Stand-in for ``roost_agent.instances.Instances``: always holds a lease, counts grants."""

    def __init__(self) -> None:
        self.holding = True
        self.granted = 0

    def holds_leases(self) -> bool:
        return self.holding

    def grant(self, leases: object) -> None:
        self.granted += 1


async def clients_main(amqp_url: str, port: int, count: int) -> None:
    """Commands on stdin, one line each, answered with one JSON line: ``start``, ``snap``,
    ``quiet`` (stop every hello), ``quit``."""
    import aio_pika

    from roost_agent.link import LinkClient
    from roost_shared.hostkeys import host_key, link_key, read_key

    # The enrolment authority's secret (the service's): each client signs with its host's key.
    secret = read_key(Path(os.environ["ROOST_HEARTBEAT_SECRET_FILE"]))
    connection = await aio_pika.connect_robust(amqp_url)
    clients: list[LinkClient] = []
    stand_ins: list[_Holding] = []

    async def start(i: int) -> None:
        await asyncio.sleep(random.random() * PERIOD_MS / 1000)  # spread over one period
        holding = _Holding()
        mac = f"02:00:00:60:{i >> 8:02x}:{i & 0xFF:02x}"
        client = LinkClient(
            holding,  # type: ignore[arg-type]
            mac=mac,
            key=link_key(host_key(secret, mac)),
            hostname=f"sim-link-{i}",
            addr=f"127.0.0.1:{port}",
            period_ms=PERIOD_MS,
            bus_period_ms=BUS_PERIOD_MS,
        )
        await client.start(connection)
        clients.append(client)
        stand_ins.append(holding)

    def snap() -> dict[str, object]:
        return {
            "sent": {p: sum(c.sent[p] for c in clients) for p in PATHS},
            "grants": {p: sum(c.grants[p] for c in clients) for p in PATHS},
            "granted": sum(h.granted for h in stand_ins),
            "rejected": sum(c.rejected for c in clients),
            "udp_errors": sum(c.udp_errors.count for c in clients),
            "bus_errors": sum(c.bus_errors.count for c in clients),
            "clients": len(clients),
            "at": time.monotonic(),
        }

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line == "start":
            await asyncio.gather(*(start(i) for i in range(count)))
            print(json.dumps(snap()), flush=True)
        elif line == "snap":
            print(json.dumps(snap()), flush=True)
        elif line == "quiet":
            for h in stand_ins:
                h.holding = False
            print(json.dumps(snap()), flush=True)
        elif line == "quit":
            break
    for client in clients:
        await client.stop()
    await connection.close()


# The benchmark ----------------------------------------------------------------------------------


class Clients:
    """The child process and its line protocol (blocking reads run in a thread)."""

    def __init__(self, amqp_url: str, port: int, count: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--clients", amqp_url, str(port),
             str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    async def ask(self, command: str, wait_s: float = 60) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), wait_s)
        if not line:
            raise RuntimeError(f"client process exited ({self.proc.poll()}) on {command!r}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


async def one_size(stack: Stack, n: int) -> list[Result]:
    log(f"N={n}: starting the service service")
    svc = stack.start("service", ROOST_LOG_JSON="false")
    assert svc.proc is not None and svc.proc.proc is not None
    pid = svc.proc.proc.pid
    port = int(svc.env["ROOST_SM_LINK_PORT"])
    await asyncio.sleep(2)
    idle_c0, idle_t0 = cpu_s(pid), time.monotonic()
    await asyncio.sleep(3)
    idle_cpu = (cpu_s(pid) - idle_c0) / (time.monotonic() - idle_t0) * 100
    idle_rss = rss_mb(pid)
    log(f"N={n}: service idle {idle_cpu:.1f} % CPU, {idle_rss:.0f} MB; starting {n} clients")
    clients = Clients(stack.amqp_url, port, n)
    try:
        first = await clients.ask("start")
        log(f"N={n}: {first['clients']} clients talking; warm-up {WARMUP_S:.0f} s")
        await asyncio.sleep(WARMUP_S)
        a = await clients.ask("snap")
        c0, child_c0 = cpu_s(pid), cpu_s(clients.proc.pid)
        rss: list[float] = []
        end = time.monotonic() + SECONDS
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(1.0, left))
            rss.append(rss_mb(pid))
            if len(rss) % 10 == 0:
                log(f"N={n}: {len(rss)} s of {SECONDS:.0f}")
        b = await clients.ask("snap")
        c1, child_c1 = cpu_s(pid), cpu_s(clients.proc.pid)
        await clients.ask("quiet")
        await asyncio.sleep(DRAIN_S)
        z = await clients.ask("snap")
    finally:
        clients.close()
        svc.stop()
    window = b["at"] - a["at"]

    def rate(kind: str, path: str) -> float:
        return (b[kind][path] - a[kind][path]) / window

    hello = {p: rate("sent", p) for p in PATHS}
    grant = {p: rate("grants", p) for p in PATHS}
    total = sum(hello.values()) + sum(grant.values())
    lost = {p: 1 - z["grants"][p] / z["sent"][p] if z["sent"][p] else float("nan") for p in PATHS}
    cpu = (c1 - c0) / window * 100
    child_cpu = (child_c1 - child_c0) / window * 100
    service_log = svc.log_path.read_text(errors="replace")
    alarms = service_log.count("400.005 raised")
    warnings = [ln for ln in service_log.splitlines() if "WARNING" in ln or "ERROR" in ln]
    for line in warnings[:5]:
        log(f"N={n}: service log: {line}")
    peer = PEER_PER_GROUP * n
    log(
        f"N={n}: hellos/s udp {hello['udp']:.1f} bus {hello['bus']:.1f}, grants/s udp "
        f"{grant['udp']:.1f} bus {grant['bus']:.1f}; total {total:.1f}/s (peer mesh {peer:.0f}/s);"
        f" lost udp {lost['udp']:.4f} bus {lost['bus']:.4f}; service {cpu:.1f} % CPU, "
        f"{sum(rss) / len(rss):.0f} MB; clients' process {child_cpu:.1f} %; totals {z}; "
        f"400.005 raised: {alarms}"
    )
    return [
        result(f"hellos_per_s_udp_{n}", hello["udp"], "msg/s"),
        result(f"hellos_per_s_bus_{n}", hello["bus"], "msg/s"),
        result(f"grants_per_s_udp_{n}", grant["udp"], "msg/s"),
        result(f"grants_per_s_bus_{n}", grant["bus"], "msg/s"),
        result(f"link_msgs_per_s_{n}", total, "msg/s", "peer mesh", peer, higher_is_better=False),
        result(f"lost_fraction_udp_{n}", lost["udp"], "fraction"),
        result(f"lost_fraction_bus_{n}", lost["bus"], "fraction"),
        result(f"service_cpu_pct_{n}", cpu, "%"),
        result(f"service_rss_mb_{n}", sum(rss) / len(rss), "MB"),
        result(f"diag_service_idle_cpu_pct_{n}", idle_cpu, "%"),
        result(f"diag_service_idle_rss_mb_{n}", idle_rss, "MB"),
        result(f"diag_clients_cpu_pct_{n}", child_cpu, "%"),
        result(f"diag_rejected_{n}", z["rejected"], "count"),
        result(f"diag_send_errors_{n}", z["udp_errors"] + z["bus_errors"], "count"),
        result(f"diag_path_alarms_raised_{n}", alarms, "count"),
        result(f"diag_service_log_warnings_{n}", len(warnings), "count"),
    ]


async def main() -> None:
    from roost_shared.hostkeys import ensure_secret
    from tests.conftest import Stack
    from tests.support.stack import Tokens, Vhost, start_database

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="roost-bench-smlink-") as tmp:
        work = Path(tmp)
        # The site secret of the service and (inherited) the clients' process, as in the tests.
        os.environ["ROOST_HEARTBEAT_SECRET_FILE"] = str(work / "heartbeat-secret.key")
        ensure_secret(work / "heartbeat-secret.key")
        db, mongo_url = start_database(work)
        vhost = Vhost(bench_vhost(work)[0])
        stack = Stack(vhost, mongo_url, Tokens.create(work), work)
        try:
            for n in SIZES:
                results += await one_size(stack, n)
        finally:
            for svc in stack.services:
                svc.stop()
            vhost.delete()
            db.stop()
    report(NAME, results)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--clients"]:
        import uvloop

        uvloop.run(clients_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        asyncio.run(main())
