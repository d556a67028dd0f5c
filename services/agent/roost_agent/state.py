"""What the agent keeps on disk, always written atomically (temporary file, fsync, rename).

Layout under ``state_dir``::

    applied.json           {"version": N} -- the last configuration applied successfully
    config/<N>.json        every configuration received (the command's payload)
    config/current.json    the configuration the host runs (a copy of the newest applied)
    metrics.prom           the agent's counters in Prometheus text format (textfile collector)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from roost_shared.files import write_atomic


class AgentState:
    """The applied configuration version and the configuration files."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.config_dir = state_dir / "config"
        self._applied_path = state_dir / "applied.json"
        self.applied = self._load_applied()

    def _load_applied(self) -> int:
        try:
            return int(json.loads(self._applied_path.read_text())["version"])
        except FileNotFoundError:
            return 0

    def config_path(self, version: int) -> Path:
        return self.config_dir / f"{version}.json"

    @property
    def current_path(self) -> Path:
        return self.config_dir / "current.json"

    def write_config(self, version: int, document: dict[str, Any]) -> Path:
        """Write ``config/<version>.json``; returns its path (handed to the hooks)."""
        path = self.config_path(version)
        write_atomic(path, json.dumps(document, indent=2, sort_keys=True).encode())
        return path

    def commit(self, version: int) -> None:
        """Make ``version`` current and remember it as applied."""
        write_atomic(self.current_path, self.config_path(version).read_bytes())
        write_atomic(self._applied_path, json.dumps({"version": version}).encode())
        self.applied = version
