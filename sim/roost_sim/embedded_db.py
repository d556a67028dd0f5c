"""The embedded database: SecantusDB, a MongoDB-wire server, run as a separate process.

SecantusDB is GPL-2.0-only; Roost (Apache-2.0) never imports it and talks to it only over the
MongoDB wire protocol, exactly as to mongod. It is a dev/run dependency, not a service one.
"""

from __future__ import annotations

import os
from pathlib import Path

from roost_sim.processes import ManagedProcess, port_ready, python_module


def url_for(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


def embedded_db(
    port: int, storage: Path | str, log_path: Path | None = None, cache_size: str | None = None
) -> ManagedProcess:
    """A SecantusDB server on ``port`` keeping data in ``storage`` (``":memory:"`` for tests).

    The WiredTiger cache is held to ``cache_size``, else ``ROOST_DB_CACHE_SIZE``, else 64 MB
    (its default is 1 GB): edge hosts are small and Roost's working set is tiny. A benchmark
    of 200 simulated hosts asks for more: with 64 MB, two of its runs wedged the server at
    the same point of the rollout (every connection thread waiting on the storage lock held
    by one stuck in a WiredTiger search; see bench/README.md, software_rollout).
    """
    cache = cache_size or os.environ.get("ROOST_DB_CACHE_SIZE") or "64M"
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
            cache,
            "--log-level",
            "WARNING",
        ),
        log_path=log_path,
        ready=port_ready(port),
    )
