"""Real packet loss for tests and benchmarks: an nftables table of the caller's own.

``tc netem`` is not available here; nftables is (tests run as root). Each :func:`nft_table`
creates ``inet roost_t<pid>_<random>`` with one chain on the **input** hook (ARCHITECTURE:
dropping on output makes ``sendto`` fail with EPERM, which is a different fault from a lossy
network) and deletes it on exit, also when the body raises. Rules can change while it is open::

    with nft_table() as t:
        t.drop_udp(8199)                              # cut one path
        t.drop_udp(8199, saddr="127.1.0.5")           # only one host's datagrams
        t.drop_udp(8199, percent=10)                  # ~10 % loss
        t.flush()                                     # all rules gone, table kept

:func:`clean_leftovers` removes ``roost_t*`` tables that a killed run left behind (the session
fixture calls it at start; tables of live processes are kept). All traffic concerned is loopback.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

PREFIX = "roost_t"


def nft(*args: str, stdin: str | None = None) -> str:
    """Run ``nft`` and return its output; raise with its stderr on failure."""
    done = subprocess.run(
        ["nft", *args] if stdin is None else ["nft", "-f", "-"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode:
        raise RuntimeError(f"nft {' '.join(args) or '-f -'} failed: {done.stderr.strip()}")
    return done.stdout


def available() -> bool:
    """True if nft runs and may change the ruleset (root, kernel support)."""
    if shutil.which("nft") is None:
        return False
    try:
        nft("list", "tables")
    except (RuntimeError, OSError):
        return False
    return True


def tables() -> list[str]:
    """Names of the ``inet`` tables made by this module that exist now."""
    names = []
    for line in nft("list", "tables").splitlines():
        family, _, name = line.removeprefix("table ").partition(" ")
        if family == "inet" and name.startswith(PREFIX):
            names.append(name)
    return names


def _owner_alive(name: str) -> bool:
    """Tables are named ``roost_t<pid>_<hex>``: is the process that made it still running?"""
    pid, sep, _ = name.removeprefix(PREFIX).partition("_")
    if not sep or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers() -> list[str]:
    """Delete the ``roost_t*`` tables whose process is gone (a killed run); tables of another
    test session or benchmark running right now are left alone. Returns the names deleted."""
    removed = []
    for name in tables():
        if _owner_alive(name):
            continue
        with contextlib.suppress(RuntimeError):
            nft("delete", "table", "inet", name)
            removed.append(name)
    return removed


class Table:
    """One table with an input-hook filter chain ``input``; rules are appended in order."""

    def __init__(self, name: str) -> None:
        self.name = name

    def create(self) -> None:
        nft(
            stdin=f"table inet {self.name} {{\n"
            "  chain input { type filter hook input priority -10; policy accept; }\n"
            "}\n"
        )

    def add(self, rule: str) -> None:
        """Append a raw nft rule (``"udp dport 8199 drop"``) to the input chain."""
        nft("add", "rule", "inet", self.name, "input", *rule.split())

    def drop_udp(self, port: int, *, percent: float = 100, saddr: str | None = None) -> None:
        """Drop UDP datagrams to ``port`` (from ``saddr`` only, if given), all of them or a
        random ``percent`` (``numgen random mod 100 < K``: each packet independently)."""
        if not 0 <= percent <= 100:
            raise ValueError("percent must be within 0..100")
        parts = [f"udp dport {port}"]
        if saddr:
            parts.append(f"ip saddr {saddr}")
        if percent < 100:
            parts.append(f"numgen random mod 100 < {round(percent)}")
        self.add(" ".join([*parts, "counter", "drop"]))

    def flush(self) -> None:
        """Remove every rule (stop dropping) and keep the table."""
        nft("flush", "chain", "inet", self.name, "input")

    def dropped(self) -> int:
        """Packets dropped so far by this table's rules (their counters)."""
        total = 0
        for line in nft("list", "chain", "inet", self.name, "input").splitlines():
            words = line.split()
            if "packets" in words:
                total += int(words[words.index("packets") + 1])
        return total

    def delete(self) -> None:
        with contextlib.suppress(RuntimeError):
            nft("delete", "table", "inet", self.name)


@contextlib.contextmanager
def nft_table() -> Iterator[Table]:
    """A fresh ``inet roost_t<pid>_<random>`` table with an input chain, deleted on exit however the
    body ends. Sync on purpose: each ``nft`` call takes a few ms, and async tests can use it in
    a plain ``with`` (or wrap calls in ``asyncio.to_thread`` when that matters)."""
    table = Table(f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}")
    table.create()
    try:
        yield table
    finally:
        table.delete()
