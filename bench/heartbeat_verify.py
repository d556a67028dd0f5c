"""What checking heartbeats costs the host service: datagrams per second per core through the
receive path's checks, before (unsigned: size, magic and kind, as the code was before per-host
keys) and after (signed with each host's own key: size, MAC lookup, source address, HMAC-SHA256,
unpack, boot id and sequence per path: ``roost_host.guard.HeartbeatGuard.check``).

In-process and single-threaded (``time.process_time``), over a stream shaped like 1,000 hosts
at 10 Hz (each host's datagrams in sequence order, hosts interleaved), so what is measured is
the check alone, not the socket (bench/heartbeat_detection.py measures the whole service).
Also a stream of replays and one of forgeries: what a flood of them costs.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

from common import report, result

from roost_host.guard import HeartbeatGuard
from roost_shared.heartbeat import FORMAT, MAGIC, SIZE, Heartbeat, Kind, encode
from roost_shared.hostkeys import host_key
from roost_shared.metrics import Metrics

NAME = "heartbeat_verify"
HOSTS = 1_000
ROUNDS = int(os.environ.get("BENCH_HB_ROUNDS", "300"))  # datagrams per host
#: The 10,000 datagrams/s of 1,000 hosts at 10 Hz, as a share of one core (target: small).
LOAD_PER_S = 10_000


def mac(i: int) -> str:
    return f"02:00:00:{i >> 8:02x}:{i & 0xFF:02x}:00"


def ip(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


def stream(secret: bytes | None) -> list[tuple[bytes, str]]:
    boots = [str(uuid.uuid4()) for _ in range(HOSTS)]
    keys = [host_key(secret, mac(i)) if secret else None for i in range(HOSTS)]
    now = time.time_ns()
    out = []
    for r in range(ROUNDS):
        for i in range(HOSTS):
            hb = Heartbeat(mac(i), seq=r + 1, sent_ns=now, boot_id=boots[i], kind=Kind.periodic)
            out.append((encode(hb, keys[i]), ip(i)))
    return out


def unsigned_check(data: bytes, by_raw: dict[bytes, object]) -> object | None:
    """The receive path's checks before per-host keys (``roost_shared.heartbeat.unpack`` with
    no key, then the monitor's lookup)."""
    if len(data) != SIZE:
        return None
    magic, kind, mac_raw, _seq, _sent, _boot, _probe = FORMAT.unpack_from(data)
    if magic != MAGIC or kind > Kind.stopping:
        return None
    return by_raw.get(mac_raw)


def per_second(run, items: list[tuple[bytes, str]]) -> float:
    started = time.process_time()
    run(items)
    return len(items) / (time.process_time() - started)


def main() -> int:
    secret = os.urandom(32)
    plain, signed = stream(None), stream(secret)
    by_raw = {bytes.fromhex(mac(i).replace(":", "")): object() for i in range(HOSTS)}

    def before(items: list[tuple[bytes, str]]) -> None:
        for data, _src in items:
            unsigned_check(data, by_raw)

    def guard() -> HeartbeatGuard:
        g = HeartbeatGuard(secret, Metrics("bench-guard"), boot_window_s=3600)
        for i in range(HOSTS):
            g.learn(mac(i), ip(i))
        return g

    accepted = 0

    def after(items: list[tuple[bytes, str]], g: HeartbeatGuard | None = None) -> None:
        nonlocal accepted
        g = g or guard()
        check, now = g.check, time.time_ns()
        for data, src in items:
            if check(data, 0, src, now) is not None:
                accepted += 1

    before_rate = per_second(before, plain)
    after_rate = per_second(after, signed)
    if accepted != len(signed):
        print(f"heartbeat_verify: only {accepted} of {len(signed)} accepted", file=sys.stderr)
        return 1
    warm = guard()
    after(signed, warm)  # every stream known: the second pass is all replays
    replay_rate = per_second(lambda items: after(items, warm), signed)
    forged = [(d[:SIZE] + os.urandom(16), s) for d, s in signed[: HOSTS * 50]]
    forged_rate = per_second(lambda items: after(items, guard()), forged)
    results = [
        result("verify_per_s_unsigned_before", before_rate, "dgram/s"),
        result("verify_per_s_signed_after", after_rate, "dgram/s", "unsigned", before_rate),
        result("verify_per_s_replays", replay_rate, "dgram/s"),
        result("verify_per_s_forgeries", forged_rate, "dgram/s"),
        result("core_pct_at_10k_per_s_before", 100 * LOAD_PER_S / before_rate, "%", None, None),
        result(
            "core_pct_at_10k_per_s_after",
            100 * LOAD_PER_S / after_rate,
            "%",
            "unsigned",
            100 * LOAD_PER_S / before_rate,
            higher_is_better=False,
        ),
    ]
    report(NAME, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
