"""Output: rich tables for people, the API's JSON for scripts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

SEVERITY_STYLES = {
    "critical": "bold red",
    "major": "red",
    "minor": "yellow",
    "warning": "cyan",
}

#: Piped output (``| grep``) gets wide lines rather than the 80 columns rich assumes.
PIPE_WIDTH = 200


def _console() -> Console:
    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(highlight=False, soft_wrap=False, width=PIPE_WIDTH if piped else None)


_out = _console()


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON (plain, no colour), for scripts and ``jq``."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def message(text: str) -> None:
    """A short confirmation line on stdout."""
    _out.print(text, markup=False)


def severity(value: Any) -> Text:
    """A severity, coloured by how bad it is."""
    text = "" if value is None else str(value)
    return Text(text, style=SEVERITY_STYLES.get(text, ""))


def marked_id(item: Mapping[str, Any], key: str) -> str:
    """An alarm or event id, shown as ``S(<id>)`` when suppressed (as StarlingX's ``fm`` does)."""
    value = str(item.get(key, ""))
    return f"S({value})" if item.get("suppression_status") == "suppressed" else value


def _cell(value: Any) -> str | Text:
    if isinstance(value, Text):
        return value
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    no_wrap: Iterable[str] = (),
    title: str | None = None,
    caption: str | None = None,
) -> None:
    """Print a table; columns in ``no_wrap`` (ids, uuids, times) are never split over lines."""
    keep = set(no_wrap)
    t = Table(title=title, caption=caption, show_lines=False, header_style="bold")
    for name in columns:
        t.add_column(name, no_wrap=name in keep, overflow="fold")
    for row in rows:
        t.add_row(*(_cell(v) for v in row))
    _out.print(t)


def details(item: Mapping[str, Any]) -> None:
    """One object as a Property/Value table (severity coloured)."""
    rows = [(k, severity(v) if k == "severity" else v) for k, v in item.items()]
    table(["Property", "Value"], rows, no_wrap=["Property"])


def alarms(items: Sequence[Mapping[str, Any]], *, show_uuid: bool) -> None:
    columns = ["Alarm ID", "Reason Text", "Entity ID", "Severity", "Time Stamp"]
    if show_uuid:
        columns.insert(0, "UUID")
    rows = []
    for a in items:
        row: list[Any] = [
            marked_id(a, "alarm_id"),
            a.get("reason_text"),
            a.get("entity_instance_id"),
            severity(a.get("severity")),
            a.get("timestamp"),
        ]
        rows.append([a.get("uuid"), *row] if show_uuid else row)
    table(columns, rows, no_wrap=["UUID", "Alarm ID", "Severity", "Time Stamp"])


def events(items: Sequence[Mapping[str, Any]], *, show_uuid: bool) -> None:
    columns = ["Time Stamp", "State", "Event Log ID", "Reason Text", "Entity ID", "Severity"]
    if show_uuid:
        columns.insert(0, "UUID")
    rows = []
    for e in items:
        row: list[Any] = [
            e.get("timestamp"),
            e.get("state"),
            marked_id(e, "event_log_id"),
            e.get("reason_text"),
            e.get("entity_instance_id"),
            severity(e.get("severity")),
        ]
        rows.append([e.get("uuid"), *row] if show_uuid else row)
    table(columns, rows, no_wrap=["UUID", "Time Stamp", "State", "Event Log ID", "Severity"])


def summary(body: Mapping[str, Any], *, included_suppressed: bool) -> None:
    """FM's alarm summary, with the suppressed alarms counted on their own row."""
    hidden = body.get("suppressed") or {}
    keys = [("critical", "Critical"), ("major", "Major"), ("minor", "Minor"), ("warnings", "Warn")]
    active = "Active (incl. suppressed)" if included_suppressed else "Active"
    rows = [
        [active, *(severity_count(body.get(k), k) for k, _ in keys), body.get("status")],
        ["Suppressed", *(str(hidden.get(k, 0)) for k, _ in keys), ""],
    ]
    table(
        ["", "Critical", "Major", "Minor", "Warnings", "Status"],
        rows,
        no_wrap=["Status"],
        caption=f"system {body.get('system_uuid', '?')}",
    )


def severity_count(value: Any, key: str) -> Text:
    name = "warning" if key == "warnings" else key
    count = int(value or 0)
    return Text(str(count), style=SEVERITY_STYLES[name] if count else "")


def suppressions(items: Sequence[Mapping[str, Any]], *, show_uuid: bool) -> None:
    columns = ["Alarm ID", "Description", "Status"]
    if show_uuid:
        columns.insert(0, "UUID")
    rows = []
    for s in items:
        row = [s.get("alarm_id"), s.get("description"), s.get("suppression_status")]
        rows.append([s.get("uuid"), *row] if show_uuid else row)
    table(columns, rows, no_wrap=["UUID", "Alarm ID", "Status"])


def subscriptions(items: Sequence[Mapping[str, Any]]) -> None:
    columns = [
        "UUID",
        "URL",
        "Severities",
        "Prefixes",
        "State",
        "Pending",
        "Delivered",
        "Last Error",
    ]
    rows = [
        [
            s.get("uuid"),
            s.get("url"),
            ", ".join(s.get("severities") or []) or "all",
            ", ".join(s.get("alarm_id_prefixes") or []) or "all",
            s.get("state"),
            s.get("pending"),
            s.get("delivered"),
            s.get("last_error"),
        ]
        for s in items
    ]
    table(columns, rows, no_wrap=["UUID", "URL", "State"])


# Hosts and the system (config service) ----------------------------------------------------------

CONFIG_STATUS_STYLES = {"up-to-date": "green", "out-of-date": "yellow", "failed": "bold red"}


def _hostname(h: Mapping[str, Any]) -> str:
    """The assigned hostname, or ``(reported name)`` for a host that has none yet."""
    if h.get("hostname"):
        return str(h["hostname"])
    reported = h.get("reported_hostname")
    return f"({reported})" if reported else "-"


def config_cell(h: Mapping[str, Any]) -> Text:
    """``target/applied status``, coloured by status."""
    status = str(h.get("config_status") or "")
    text = f"{h.get('config_target', 0)}/{h.get('config_applied', 0)} {status}"
    return Text(text, style=CONFIG_STATUS_STYLES.get(status, ""))


def labels_text(labels: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


STATE_COLUMNS = ("administrative", "operational", "availability")


def hosts(items: Sequence[Mapping[str, Any]], *, states: bool = False) -> None:
    """``system host-list``: one row per host; discovered hosts show their reported name.
    With ``states``, the host service's administrative/operational/availability columns too."""
    columns = ["UUID", "Hostname", "Personality"]
    if states:
        columns += [c.capitalize() for c in STATE_COLUMNS]
    columns += ["Install State", "Config (target/applied)", "Mgmt MAC", "Mgmt IP"]
    rows = [
        [
            h.get("uuid"),
            _hostname(h),
            h.get("personality") or "-",
            *([h.get(c) or "-" for c in STATE_COLUMNS] if states else []),
            h.get("install_state"),
            config_cell(h),
            h.get("mgmt_mac"),
            h.get("mgmt_ip"),
        ]
        for h in items
    ]
    table(columns, rows, no_wrap=[c for c in columns if c != "Personality"])


def host(item: Mapping[str, Any]) -> None:
    """``system host-show``. A stray password field would never be printed."""
    rows: list[tuple[str, Any]] = []
    for key, value in item.items():
        if "password" in key and key != "bmc_password_set":
            continue
        if key == "labels":
            value = labels_text(value)
        elif key == "subfunctions":
            value = ", ".join(value or [])
        elif key == "config_status":
            value = Text(str(value), style=CONFIG_STATUS_STYLES.get(str(value), ""))
        rows.append((key, value))
    table(["Property", "Value"], rows, no_wrap=["Property"])


def labels(item: Mapping[str, Any]) -> None:
    """A host's labels after ``host-label-assign``/``-remove``."""
    rows = [[k, v] for k, v in sorted((item.get("labels") or {}).items())]
    table(
        ["Key", "Value"],
        rows,
        no_wrap=["Key"],
        caption=f"labels of {item.get('hostname') or item.get('uuid')}",
    )


def inventory(body: Mapping[str, Any]) -> None:
    """CPUs and memory, disks, ports and PCI devices, one table each."""
    name = body.get("hostname") or body.get("mgmt_mac")
    cpu = body.get("cpu") or {}
    table(
        ["CPU Model", "Sockets", "Cores", "Threads", "Memory (MiB)"],
        [
            [
                cpu.get("model"),
                cpu.get("sockets"),
                cpu.get("cores"),
                cpu.get("threads"),
                body.get("memory_mb"),
            ]
        ],
        title=f"Inventory of {name}",
        caption=f"reported {body.get('reported_at')}, changed {body.get('changed_at')}",
    )
    table(
        ["Device", "Size (GB)", "Type"],
        [[d.get("device"), d.get("size_gb"), d.get("type")] for d in body.get("disks") or []],
        title="Disks",
        no_wrap=["Device"],
    )
    table(
        ["Port", "MAC", "Speed (Mbps)", "Link"],
        [
            [p.get("name"), p.get("mac"), p.get("speed_mbps"), "up" if p.get("link") else "down"]
            for p in body.get("ports") or []
        ],
        title="Ports",
        no_wrap=["Port", "MAC"],
    )
    table(
        ["PCI Address", "Vendor", "Device", "Class"],
        [
            [d.get("address"), d.get("vendor"), d.get("device"), d.get("pclass")]
            for d in body.get("pci") or []
        ],
        title="PCI Devices",
        no_wrap=["PCI Address"],
    )


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested document as ``(dotted.key, scalar-or-list)`` rows."""
    if isinstance(value, Mapping):
        if not value and prefix:
            return [(prefix, "")]
        rows: list[tuple[str, Any]] = []
        for key, item in value.items():
            rows += flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, list) and all(not isinstance(v, Mapping | list) for v in value):
        return [(prefix, ", ".join(str(v) for v in value))]
    return [(prefix, value)]


def host_config(body: Mapping[str, Any]) -> None:
    """Desired against applied configuration, then the desired document as key/value rows."""
    status = str(body.get("config_status") or "")
    rows = [
        (
            key,
            Text(status, style=CONFIG_STATUS_STYLES.get(status, ""))
            if key == "config_status"
            else value,
        )
        for key, value in body.items()
        if key != "desired"
    ]
    table(["Property", "Value"], rows, no_wrap=["Property"])
    desired = body.get("desired")
    if desired:
        message(f"Desired configuration (version {body.get('config_target')}):")
        table(["Key", "Value"], flatten(desired), no_wrap=["Key"])
    else:
        message("No desired configuration yet (the host needs a hostname and a personality).")


def system(body: Mapping[str, Any]) -> None:
    """``system show``."""
    rows = [
        (k, ", ".join(v) if k in ("dns_servers", "ntp_servers") and isinstance(v, list) else v)
        for k, v in body.items()
    ]
    table(["Property", "Value"], rows, no_wrap=["Property"])
