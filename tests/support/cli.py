"""Running the ``roost`` CLI as a real subprocess, as a user would."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


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


_UNSET: Any = object()


@dataclass
class RoostRunner:
    """Runs ``python -m roost_cli.main URL_FLAG URL ...`` with a clean environment (no stray
    credentials); subclasses name the service's URL flag. ``token`` (overridable per call,
    ``None`` for none) becomes ``ROOST_TOKEN``."""

    url_flag: ClassVar[str]

    url: str
    token: str | None
    home: Path

    async def __call__(
        self, *args: str, stdin: str | None = None, token: Any = _UNSET, **env: str
    ) -> Run:
        chosen = self.token if token is _UNSET else token
        clean = clean_env(self.home, **env)
        if chosen is not None:
            clean["ROOST_TOKEN"] = chosen
        return await run_cli([self.url_flag, self.url, *args], clean, stdin)

    def allowed_err(self, args: tuple[str, ...], err: str) -> bool:
        """Whether a successful run may still write ``err`` (by default nothing may)."""
        return False

    async def ok(self, *args: str, **kw: Any) -> Run:
        run = await self(*args, **kw)
        assert run.code == 0, run.err
        assert run.err == "" or self.allowed_err(args, run.err), run.err
        return run

    async def js(self, *args: str, **kw: Any) -> Any:
        return (await self.ok("--format", "json", *args, **kw)).json()
