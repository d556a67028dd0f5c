"""Placement rules; pure, no I/O.

* **Members** in priority order: the group's ``preferred`` hosts first, then the listed hosts
  (or, for a ``selector``, every known host whose labels match, by name).
* An instance's **state** (sm's ``initial/disabled/enabling/enabled-standby/enabled-active/
  disabling/failed``) follows from what was assigned (role, fencing token), the host's states
  and the agent's latest report for that assignment (:func:`instance_state`).
* The **agent spec** of a service (:func:`agent_spec`) is ``roost_agent.pmon.ProcessSpec`` as
  JSON, built from the group's declaration.
"""

from __future__ import annotations

from typing import Any

from roost_service.hosts import describe, healthy

#: Agent (pmon) states that mean the instance is up in its assigned role.
UP = ("healthy", "running")
ENABLED = {"active": "enabled-active", "standby": "enabled-standby"}


def members(group: dict[str, Any], hosts: dict[str, dict[str, Any]]) -> list[str]:
    """The group's member hosts, highest priority first."""
    declared = group["members"]
    if declared.get("hosts"):
        listed = list(declared["hosts"])
    else:
        selector = declared.get("selector") or {}
        listed = sorted(
            name
            for name, h in hosts.items()
            if all((h.get("labels") or {}).get(k) == v for k, v in selector.items())
        )
    preferred = [h for h in group.get("preferred", []) if h in listed]
    return preferred + [h for h in listed if h not in preferred]


def agent_spec(group: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    """The process spec the agent runs for one service of a group."""
    probe = dict(service.get("probe") or {"type": "process"})
    period = probe.pop("period_s", 1.0)
    timeout = probe.pop("timeout_s", 1.0)
    if "url" in probe:
        probe["url"] = str(probe["url"])
    policy = group.get("failure_policy") or {}
    return {
        "name": f"{group['name']}.{service['name']}",
        "argv": list(service["start"]),
        "probe": probe,
        "probe_period_s": period,
        "probe_timeout_s": timeout,
        "restart": {
            "max_restarts": policy.get("max_restarts", 3),
            "window_s": policy.get("window_s", 60.0),
        },
    }


def report_matches(inst: dict[str, Any], report: dict[str, Any] | None) -> bool:
    """True if ``report`` is about the instance's current assignment (role and token)."""
    if report is None or inst.get("role") is None:
        return False
    role_ok = report.get("role") in (None, inst["role"])
    token_ok = report.get("fencing_token") in (None, inst.get("token"))
    return role_ok and token_ok


def instance_state(
    inst: dict[str, Any], report: dict[str, Any] | None, host: dict[str, Any] | None
) -> tuple[str, str]:
    """(state, reason) of an instance."""
    name = inst["host"]
    if not healthy(host):
        failed = host is not None and host.get("availability") == "failed"
        return ("failed" if failed else "disabled"), describe(name, host)
    role = inst.get("role")
    if role is None:
        if inst.get("state") in ("disabling",) and report and report.get("state") != "stopped":
            return "disabling", "removal sent"
        return "disabled", inst.get("reason") or "not placed on this host"
    if not report_matches(inst, report):
        return "enabling", f"assigned {role}; waiting for the agent"
    assert report is not None
    state = report.get("state")
    if state in UP:
        return ENABLED[role], ""
    if state == "failed":
        return "failed", report.get("reason") or "restarts exhausted"
    if state == "stopped":
        return "disabled", report.get("reason") or "stopped"
    return "enabling", f"agent reports {state}" + (
        f": {report['reason']}" if report.get("reason") else ""
    )
