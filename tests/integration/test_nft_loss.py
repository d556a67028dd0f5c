"""tests/support/nft.py drops what it is told to on the input hook, and cleans up after itself."""

from __future__ import annotations

import os
import socket

import pytest

from roost_sim.ports import free_port
from tests.support import nft

pytestmark = pytest.mark.skipif(not nft.available(), reason="needs nft and root")

DATAGRAMS = 2_000


def blast(port: int, source: str = "127.0.0.1") -> int:
    """Send DATAGRAMS datagrams to 127.0.0.1:port and return how many arrived (sent in slices
    small enough for the receive buffer, drained after each)."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("127.0.0.1", port))
        tx.bind((source, 0))
        got = 0
        for start in range(0, DATAGRAMS, 100):
            for i in range(start, start + 100):
                tx.sendto(i.to_bytes(4, "big"), ("127.0.0.1", port))  # never EPERM: input hook
            while True:
                try:
                    rx.recv(64, socket.MSG_DONTWAIT)
                    got += 1
                except BlockingIOError:
                    break
        return got


def test_random_loss_full_block_per_source_and_cleanup():
    port = free_port()
    with nft.nft_table() as table:
        assert table.name in nft.tables()
        table.drop_udp(port, percent=10)
        got = blast(port)
        assert 0.85 * DATAGRAMS <= got <= 0.95 * DATAGRAMS, got  # ~10 % lost
        assert table.dropped() == DATAGRAMS - got

        table.flush()
        table.drop_udp(port)
        assert blast(port) == 0

        table.flush()
        table.drop_udp(port, saddr="127.1.0.7")
        assert blast(port, "127.1.0.7") == 0
        assert blast(port, "127.1.0.8") == DATAGRAMS  # other hosts unaffected
    assert table.name not in nft.tables()


def test_table_is_deleted_when_the_body_fails():
    with pytest.raises(RuntimeError, match="boom"), nft.nft_table() as table:
        table.drop_udp(free_port())
        raise RuntimeError("boom")
    assert table.name not in nft.tables()


def test_leftovers_are_cleaned():
    dead = nft.Table(nft.PREFIX + "999999999_dead")  # no such pid
    mine = nft.Table(f"{nft.PREFIX}{os.getpid()}_live")
    dead.create()
    mine.create()
    try:
        assert nft.clean_leftovers() == [dead.name]
        assert dead.name not in nft.tables() and mine.name in nft.tables()
    finally:
        dead.delete()
        mine.delete()
