"""One all-in-one per state directory: ``make run`` holds an exclusive ``flock`` on
``<state>/roost.pid`` (which names its pid and dashboard) for as long as it runs. The kernel
drops the lock when the process ends however it ends, so a killed run never leaves it stale."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ValidationError

LOCK_FILE = "roost.pid"


class Holder(BaseModel):
    pid: int
    dashboard: str


class AlreadyRunning(Exception):
    """Another process holds the state directory's lock."""

    def __init__(self, holder: Holder | None) -> None:
        self.holder = holder
        what = f"pid {holder.pid}, dashboard {holder.dashboard}" if holder else "pid unknown"
        super().__init__(f"Roost is already running ({what}); stop it first")


def acquire(state: Path, dashboard: str) -> IO[str]:
    """Take the lock or raise :class:`AlreadyRunning`; keep the returned file open (and
    referenced) for as long as the run lasts. It is not inherited by child processes."""
    state.mkdir(parents=True, exist_ok=True)
    handle = open(state / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        text = handle.read()
        handle.close()
        holder = None
        with contextlib.suppress(ValidationError):
            holder = Holder.model_validate_json(text)
        raise AlreadyRunning(holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "dashboard": dashboard}))
    handle.flush()
    return handle
