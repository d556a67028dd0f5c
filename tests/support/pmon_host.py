"""An agent-like process for the no-orphan test: one ProcessMonitor running one spec until it is
killed. ``python -m tests.support.pmon_host STATE_DIR SPEC_JSON``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from roost_agent.pmon import ProcessMonitor, ProcessSpec


async def main(state_dir: Path, spec_json: str) -> None:
    monitor = ProcessMonitor(state_dir=state_dir)
    monitor.start(ProcessSpec.model_validate_json(spec_json))
    await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
