"""The service service's documents and API schemas: service groups, their services, leases.

Everything one field can say about itself is checked here (pydantic, so a refusal names the
field); rules that relate fields to each other (dependency cycles, redundancy against members)
live in :mod:`roost_service.logic`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, model_validator

from roost_shared.catalog import HOSTNAME_PATTERN

#: Group and service names: short, lower case, safe in routing keys, URLs and entity ids.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
LABEL_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,251}[A-Za-z0-9])?$"

Name = Annotated[str, Field(pattern=NAME_PATTERN, examples=["gateway"])]
Hostname = Annotated[str, Field(pattern=HOSTNAME_PATTERN, examples=["controller-0"])]


def _check_argv(argv: list[str]) -> list[str]:
    # Commands are exec'd, never given to a shell: a program name with spaces is almost always a
    # shell line pasted into argv[0], which would fail only later, on the host.
    program = argv[0]
    if not program.strip():
        raise ValueError("argv[0] (the program) is empty")
    if program != program.strip() or any(c.isspace() for c in program):
        raise ValueError(
            f"argv[0] {program!r} contains whitespace: a command is an argv list, not a shell "
            "line; give each argument as its own list item"
        )
    if any("\x00" in arg for arg in argv):
        raise ValueError("arguments may not contain NUL characters")
    return argv


#: A command: an argv list (the program, then its arguments), run without a shell.
Command = Annotated[
    list[Annotated[str, Field(max_length=4096)]],
    Field(min_length=1, max_length=256, examples=[["/usr/bin/gateway", "--port", "8080"]]),
    AfterValidator(_check_argv),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RedundancyModel(StrEnum):
    """How many instances are active (StarlingX sm's redundancy models)."""

    active_standby = "active-standby"  # 1 active + 1 standby
    n_plus_m = "n-plus-m"  # N active + M standby
    n = "n"  # active on every member


class Redundancy(_Strict):
    """``model`` and, for ``n-plus-m``, how many ``active`` (N) and ``standby`` (M)."""

    model: RedundancyModel
    active: int | None = Field(None, ge=1, le=1000, description="N (n-plus-m only).")
    standby: int | None = Field(None, ge=0, le=1000, description="M (n-plus-m only).")


class Members(_Strict):
    """The hosts a group may run on: listed ``hosts``, or every host whose labels match
    ``selector`` (all given labels equal)."""

    hosts: list[Hostname] | None = Field(None, min_length=1, max_length=1000)
    selector: (
        dict[Annotated[str, Field(pattern=LABEL_PATTERN)], Annotated[str, Field(max_length=255)]]
        | None
    ) = Field(None, min_length=1, examples=[{"role": "gateway"}])

    @model_validator(mode="after")
    def _one_of(self) -> Members:
        if (self.hosts is None) == (self.selector is None):
            raise ValueError("give exactly one of 'hosts' (a list) or 'selector' (labels)")
        if self.hosts is not None and len(set(self.hosts)) != len(self.hosts):
            dupes = sorted({h for h in self.hosts if self.hosts.count(h) > 1})
            raise ValueError(f"hosts listed twice: {', '.join(dupes)}")
        return self


class OnExhausted(StrEnum):
    """What a service that keeps failing after its restarts does to its group (sm's failure
    impact): ``fail`` fails its instance, so the activity moves to the standby (failover);
    ``degrade`` keeps the group active where it is, degraded, without that service (for a
    service the group can live without, e.g. a metrics exporter). Either way the failed instance
    is started again once ``window_s`` has passed since it gave up."""

    degrade = "degrade"
    fail = "fail"


class FailurePolicy(_Strict):
    """Restart a failed service in place up to ``max_restarts`` times within ``window_s``
    seconds; one more failure in the window exhausts it: ``on_exhausted`` says whether that
    fails the instance over (``fail``, the default) or only degrades the group."""

    max_restarts: int = Field(3, ge=0, le=100)
    window_s: float = Field(60.0, gt=0, le=86_400)
    on_exhausted: OnExhausted = OnExhausted.fail


class _Probe(_Strict):
    period_s: float = Field(1.0, ge=0.05, le=3600, description="How often the probe runs.")
    timeout_s: float = Field(1.0, gt=0, le=3600, description="How long one probe may take.")

    @model_validator(mode="after")
    def _timeout_within_period(self) -> _Probe:
        if self.timeout_s > self.period_s:
            raise ValueError(
                f"timeout_s ({self.timeout_s}) exceeds period_s ({self.period_s}): "
                "probes would overlap"
            )
        return self


class ProcessProbe(_Probe):
    """Healthy while the started process is alive."""

    type: Literal["process"] = "process"


class HttpProbe(_Probe):
    """Healthy when ``GET url`` answers ``expect_status``."""

    type: Literal["http"]
    url: HttpUrl
    expect_status: int = Field(200, ge=100, le=599)


class TcpProbe(_Probe):
    """Healthy when a TCP connection to ``host:port`` opens."""

    type: Literal["tcp"]
    host: str = Field("127.0.0.1", min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)


class ScriptProbe(_Probe):
    """Healthy when ``argv`` exits 0 within the timeout."""

    type: Literal["script"]
    argv: Command


Probe = Annotated[ProcessProbe | HttpProbe | TcpProbe | ScriptProbe, Field(discriminator="type")]


class ServiceSpec(_Strict):
    """One service of a group: how to start, stop and check it, and what it needs first."""

    name: Name
    start: Command
    stop: Command | None = Field(None, description="Default: SIGTERM, then SIGKILL.")
    probe: Probe = Field(default_factory=ProcessProbe)
    depends_on: list[Name] = Field(
        default_factory=list, description="Services of this group started before this one."
    )


class ServiceGroupSpec(_Strict):
    """What an operator declares (``PUT /v1/service-groups/{name}``, JSON or YAML)."""

    name: Name | None = Field(None, description="Optional; must equal the name in the path.")
    description: str = Field("", max_length=1000)
    redundancy: Redundancy
    members: Members
    preferred: list[Hostname] = Field(
        default_factory=list,
        description="Priority order: the first available listed host runs the active.",
    )
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    services: list[ServiceSpec] = Field(min_length=1, max_length=100)


class GroupState(StrEnum):
    """A group's state. ``unplaced``: declared, not yet seen by the controller; ``go-active``:
    the active instances are starting; ``degraded``: active without a healthy standby."""

    unplaced = "unplaced"
    go_active = "go-active"
    active = "active"
    standby = "standby"
    degraded = "degraded"
    failed = "failed"
    disabled = "disabled"


class ServiceGroupView(ServiceGroupSpec):
    """A stored group: the spec plus what the service knows about it."""

    model_config = ConfigDict(extra="ignore")

    name: Name
    uuid: str
    state: GroupState
    state_reason: str = Field("", description="Why the group is not active (empty if it is).")
    admin: str = Field("enabled", description="enabled, or disabled by the operator.")
    locked_members: list[str] = Field(
        default_factory=list, description="Member hosts the operator locked out of the group."
    )
    slots: list[str] = Field(description="The activity slots, each with its own lease.")
    start_order: list[str] = Field(description="Services in start order (stop: reversed).")
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, doc: dict[str, Any]) -> ServiceGroupView:
        return cls.model_validate({k: v for k, v in doc.items() if k != "_id"})


class ServiceGroupCollection(BaseModel):
    service_groups: list[ServiceGroupView]
    next: str | None = None


class LeaseView(BaseModel):
    """An activity lease: who holds the slot until when, under which fencing token."""

    group: str
    slot: str
    holder: str | None = Field(description="None: free (released or never taken).")
    token: int = Field(description="Fencing token of the latest grant (0: never granted).")
    expires_at: datetime | None = None
    held: bool = Field(description="True while a holder's lease has not expired.")


class LeaseCollection(BaseModel):
    leases: list[LeaseView]


class InstanceState(StrEnum):
    """sm's per-instance states."""

    initial = "initial"
    disabled = "disabled"
    enabling = "enabling"
    enabled_standby = "enabled-standby"
    enabled_active = "enabled-active"
    disabling = "disabling"
    failed = "failed"


class InstanceReport(BaseModel):
    """The agent's latest report for the instance."""

    state: str
    reason: str = ""
    role: str | None = None
    fencing_token: int | None = None
    pid: int | None = None
    time: datetime | None = None


class InstanceView(BaseModel):
    """One instance of a group's service on a member host."""

    instance_id: str
    group: str
    service: str
    host: str
    role: str | None = Field(description="Assigned role: active, standby, or None (not placed).")
    token: int | None = Field(None, description="Fencing token of an active assignment.")
    state: InstanceState
    reason: str = ""
    assigned_at: datetime | None = None
    last_report: InstanceReport | None = None


class InstanceCollection(BaseModel):
    group: str
    state: str = Field(description="The group's state (see the group).")
    state_reason: str = ""
    active_host: str | None = Field(
        None, description="The activity lease's holder (n-plus-m: the first slot's)."
    )
    active_hosts: list[str] = Field(
        default_factory=list, description="Every host holding an activity slot (n-plus-m: N)."
    )
    instances: list[InstanceView]

    @classmethod
    def of(cls, group: str, placement: dict[str, Any] | None) -> InstanceCollection:
        p = placement or {}
        return cls(
            group=group,
            state=p.get("state", GroupState.unplaced.value),
            state_reason=p.get("state_reason", ""),
            active_host=p.get("holder"),
            active_hosts=p.get("holders", []),
            instances=[InstanceView.model_validate(i) for i in p.get("instances", [])],
        )


class RestartRequest(BaseModel):
    """``POST /v1/service-groups/{name}/restart``: restart one instance in place."""

    model_config = ConfigDict(extra="forbid")

    service: str = Field(min_length=1, max_length=63)
    host: str = Field(min_length=1, max_length=255)


class RestartAccepted(BaseModel):
    instance_id: str
    host: str
    service: str
    command: str = Field(description="Id of the service.instance.restart command sent.")
