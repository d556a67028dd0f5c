"""The host service's states, actions and API schemas (StarlingX mtce's host state model)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Administrative(StrEnum):
    """Whether the operator lets the host carry work (StarlingX ``administrative``)."""

    locked = "locked"
    unlocked = "unlocked"


class Operational(StrEnum):
    """Whether the host is enabled for work (StarlingX ``operational``)."""

    enabled = "enabled"
    disabled = "disabled"


class Availability(StrEnum):
    """What maintenance knows about the host (StarlingX ``availability``)."""

    available = "available"
    degraded = "degraded"
    failed = "failed"
    intest = "intest"
    offline = "offline"
    online = "online"
    power_off = "power-off"


class Action(StrEnum):
    """Operator actions (StarlingX ``system host-lock`` etc.)."""

    lock = "lock"
    force_lock = "force-lock"
    unlock = "unlock"
    reboot = "reboot"
    reset = "reset"
    power_on = "power-on"
    power_off = "power-off"
    reinstall = "reinstall"


class StateView(BaseModel):
    administrative: Administrative
    operational: Operational
    availability: Availability


class KubeView(BaseModel):
    """The last Kubernetes request for the host's node (absent without a cluster)."""

    op: str = Field(description="drain (after a lock) or uncordon (after a passed in-test)")
    node: str
    status: str = Field(
        description="pending, then the drainer's: drained, done, timed_out, unreachable, ..."
    )
    reason: str = Field("", description="The timeline's reason code once done, e.g. drain-done.")
    message: str = ""
    requested_at: datetime
    finished_at: datetime | None = None


class HostView(BaseModel):
    """A host as the host service sees it; never carries BMC credentials."""

    uuid: str
    hostname: str | None
    personality: str | None
    mgmt_mac: str
    mgmt_ip: str | None = None
    bmc_type: str | None = None
    bmc_address: str | None = None
    install_state: str | None = None
    administrative: Administrative
    operational: Operational
    availability: Availability
    task: str = ""
    kube: KubeView | None = None
    state_changed_at: datetime
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, doc: dict[str, Any]) -> HostView:
        return cls.model_validate({k: doc.get(k) for k in cls.model_fields if k in doc})


class HostCollection(BaseModel):
    hosts: list[HostView]
    next: str | None = None


class ActionRequest(BaseModel):
    """``POST /v1/hosts/{id}/actions``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    action: Action = Field(description=", ".join(a.value for a in Action))
    reason: str = Field("", max_length=500, description="Why, for the timeline (optional).")


class TimelineEntry(BaseModel):
    """One transition of a host: when, from which states to which, why and who."""

    uuid: str
    host_uuid: str
    hostname: str | None
    time: datetime
    from_: StateView = Field(alias="from")
    to: StateView
    task: str = ""
    cause: str
    reason: str
    detail: str = Field("", description="More about it, e.g. what a drain evicted or left.")
    actor: str

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class TimelineCollection(BaseModel):
    timeline: list[TimelineEntry]
    next: str | None = None
