"""Applying a configuration: write it, run the hooks, remember the version.

Hooks are the node-specific part (render files, restart daemons): every executable in the
``apply_hooks`` directory, in name order, run as ``HOOK VERSION PATH``. The first that fails
(non-zero exit or timeout) fails the apply with the tail of its stderr; the version is then not
recorded as applied, so the same version can be sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from roost_agent.state import AgentState
from roost_shared.catalog import ConfigApply

log = logging.getLogger(__name__)

ERROR_TAIL = 1500  # ConfigApplied.error holds at most 2000 characters


@dataclass(frozen=True, slots=True)
class Outcome:
    version: int
    ok: bool
    error: str | None = None
    #: False for an already applied version: nothing was written or run.
    changed: bool = True


class Applier:
    def __init__(self, state: AgentState, hooks_dir: Path | None, hook_timeout_s: float) -> None:
        self.state = state
        self.hooks_dir = hooks_dir
        self.hook_timeout_s = hook_timeout_s

    async def apply(self, command: ConfigApply) -> Outcome:
        """Idempotent: a version at or below the applied one only re-confirms the applied one."""
        if command.version <= self.state.applied:
            return Outcome(self.state.applied, ok=True, changed=False)
        try:
            path = await asyncio.to_thread(
                self.state.write_config, command.version, command.model_dump(mode="json")
            )
        except OSError as exc:
            return Outcome(command.version, ok=False, error=f"cannot write config: {exc}")
        for hook in self.hooks():
            error = await self._run(hook, command.version, path)
            if error is not None:
                return Outcome(command.version, ok=False, error=error)
        await asyncio.to_thread(self.state.commit, command.version)
        return Outcome(command.version, ok=True)

    def hooks(self) -> list[Path]:
        if self.hooks_dir is None or not self.hooks_dir.is_dir():
            return []
        return [
            p
            for p in sorted(self.hooks_dir.iterdir())
            if p.is_file() and os.access(p, os.X_OK) and not p.name.startswith(".")
        ]

    async def _run(self, hook: Path, version: int, path: Path) -> str | None:
        """Run one hook; None when it succeeded, else the error to report."""
        proc = await asyncio.create_subprocess_exec(
            str(hook),
            str(version),
            str(path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), self.hook_timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return f"hook {hook.name} timed out after {self.hook_timeout_s:g}s"
        if proc.returncode == 0:
            return None
        tail = stderr.decode(errors="replace").strip()[-ERROR_TAIL:]
        log.warning("hook %s failed with %s: %s", hook.name, proc.returncode, tail)
        return f"hook {hook.name} exited with {proc.returncode}: {tail}"
