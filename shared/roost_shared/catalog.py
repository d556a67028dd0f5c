"""Every event type on the Roost bus, with its typed payload.

Producers and consumers in different services import the payload models from here, so a
service never imports another service's package. The routing key of an event is its type.
Add new events to :data:`CATALOG` as services grow.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

ENTITY_ID_PATTERN = r"^[A-Za-z0-9_.:=/@+-]+$"
ALARM_ID_PATTERN = r"^\d{3}\.\d{3}$"


class Severity(StrEnum):
    """FM severities, most severe first (StarlingX fm_api constants)."""

    critical = "critical"
    major = "major"
    minor = "minor"
    warning = "warning"


class AlarmType(StrEnum):
    """ITU X.733 event types as StarlingX FM names them."""

    communication = "communication"
    equipment = "equipment"
    environmental = "environmental"
    integrity_violation = "integrity-violation"
    operational = "operational"
    physical_violation = "physical-violation"
    processing_error = "processing-error"
    qos = "qos"
    security_service = "security-service"
    time_domain_violation = "time-domain-violation"
    other = "other"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class AlarmSet(_Strict):
    """``fault.alarm.set``: raise (or update) the alarm ``(alarm_id, entity_instance_id)``."""

    alarm_id: str = Field(pattern=ALARM_ID_PATTERN, examples=["100.101"])
    entity_instance_id: str = Field(
        min_length=1,
        max_length=255,
        pattern=ENTITY_ID_PATTERN,
        examples=["system=roost.host=worker-1.sensor=temp1"],
    )
    entity_type_id: str = Field("", max_length=255, examples=["system.host.sensor"])
    severity: Severity
    reason_text: str = Field(min_length=1, max_length=2048)
    alarm_type: AlarmType = AlarmType.operational
    probable_cause: str = Field("unspecified-reason", max_length=255)
    proposed_repair_action: str = Field("", max_length=2048)
    service_affecting: bool = False
    suppression: bool = True
    mgmt_affecting: bool = False
    degrade_affecting: bool = False
    timestamp: datetime | None = Field(None, description="When the condition began (UTC).")


class AlarmClear(_Strict):
    """``fault.alarm.clear``: clear one alarm, or every alarm of the entity if no ``alarm_id``."""

    alarm_id: str | None = Field(None, pattern=ALARM_ID_PATTERN)
    entity_instance_id: str = Field(min_length=1, max_length=255, pattern=ENTITY_ID_PATTERN)
    reason_text: str | None = Field(None, max_length=2048)
    timestamp: datetime | None = None


class LogWrite(_Strict):
    """``fault.log.write``: a customer log, written to the event log only (never active)."""

    event_log_id: str = Field(pattern=ALARM_ID_PATTERN)
    entity_instance_id: str = Field(min_length=1, max_length=255, pattern=ENTITY_ID_PATTERN)
    entity_type_id: str = Field("", max_length=255)
    severity: Severity = Severity.warning
    reason_text: str = Field(min_length=1, max_length=2048)
    event_log_type: AlarmType = AlarmType.operational
    probable_cause: str = Field("unspecified-reason", max_length=255)
    proposed_repair_action: str = Field("", max_length=2048)
    service_affecting: bool = False
    suppression: bool = True
    timestamp: datetime | None = None


class AlarmNotice(BaseModel):
    """``fault.alarm.raised|changed|cleared``: what the fault service tells subscribers."""

    uuid: str
    alarm_id: str
    alarm_state: str
    entity_instance_id: str
    entity_type_id: str
    severity: Severity
    reason_text: str
    alarm_type: str
    probable_cause: str
    proposed_repair_action: str
    service_affecting: bool
    suppression: bool
    mgmt_affecting: bool
    degrade_affecting: bool
    timestamp: datetime
    suppressed: bool = False
    previous_severity: Severity | None = None


CATALOG: dict[str, type[BaseModel]] = {
    # Commands-as-events that any producer publishes; the fault service consumes them.
    "fault.alarm.set": AlarmSet,
    "fault.alarm.clear": AlarmClear,
    "fault.log.write": LogWrite,
    # Facts the fault service publishes after committing them.
    "fault.alarm.raised": AlarmNotice,
    "fault.alarm.changed": AlarmNotice,
    "fault.alarm.cleared": AlarmNotice,
}

_TYPE_BY_MODEL: dict[type[BaseModel], str] = {
    model: name for name, model in CATALOG.items() if list(CATALOG.values()).count(model) == 1
}


def type_of(payload: BaseModel) -> str:
    """The event type of a payload whose model maps to exactly one catalog entry."""
    try:
        return _TYPE_BY_MODEL[type(payload)]
    except KeyError:
        raise ValueError(f"{type(payload).__name__} needs an explicit event type") from None


def parse_data(event_type: str, data: dict) -> BaseModel:
    """Validate an event's ``data`` against its catalog model (raises ``ValidationError``)."""
    try:
        model = CATALOG[event_type]
    except KeyError:
        raise LookupError(f"unknown event type {event_type!r}") from None
    return model.model_validate(data)
