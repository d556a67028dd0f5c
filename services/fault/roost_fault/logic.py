"""Fault domain rules, free of I/O: how a set, clear or log changes the active alarms, which
records the event log gets, what subscribers are told, and how FM queries translate to filters.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from roost_fault.models import SEVERITY_RANK, EventState, SuppressionStatus
from roost_shared.catalog import AlarmClear, AlarmNotice, AlarmSet, LogWrite, Severity
from roost_shared.problems import Invalid

AlarmKey = tuple[str, str]  # (alarm_id, entity_instance_id)
#: A set, clear or log, the time it was produced, and the service that sent it (None: an
#: operator through the API, who may change any alarm).
Command = tuple[BaseModel, datetime, str | None]

#: Fields whose change makes a re-raised alarm worth telling subscribers about.
MATERIAL_FIELDS = (
    "severity",
    "reason_text",
    "alarm_type",
    "probable_cause",
    "proposed_repair_action",
    "service_affecting",
    "mgmt_affecting",
    "degrade_affecting",
    "entity_type_id",
    "suppression",
)


def key_of(doc: Mapping[str, Any]) -> AlarmKey:
    return (doc["alarm_id"], doc["entity_instance_id"])


def suppression_status(alarm_id: str, allowed: bool, suppressed_ids: set[str]) -> str:
    """An alarm is hidden only if its id is suppressed and the alarm allows suppression."""
    if allowed and alarm_id in suppressed_ids:
        return SuppressionStatus.suppressed.value
    return SuppressionStatus.unsuppressed.value


@dataclass
class Notice:
    """A change subscribers hear about: ``raised``, ``changed`` or ``cleared``."""

    kind: str
    alarm: dict[str, Any]
    previous_severity: str | None = None

    @property
    def event_type(self) -> str:
        return f"fault.alarm.{self.kind}"

    def to_model(self) -> AlarmNotice:
        a = self.alarm
        return AlarmNotice(
            uuid=a["uuid"],
            alarm_id=a["alarm_id"],
            alarm_state="clear" if self.kind == "cleared" else "set",
            entity_instance_id=a["entity_instance_id"],
            entity_type_id=a["entity_type_id"],
            severity=a["severity"],
            reason_text=a["reason_text"],
            alarm_type=a["alarm_type"],
            probable_cause=a["probable_cause"],
            proposed_repair_action=a["proposed_repair_action"],
            service_affecting=a["service_affecting"],
            suppression=a["suppression"],
            mgmt_affecting=a["mgmt_affecting"],
            degrade_affecting=a["degrade_affecting"],
            timestamp=a["timestamp"],
            suppressed=a["suppression_status"] == SuppressionStatus.suppressed,
            previous_severity=self.previous_severity,
        )


@dataclass
class Outcome:
    """What a batch of sets, clears and logs does: final alarm states, log records, notices."""

    alarms: dict[AlarmKey, dict[str, Any] | None] = field(default_factory=dict)
    removed: dict[AlarmKey, dict[str, Any]] = field(default_factory=dict)
    event_log: list[dict[str, Any]] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    new_alarm_ids: dict[str, str] = field(default_factory=dict)
    #: Changes refused because the alarm was raised by another service: (key, sender).
    refused: list[tuple[AlarmKey, str]] = field(default_factory=list)


def apply(
    commands: Sequence[Command],
    current: Mapping[AlarmKey, dict[str, Any]],
    suppressed_ids: set[str],
    known_alarm_ids: set[str],
) -> Outcome:
    """Apply commands in order to ``current`` (the stored alarms they may touch).

    ``commands`` pairs each payload with the time it was produced (its event time) and its
    sender. An alarm is changed or cleared only by the service that raised it (or an operator):
    another service's set or clear of it is refused (``refused``), and a clear of a whole entity
    clears only the sender's alarms. The outcome's ``alarms`` maps each touched key to its final
    document, or None if it ended cleared.
    """
    out = Outcome()
    state: dict[AlarmKey, dict[str, Any] | None] = dict(current)
    for payload, when, by in commands:
        if isinstance(payload, AlarmSet):
            previous = state.get((payload.alarm_id, payload.entity_instance_id))
            if not _may_change(previous, by):
                out.refused.append(((payload.alarm_id, payload.entity_instance_id), str(by)))
                continue
            _set(payload, when, by, state, suppressed_ids, out)
            if payload.alarm_id not in known_alarm_ids:
                out.new_alarm_ids.setdefault(payload.alarm_id, payload.reason_text)
        elif isinstance(payload, AlarmClear):
            _clear(payload, when, by, state, out)
        elif isinstance(payload, LogWrite):
            out.event_log.append(log_record(payload, when, suppressed_ids))
            if payload.event_log_id not in known_alarm_ids:
                out.new_alarm_ids.setdefault(payload.event_log_id, payload.reason_text)
        else:  # pragma: no cover - the consumer only routes catalog fault commands here
            raise TypeError(f"unexpected command {type(payload).__name__}")
    out.alarms = {k: v for k, v in state.items() if current.get(k) is not v}
    return out


def _may_change(alarm: Mapping[str, Any] | None, by: str | None) -> bool:
    """An operator may change any alarm, a service only what it raised (or what predates the
    record of who raised it)."""
    if alarm is None or by is None:
        return True
    return alarm.get("raised_by") in (None, by)


def _set(
    cmd: AlarmSet,
    when: datetime,
    by: str | None,
    state: dict[AlarmKey, dict[str, Any] | None],
    suppressed_ids: set[str],
    out: Outcome,
) -> None:
    key = (cmd.alarm_id, cmd.entity_instance_id)
    previous = state.get(key)
    timestamp = _utc(cmd.timestamp or when)
    doc: dict[str, Any] = {
        "uuid": previous["uuid"] if previous else str(uuid.uuid4()),
        "alarm_id": cmd.alarm_id,
        "alarm_state": EventState.set.value,
        "entity_type_id": cmd.entity_type_id,
        "entity_instance_id": cmd.entity_instance_id,
        "timestamp": timestamp,
        "severity": cmd.severity.value,
        "severity_rank": SEVERITY_RANK[cmd.severity],
        "reason_text": cmd.reason_text,
        "alarm_type": cmd.alarm_type.value,
        "probable_cause": cmd.probable_cause,
        "proposed_repair_action": cmd.proposed_repair_action,
        "service_affecting": cmd.service_affecting,
        "suppression": cmd.suppression,
        "suppression_status": suppression_status(cmd.alarm_id, cmd.suppression, suppressed_ids),
        "mgmt_affecting": cmd.mgmt_affecting,
        "degrade_affecting": cmd.degrade_affecting,
        "created_at": previous["created_at"] if previous else _utc(when),
        "updated_at": _utc(when),
        "raised_by": previous.get("raised_by") if previous else by,
    }
    state[key] = doc
    out.event_log.append(alarm_record(doc, EventState.set, timestamp))
    if previous is None:
        out.notices.append(Notice("raised", doc))
    elif any(previous.get(f) != doc[f] for f in MATERIAL_FIELDS):
        out.notices.append(Notice("changed", doc, previous_severity=previous["severity"]))
    # An identical re-raise refreshes the alarm and is logged, but tells subscribers nothing new.


def _clear(
    cmd: AlarmClear,
    when: datetime,
    by: str | None,
    state: dict[AlarmKey, dict[str, Any] | None],
    out: Outcome,
) -> None:
    if cmd.alarm_id is not None:
        keys: Iterable[AlarmKey] = [(cmd.alarm_id, cmd.entity_instance_id)]
    else:
        keys = [
            k
            for k, v in state.items()
            if v is not None and k[1] == cmd.entity_instance_id and _may_change(v, by)
        ]
    for key in list(keys):
        previous = state.get(key)
        if previous is None:
            continue  # clearing what is not raised is normal (idempotent producers)
        if not _may_change(previous, by):
            out.refused.append((key, str(by)))
            continue
        state[key] = None
        cleared = {**previous, "alarm_state": EventState.clear.value}
        if cmd.reason_text:
            cleared["reason_text"] = cmd.reason_text
        stamp = _utc(cmd.timestamp or when)
        out.event_log.append(alarm_record(cleared, EventState.clear, stamp))
        out.notices.append(Notice("cleared", {**cleared, "timestamp": stamp}))


def alarm_record(alarm: Mapping[str, Any], state: EventState, when: datetime) -> dict[str, Any]:
    """The event log record of an alarm set or clear (FM renames alarm_* to event_log_*)."""
    return {
        "uuid": str(uuid.uuid4()),
        "event_log_id": alarm["alarm_id"],
        "state": state.value,
        "entity_type_id": alarm["entity_type_id"],
        "entity_instance_id": alarm["entity_instance_id"],
        "timestamp": when,
        "severity": alarm["severity"],
        "reason_text": alarm["reason_text"],
        "event_log_type": alarm["alarm_type"],
        "probable_cause": alarm["probable_cause"],
        "proposed_repair_action": alarm["proposed_repair_action"],
        "service_affecting": alarm["service_affecting"],
        "suppression": alarm["suppression"],
        "suppression_status": alarm["suppression_status"],
    }


def log_record(cmd: LogWrite, when: datetime, suppressed_ids: set[str]) -> dict[str, Any]:
    """The event log record of a customer log."""
    return {
        "uuid": str(uuid.uuid4()),
        "event_log_id": cmd.event_log_id,
        "state": EventState.log.value,
        "entity_type_id": cmd.entity_type_id,
        "entity_instance_id": cmd.entity_instance_id,
        "timestamp": _utc(cmd.timestamp or when),
        "severity": cmd.severity.value,
        "reason_text": cmd.reason_text,
        "event_log_type": cmd.event_log_type.value,
        "probable_cause": cmd.probable_cause,
        "proposed_repair_action": cmd.proposed_repair_action,
        "service_affecting": cmd.service_affecting,
        "suppression": cmd.suppression,
        "suppression_status": suppression_status(cmd.event_log_id, cmd.suppression, suppressed_ids),
    }


def summary_status(critical: int, major: int, minor: int) -> str:
    """FM's overall status: critical beats degraded (major or minor) beats OK."""
    if critical:
        return "critical"
    if major or minor:
        return "degraded"
    return "OK"


def matches(subscription: Mapping[str, Any], alarm: Mapping[str, Any]) -> bool:
    """Whether a webhook subscription wants a notification about ``alarm`` (an ``AlarmNotice``
    as JSON). Must agree with :func:`subscription_query`."""
    if alarm.get("suppressed") and not subscription.get("include_suppressed"):
        return False
    severities = subscription.get("severities") or []
    if severities and alarm["severity"] not in severities:
        return False
    prefixes = subscription.get("alarm_id_prefixes") or []
    return not prefixes or any(alarm["alarm_id"].startswith(p) for p in prefixes)


def subscription_query(subscription: Mapping[str, Any]) -> dict[str, Any]:
    """The notification-log filter selecting what :func:`matches` accepts (for counting)."""
    query: dict[str, Any] = {}
    if not subscription.get("include_suppressed"):
        query["alarm.suppressed"] = {"$ne": True}
    if subscription.get("severities"):
        query["alarm.severity"] = {"$in": list(subscription["severities"])}
    if subscription.get("alarm_id_prefixes"):
        alternatives = "|".join(re.escape(p) for p in subscription["alarm_id_prefixes"])
        query["alarm.alarm_id"] = {"$regex": f"^(?:{alternatives})"}
    return query


# FM queries ------------------------------------------------------------------------------------

ALARM_QUERY_FIELDS = {
    "uuid",
    "alarm_id",
    "entity_type_id",
    "entity_instance_id",
    "severity",
    "alarm_type",
}
EVENT_QUERY_FIELDS = {
    "uuid",
    "event_log_id",
    "entity_type_id",
    "entity_instance_id",
    "severity",
    "event_log_type",
    "start",
    "end",
}
SUPPRESSION_QUERY_FIELDS = {"uuid", "alarm_id", "description", "suppression_status"}


def query_filter(
    fields: Sequence[str],
    ops: Sequence[str],
    values: Sequence[str],
    allowed: set[str],
    *,
    exact: set[str] = frozenset({"uuid"}),
) -> dict[str, Any]:
    """Translate FM's repeated ``q.field/q.op/q.value`` into a filter.

    Like FM, only ``eq`` is supported and matches are substring matches (exact for ``exact``
    fields); ``start``/``end`` bound the timestamp. Unlike FM, an unknown field or operator is an
    error naming it rather than being ignored or failing with a 500.
    """
    if not (len(fields) == len(values)) or (ops and len(ops) != len(fields)):
        raise Invalid(
            "q.field, q.op and q.value must be given the same number of times", field="q.field"
        )
    result: dict[str, Any] = {}
    for i, (name, value) in enumerate(zip(fields, values, strict=True)):
        op = ops[i] if ops else "eq"
        if name not in allowed:
            raise Invalid(
                f"unknown query field {name!r}; allowed: {', '.join(sorted(allowed))}",
                field="q.field",
            )
        if op not in ("eq", ""):
            raise Invalid(
                f"unsupported query operator {op!r} for {name!r}; only 'eq'", field="q.op"
            )
        if name in ("start", "end"):
            bound = parse_time(value, field="q.value")
            result.setdefault("timestamp", {})["$gte" if name == "start" else "$lte"] = bound
        elif name in exact:
            result[name] = value
        else:
            result[name] = {"$regex": re.escape(value)}
    return result


_COMPACT = re.compile(r"^(\d{4})(\d{2})(\d{2})(?:[ T](.*))?$")


def parse_time(value: str, *, field: str) -> datetime:
    """Parse ISO-8601 (and FM's compact ``20160131 10:23:45``); naive means UTC."""
    text = value.strip()
    m = _COMPACT.match(text)
    if m:
        text = f"{m[1]}-{m[2]}-{m[3]}" + (f"T{m[4]}" if m[4] else "")
    try:
        parsed = datetime.fromisoformat(text.replace(" ", "T"))
    except ValueError:
        raise Invalid(f"Invalid date '{value}' specified", field=field) from None
    return _utc(parsed)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def severity_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``{severity: n}`` from aggregation rows ``{_id: severity, n: count}``, zeros filled."""
    counts = {s.value: 0 for s in Severity}
    for row in rows:
        counts[row["_id"]] = row["n"]
    return counts
