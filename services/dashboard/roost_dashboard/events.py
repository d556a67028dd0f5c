"""The bus events the dashboard follows, and how each is shaped for browsers (the pages'
script applies them: alarm rows rendered here with the page's own template, host and group states,
instance reports that make the services table fetch itself again)."""

from __future__ import annotations

from typing import Any

from roost_dashboard.web import SEVERITY_RANK, templates

#: What the pages follow: alarm notices from fault, host transitions, service group changes,
#: the agents' instance reports (the services page fetches its table again) and the software
#: service's strategy progress, per-host deploy states and releases.
BINDINGS = ("fault.alarm.raised", "fault.alarm.changed", "fault.alarm.cleared")
BINDINGS += ("host.state.changed", "service.group.*", "agent.instance.changed")
BINDINGS += ("software.strategy.changed", "software.host.changed", "software.release.changed")


def shape(envelope: dict[str, Any]) -> dict[str, Any] | None:
    kind = str(envelope.get("type", ""))
    data = envelope.get("data") or {}
    if kind.startswith("fault.alarm."):
        verb = kind.rsplit(".", 1)[1]
        item = {
            "kind": "alarm",
            "action": verb,
            "uuid": data.get("uuid"),
            "severity": data.get("severity"),
            "rank": SEVERITY_RANK.get(data.get("severity", ""), 9),
        }
        if verb != "cleared":
            row = {
                **data,
                "suppression_status": "suppressed" if data.get("suppressed") else "unsuppressed",
            }
            item["html"] = templates.get_template("_alarm_row.html").render(a=row)
        return item
    if kind == "host.state.changed":
        return {
            "kind": "host",
            "uuid": data.get("uuid"),
            "hostname": data.get("hostname"),
            "administrative": data.get("to_administrative"),
            "operational": data.get("to_operational"),
            "availability": data.get("to_availability"),
            "task": data.get("task", ""),
            "cause": data.get("cause", ""),
            "time": data.get("time"),
        }
    if kind == "agent.instance.changed":
        return {"kind": "instance", "group": data.get("group"), "host": data.get("hostname")}
    if kind == "software.strategy.changed":
        # Everything the progress bar, state and current step show: pages patch them at once.
        return {
            "kind": "strategy",
            "uuid": data.get("uuid"),
            "release": data.get("release_id"),
            "state": data.get("state"),
            "stage": data.get("stage"),
            "stages": data.get("stages"),
            "steps_done": data.get("steps_done"),
            "steps_total": data.get("steps_total"),
            "current": data.get("current", ""),
            "reason": data.get("reason", ""),
        }
    if kind == "software.host.changed":
        return {
            "kind": "swhost",
            "hostname": data.get("hostname"),
            "release": data.get("release_id"),
            "state": data.get("state"),
            "running_version": data.get("running_version"),
            "reason": data.get("reason", ""),
        }
    if kind == "software.release.changed":
        return {
            "kind": "release",
            "id": data.get("id"),
            "version": data.get("version"),
            "state": data.get("state"),
        }
    if kind.startswith("service.group."):
        return {
            "kind": "group",
            "action": kind.rsplit(".", 1)[1],
            "name": data.get("name"),
            # service.group.changed carries a state transition; the declaration events a state
            "state": data.get("to_state") or data.get("state"),
        }
    return None
