"""The service link's path judgement (``roost_service.link.LinkServer``), without sockets: which
(host, path) pairs are 400.005 and when, and what a hello is answered with."""

from __future__ import annotations

import time
from typing import Any

from roost_service.link import LinkServer
from roost_shared.smlink import Hello, Lease, decode_grant, encode

LEASE = Lease(i="gw.gw.worker-0", k=7, e=1_900_000_000_000)


def server() -> LinkServer:
    none: Any = None
    return LinkServer(
        none, none, none, lambda host: [LEASE] if host == "worker-0" else [], path_timeout_s=3.0
    )


def mac_of(host: str) -> str:
    """The MAC of ``worker-<n>`` here (peers are kept by MAC)."""
    return f"02:00:00:00:00:{int(host.rsplit('-', 1)[-1]) + 1:02x}"


def hello(link: LinkServer, path: str, host: str = "worker-0") -> bytes | None:
    """A hello heard on ``path``; the grant the server answers with (None if undecodable)."""
    hello = Hello(
        mac=mac_of(host), host=host, seq=time.monotonic_ns(), path=path, ts=time.time_ns()
    )
    data = encode(hello)
    answer = link.answer(data, path)
    return answer[0] if answer is not None else None


def test_a_hello_is_answered_with_the_hosts_leases_and_garbage_is_counted():
    link = server()
    grant = decode_grant(hello(link, "udp") or b"")
    assert grant.leases == [LEASE] and grant.path == "udp"
    assert decode_grant(hello(link, "bus", host="worker-1") or b"").leases == []
    assert link.answer(b"not json", "udp") is None and link.rejected == 1
    assert link.received == {"udp": 1, "bus": 1}


def test_one_silent_path_while_the_other_talks_is_wanted_and_both_silent_is_not():
    link = server()
    hello(link, "udp")
    hello(link, "bus")
    now = time.monotonic()
    assert link.wanted(now) == set()
    link.peers[mac_of("worker-0")].heard["bus"] = now - 3.5  # the bus went quiet, UDP still talks
    assert link.wanted(now) == {("worker-0", "bus")}
    link.peers[mac_of("worker-0")].heard["udp"] = (
        now - 3.5
    )  # every path silent: the host service's call
    assert link.wanted(now) == set()


def test_a_path_never_heard_gets_a_grace_and_a_peer_back_from_silence_starts_afresh():
    link = server()
    hello(link, "udp")  # a new peer: its bus has not spoken yet
    now = time.monotonic()
    assert link.wanted(now) == set()
    assert link.wanted(now + 3.5) == set()  # both silent by then: nothing
    link.peers[mac_of("worker-0")].heard["udp"] = now + 3.4
    assert link.wanted(now + 3.5) == {("worker-0", "bus")}  # UDP talks, the bus never did

    # Back after a pause on every path (a standby again holds a lease): no stale alarm.
    peer = link.peers[mac_of("worker-0")]
    peer.heard = {"udp": now - 10, "bus": now - 10}
    hello(link, "udp")
    assert link.wanted(time.monotonic()) == set()
