"""The embedded database: SecantusDB, a MongoDB-wire server, run as a separate process.

SecantusDB is GPL-2.0-only; Roost (Apache-2.0) never imports it and talks to it only over the
MongoDB wire protocol, exactly as to mongod. It is a dev/run dependency, not a service one.
"""

from __future__ import annotations

from pathlib import Path

from roost_sim.processes import ManagedProcess, port_ready, python_module


def url_for(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


def embedded_db(port: int, storage: Path | str, log_path: Path | None = None) -> ManagedProcess:
    """A SecantusDB server on ``port`` keeping data in ``storage`` (``":memory:"`` for tests).

    The WiredTiger cache is held to 64 MB (its default is 1 GB): edge hosts are small and
    Roost's working set is tiny.
    """
    return ManagedProcess(
        "database",
        python_module(
            "secantus",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(storage),
            "--cache-size",
            "64M",
            "--log-level",
            "WARNING",
        ),
        log_path=log_path,
        ready=port_ready(port),
    )
