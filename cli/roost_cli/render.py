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
