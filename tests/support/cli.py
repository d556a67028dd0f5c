"""Running the ``roost`` CLI as a real subprocess, as a user would."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def error_line(self) -> str:
        """The single stderr line of a failed run (asserting it is exactly one)."""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, f"expected one stderr line, got: {self.err!r}"
        assert "Traceback" not in self.err
        return lines[0]


def clean_env(home: Path, **env: str) -> dict[str, str]:
    """This process's environment without any ROOST_* setting, with a home of the test's own."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    clean.update(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "COLUMNS": "250",
            "NO_COLOR": "1",
            **env,
        }
    )
    return clean


async def run_cli(args: list[str], env: dict[str, str], stdin: str | None = None) -> Run:
    """``python -m roost_cli.main *args`` with ``env``; at most 30 s."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roost_cli.main",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    data = stdin.encode() if stdin is not None else None
    out, err = await asyncio.wait_for(proc.communicate(data), timeout=30)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())
