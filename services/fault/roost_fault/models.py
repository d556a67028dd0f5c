"""The fault service's models: stored documents and the StarlingX FM v1 API shapes.

FM compatibility (python-fmclient, the ``fm`` CLI) fixes the JSON: list keys ``alarms``,
``event_log`` and ``event_suppression``; ``mgmt_affecting``/``degrade_affecting`` as the strings
"True"/"False"; ``service_affecting``/``suppression`` as booleans; timestamps as naive UTC ISO-8601
with microseconds; ``next`` links only on a full page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, PlainSerializer

from roost_shared.catalog import ALARM_ID_PATTERN, AlarmNotice, AlarmSet, LogWrite, Severity

__all__ = ["AlarmNotice", "AlarmSet", "LogWrite", "Severity"]


def fm_time(value: datetime) -> str:
    """FM's timestamp form: naive UTC, always with microseconds."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds")


FmTime = Annotated[datetime, PlainSerializer(fm_time, return_type=str)]
FmBoolText = Annotated[bool, PlainSerializer(lambda b: "True" if b else "False", return_type=str)]


class SuppressionStatus(StrEnum):
    suppressed = "suppressed"
    unsuppressed = "unsuppressed"


class EventState(StrEnum):
    set = "set"
    clear = "clear"
    log = "log"


SEVERITY_RANK = {Severity.critical: 0, Severity.major: 1, Severity.minor: 2, Severity.warning: 3}


class AlarmView(BaseModel):
    """An active alarm (``GET /v1/alarms/{uuid}``; lists show a subset unless ``expand=True``)."""

    uuid: str
    alarm_id: str
    alarm_state: str | None = None
    entity_type_id: str | None = None
    entity_instance_id: str
    timestamp: FmTime
    severity: Severity
    reason_text: str
    alarm_type: str | None = None
    probable_cause: str | None = None
    proposed_repair_action: str | None = None
    service_affecting: bool | None = None
    suppression: bool | None = None
    suppression_status: SuppressionStatus
    mgmt_affecting: FmBoolText
    degrade_affecting: FmBoolText
    created_at: FmTime | None = None
    updated_at: FmTime | None = None


#: Fields a list shows without ``expand=True`` (StarlingX ``convert_with_links``).
ALARM_BRIEF_FIELDS = {
    "uuid",
    "alarm_id",
    "entity_instance_id",
    "severity",
    "timestamp",
    "reason_text",
    "suppression_status",
    "mgmt_affecting",
    "degrade_affecting",
}


class AlarmCollection(BaseModel):
    alarms: list[dict[str, Any]]
    next: str | None = None


class AlarmSummary(BaseModel):
    """Counts of active alarms by severity; ``suppressed`` counts the hidden ones apart."""

    critical: int
    major: int
    minor: int
    warnings: int
    status: Literal["OK", "degraded", "critical"]
    system_uuid: str
    suppressed: dict[str, int]


class EventLogView(BaseModel):
    """One event log record: an alarm set or clear, or a customer log."""

    uuid: str
    event_log_id: str
    state: EventState
    entity_type_id: str | None = None
    entity_instance_id: str
    timestamp: FmTime
    severity: Severity
    reason_text: str
    event_log_type: str | None = None
    probable_cause: str | None = None
    proposed_repair_action: str | None = None
    service_affecting: bool | None = None
    suppression: bool | None = None
    suppression_status: SuppressionStatus


EVENT_BRIEF_FIELDS = {
    "uuid",
    "event_log_id",
    "entity_instance_id",
    "severity",
    "timestamp",
    "reason_text",
    "state",
    "suppression_status",
}


class EventLogCollection(BaseModel):
    event_log: list[dict[str, Any]]
    next: str | None = None


class Link(BaseModel):
    href: str
    rel: str


class SuppressionView(BaseModel):
    """Whether alarms and logs of one alarm id are hidden from default lists."""

    uuid: str
    alarm_id: str
    description: str
    suppression_status: SuppressionStatus
    links: list[Link] = Field(default_factory=list)


class SuppressionCollection(BaseModel):
    event_suppression: list[SuppressionView]


class PatchOp(BaseModel):
    """One JSON-patch operation; FM accepts only ``/suppression_status`` here."""

    model_config = ConfigDict(extra="ignore")

    op: Literal["replace", "add"] = "replace"
    path: Literal["/suppression_status"]
    value: SuppressionStatus


# Subscriptions (webhooks) ---------------------------------------------------------------------


class SubscriptionCreate(BaseModel):
    """Register a webhook: every matching alarm notification is POSTed to ``url``."""

    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl
    severities: list[Severity] = Field(default_factory=list, description="Empty: all severities.")
    alarm_id_prefixes: list[Annotated[str, Field(pattern=r"^[0-9.]{1,7}$")]] = Field(
        default_factory=list, description="e.g. ['200.', '100.101']; empty: every alarm id."
    )
    include_suppressed: bool = False
    description: str = Field("", max_length=255)


class DeliveryState(StrEnum):
    ok = "ok"  # nothing pending, or delivering normally
    retrying = "retrying"  # the receiver failed; retries with back-off, nothing skipped
    refused = "refused"  # the URL resolves to a forbidden address; retried, never reached


class SubscriptionView(BaseModel):
    uuid: str
    url: str = Field(description="Any user:password in it shows as *** to readers.")
    severities: list[Severity]
    alarm_id_prefixes: list[str]
    include_suppressed: bool
    description: str
    created_at: datetime
    state: DeliveryState
    pending: int
    delivered: int
    dropped: int = Field(
        0, description="Notifications dropped unreceived: the receiver fell too far behind."
    )
    attempts: int = Field(description="Failed attempts since the last success.")
    last_error: str | None = None
    last_delivered_at: datetime | None = None


class SubscriptionCollection(BaseModel):
    subscriptions: list[SubscriptionView]


class Notification(BaseModel):
    """What a webhook receives per alarm change (several per POST, in order per entity)."""

    id: str
    type: Literal["fault.alarm.raised", "fault.alarm.changed", "fault.alarm.cleared"]
    time: datetime
    alarm: AlarmNotice


class NotificationBatch(BaseModel):
    subscription: str
    notifications: list[Notification]


class AlarmCreate(AlarmSet):
    """``POST /v1/alarms``: raise or update an alarm (same fields as ``fault.alarm.set``)."""


class LogCreate(LogWrite):
    """``POST /v1/event_log``: write a customer log (same fields as ``fault.log.write``)."""


ALARM_ID = Field(pattern=ALARM_ID_PATTERN)
