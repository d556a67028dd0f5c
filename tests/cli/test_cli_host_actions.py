"""``roost host-lock`` and friends, and ``roost host-timeline``, run as real processes against a
real host service."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from roost_shared.catalog import HostRecord, Personality
from roost_shared.events import Envelope
from tests.config.helpers import new_mac
from tests.support.waiting import eventually


async def roost(url: str, token: str, home: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        COLUMNS="250",
        NO_COLOR="1",
        ROOST_TOKEN=token,
        ROOST_HOST_URL=url,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roost_cli.main",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_host_actions_and_timeline(stack, tmp_path: Path) -> None:
    host = stack.start("host", ROOST_INTEST_S="0.3", ROOST_STEP_S="0.3")
    bus = await stack.bus()
    rec = HostRecord(
        uuid=str(uuid.uuid4()),
        hostname="worker-2",
        personality=Personality.worker,
        mgmt_mac=new_mac(),
        install_state="provisioned",
    )
    await bus.publish([Envelope.of(rec, type="config.host.added", source="test/config")])

    async def run(*args: str, token: str = stack.tokens.admin) -> tuple[int, str, str]:
        return await roost(host.url, token, tmp_path, *args)

    async def learned() -> bool:
        code, _, _ = await run("host-timeline", "worker-2")
        return code == 0

    await eventually(learned, what="host learned")

    code, out, err = await run("--format", "json", "host-unlock", "worker-2", "--reason", "ready")
    assert code == 0, err
    body: dict[str, Any] = json.loads(out)
    assert body["availability"] == "intest" and body["task"] == "Testing"

    async def available() -> bool:
        code, out, _ = await run("--format", "json", "host-timeline", "worker-2")
        return code == 0 and json.loads(out)["timeline"][-1]["reason"] == "intest-passed"

    await eventually(available, what="in-test passed")

    # Wrong state: one error line with the reason and the current state, exit code 1.
    code, out, err = await run("host-reboot", "worker-2")
    assert code == 1 and out == ""
    assert err.startswith("roost: error: 409 cannot reboot worker-2: it is unlocked")
    assert "unlocked-enabled-available" in err and len(err.strip().splitlines()) == 1

    code, out, err = await run("host-lock", "worker-2")
    assert code == 0, err
    assert "administrative" in out and "locked" in out
    code, out, err = await run("host-power-off", rec.uuid)
    assert code == 0 and "power-off" in out, err

    code, out, err = await run("host-timeline", "worker-2")
    assert code == 0, err
    for text in ("learned", "intest-passed", "operator-request", "locked-disabled-power-off"):
        assert text in out
    code, out, _ = await run("--format", "json", "host-timeline", "worker-2", "--limit", "2")
    assert len(json.loads(out)["timeline"]) == 2

    # A reader may not act; an unknown host is exit code 5.
    code, _, err = await run("host-power-on", "worker-2", token=stack.tokens.reader)
    assert code == 4 and "403" in err
    code, _, err = await run("host-lock", "worker-99")
    assert code == 5 and "404" in err
