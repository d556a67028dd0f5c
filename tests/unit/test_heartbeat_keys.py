"""Per-host keys, replay state, the host service's heartbeat guard, signed link messages and the
agent's lease clamp, without processes."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from roost_agent.instances import Instances
from roost_host.guard import HeartbeatGuard
from roost_shared.heartbeat import Heartbeat, encode
from roost_shared.hostkeys import (
    KeyFileError,
    SiteSecretSettings,
    ensure_secret,
    host_key,
    link_key,
    site_secret,
)
from roost_shared.metrics import Metrics
from roost_shared.replay import Refusal, Stream
from roost_shared.smlink import BadLinkMessage, Hello, decode_hello
from roost_shared.smlink import encode as encode_link

SECRET = bytes(range(32))
MAC = "02:00:00:00:00:01"
BOOT = uuid.UUID(int=1).bytes


def test_host_keys_differ_per_host_and_per_purpose():
    a, b = host_key(SECRET, MAC), host_key(SECRET, "02:00:00:00:00:02")
    assert a != b and len(a) == 32
    assert link_key(a) != a
    assert host_key(SECRET, bytes.fromhex("020000000001")) == a


def test_services_refuse_to_start_without_a_secret_unless_told(tmp_path: Path):
    with pytest.raises(KeyFileError, match="ROOST_HEARTBEAT_SECRET_FILE"):
        site_secret(SiteSecretSettings())
    assert site_secret(SiteSecretSettings(heartbeat_insecure=True)) is None
    path = tmp_path / "s.key"
    assert site_secret(
        SiteSecretSettings(heartbeat_secret_file=path if ensure_secret(path) else None)
    )
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(KeyFileError, match="not hex"):
        site_secret(SiteSecretSettings(heartbeat_secret="zz"))


def test_a_stream_refuses_replays_old_boots_and_stale_new_boots():
    s, now, window = Stream(), time.time_ns(), 60 * 10**9
    assert s.check(BOOT, 10, 0, now, now, window) is None
    assert s.check(BOOT, 10, 0, now, now, window) is Refusal.replay
    assert s.check(BOOT, 9, 0, now, now, window) is Refusal.replay
    assert s.check(BOOT, 5, 1, now, now, window) is None  # the other path has its own
    new = uuid.UUID(int=2).bytes
    assert s.check(new, 1, 0, now - 2 * window, now, window) is Refusal.stale
    assert s.check(new, 1, 0, now, now, window) is None  # a reboot
    assert s.check(BOOT, 11, 0, now, now, window) is Refusal.old_boot


def guard(**kw) -> HeartbeatGuard:
    g = HeartbeatGuard(SECRET, Metrics(f"test-guard-{uuid.uuid4().hex[:6]}"), **kw)
    g.learn(MAC, "127.1.0.1")
    return g


def beat(seq: int, key: bytes | None, mac: str = MAC) -> bytes:
    hb = Heartbeat(mac, seq=seq, sent_ns=time.time_ns(), boot_id=str(uuid.UUID(int=1)))
    return encode(hb, key)


def test_the_guard_believes_only_signed_new_heartbeats_from_the_hosts_address():
    g, key, now = guard(), host_key(SECRET, MAC), time.time_ns()
    assert g.check(beat(1, key), 0, "127.1.0.1", now) is not None
    assert g.check(beat(1, key), 0, "127.1.0.1", now) is None
    assert g.check(beat(2, None), 0, "127.1.0.1", now) is None
    assert g.check(beat(2, b"x" * 32), 0, "127.1.0.1", now) is None
    assert g.check(beat(2, key), 0, "127.0.0.1", now) is None
    other = "02:00:00:00:00:09"
    assert g.check(beat(2, host_key(SECRET, other), other), 0, "127.1.0.1", now) is None
    assert g.check(beat(2, key), 1, None, now) is not None  # the bus: no address
    assert g.check(beat(3, key), 0, "127.1.0.1", now) is not None
    counts = {r.value: n for r, n in g.counts.items() if n}
    assert counts == {
        "replay": 1,
        "unsigned": 1,
        "bad-signature": 1,
        "source": 1,
        "unknown-host": 1,
    }


def test_the_guard_without_a_secret_or_source_check():
    g = HeartbeatGuard(None, Metrics("test-guard-insecure"), check_source=False)
    g.learn(MAC, "127.1.0.1")
    assert g.check(beat(1, None), 0, "10.0.0.1", time.time_ns()) is not None


def test_link_messages_open_only_with_the_key_of_the_mac_they_name():
    key = link_key(host_key(SECRET, MAC))
    hello = Hello(mac=MAC, host="worker-0", seq=1, path="udp", boot="b", ts=1)
    data = encode_link(hello, key)
    assert decode_hello(data, key) == hello
    with pytest.raises(BadLinkMessage, match="signature"):
        decode_hello(data, link_key(host_key(SECRET, "02:00:00:00:00:02")))
    with pytest.raises(BadLinkMessage, match="unsigned"):
        decode_hello(encode_link(hello), key)
    with pytest.raises(BadLinkMessage):
        decode_hello(encode_link(hello).replace(b"worker-0", b"worker 0"))


def test_an_agent_believes_no_lease_longer_than_its_bound(tmp_path: Path):
    instances = Instances(
        mgmt_mac=MAC, hostname="worker-0", state_dir=tmp_path, report=lambda *_: None,
        margin_s=0.5, max_lease_s=4.0,
    )  # fmt: skip
    instances._extend("gw", time.time() + 10 * 365 * 86400)  # a forged ten-year grant
    assert instances._lease_until["gw"] <= time.monotonic() + 3.5 + 0.01
    assert instances.clamped == 1
