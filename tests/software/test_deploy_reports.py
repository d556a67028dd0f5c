"""How an agent's report moves its host's deploy state (pure: ``DeployOps._next``)."""

from __future__ import annotations

from typing import Any

from roost_shared.catalog import SoftwareReported
from roost_shared.events import utcnow
from roost_software.deploy import DeployOps

DOC = {"release_id": "app-1.1.0", "version": "1.1.0"}


def host(state: str, **kw: Any) -> dict[str, Any]:
    return {"hostname": "worker-0", "state": state, "command": "c2", "reason": "", **kw}


def report(state: str, version: str = "1.0.0", **kw: Any) -> SoftwareReported:
    fields = {"release_id": "app-1.1.0", "command": "c2", **kw}
    return SoftwareReported(
        mgmt_mac="52:54:00:00:00:01",
        hostname="worker-0",
        boot_id="b1",
        running_version=version,
        state=state,
        disk_free_mb=1000,
        time=utcnow(),
        **fields,
    )


def step(h: dict[str, Any], r: SoftwareReported) -> dict[str, Any]:
    ops = object.__new__(DeployOps)  # _next reads neither the database nor peers
    return ops._next(DOC, dict(h), r)


def test_install_steps_then_installed_with_the_version():
    h = step(host("installing"), report("downloading"))
    assert h["state"] == "installing" and h["agent_state"] == "downloading"
    h = step(h, report("rebooting", pending_reboot=True))
    assert h["state"] == "installing" and h["pending_reboot"] is True
    # After the reboot the agent says where it is (no command): still installing.
    h = step(h, report("idle", command=None))
    assert h["state"] == "installing"
    h = step(h, report("installed", "1.1.0"))
    assert h["state"] == "installed" and h["running_version"] == "1.1.0"


def test_an_agent_already_running_the_version_is_installed():
    h = step(host("pending", command=None), report("idle", "1.1.0", command=None))
    assert h["state"] == "installed"


def test_failure_names_the_agents_error_and_stale_reports_are_ignored():
    h = step(host("installing"), report("failed", error="hook exited 3"))
    assert h["state"] == "failed" and h["reason"] == "hook exited 3"
    # A failure answering an older command (c1) does not fail the retry (c2).
    h = step(host("installing"), report("failed", command="c1", error="old"))
    assert h["state"] == "installing" and h["agent_state"] == "failed"
    # A failure about another release neither.
    h = step(host("installing"), report("failed", release_id="other-1"))
    assert h["state"] == "installing"


def test_rollback_ends_pending_or_failed():
    h = step(host("installed", rolling_back=True), report("rolling-back", "1.1.0"))
    assert h["state"] == "installed" and h["rolling_back"] is True
    h = step(h, report("rolled-back", "1.0.0"))
    assert h["state"] == "pending" and h["rolling_back"] is False
    h = step(host("installed", rolling_back=True), report("failed", "1.1.0", error="no"))
    assert h["state"] == "failed" and "rollback failed: no" in h["reason"]
