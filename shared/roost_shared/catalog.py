"""Every event type on the Roost bus, with its typed payload.

Producers and consumers in different services import the payload models from here, so a
service never imports another service's package. The routing key of an event is its type.
Add new events to :data:`CATALOG` as services grow.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

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


# Configuration and agents ----------------------------------------------------------------------

MAC_PATTERN = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"
HOSTNAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class Personality(StrEnum):
    """What a host is for (StarlingX personalities)."""

    controller = "controller"
    worker = "worker"
    storage = "storage"


class HostAnnounced(_Strict):
    """``agent.host.announced``: an agent (re)started or reconnected and says who it is.

    The management MAC is the node's identity until the operator has given it a hostname;
    ``config_applied`` lets config re-send what a returning host missed.
    """

    mgmt_mac: str = Field(pattern=MAC_PATTERN)
    hostname: str = Field(pattern=HOSTNAME_PATTERN, description="The node's own hostname.")
    mgmt_ip: str | None = Field(None, max_length=64)
    agent_version: str = Field("0", max_length=64)
    boot_id: str = Field(max_length=64, description="Changes on every boot of the node.")
    config_applied: int = Field(0, ge=0)


class CpuInventory(_Strict):
    model: str = ""
    sockets: int = Field(ge=0)
    cores: int = Field(ge=0, description="Physical cores in all.")
    threads: int = Field(ge=0, description="Logical CPUs in all.")


class DiskInventory(_Strict):
    device: str
    size_gb: float = Field(ge=0)
    type: str = Field("unknown", description="ssd, hdd, nvme or unknown")


class PortInventory(_Strict):
    name: str
    mac: str | None = None
    speed_mbps: int | None = None
    link: bool = False


class PciInventory(_Strict):
    address: str
    vendor: str = ""
    device: str = ""
    pclass: str = ""


class InventoryReported(_Strict):
    """``agent.inventory.reported``: an agent's hardware, sent at start and again on change."""

    mgmt_mac: str = Field(pattern=MAC_PATTERN)
    cpu: CpuInventory
    memory_mb: int = Field(ge=0)
    disks: list[DiskInventory] = Field(default_factory=list)
    ports: list[PortInventory] = Field(default_factory=list)
    pci: list[PciInventory] = Field(default_factory=list)


class ConfigApplied(_Strict):
    """``agent.config.applied``: the outcome of a ``config.apply`` command on a host."""

    mgmt_mac: str = Field(pattern=MAC_PATTERN)
    version: int = Field(ge=0)
    ok: bool
    error: str | None = Field(None, max_length=2000)


class CommandRefused(_Strict):
    """``agent.command.refused``: an agent did not run a command it received (roost_shared.commands:
    unsigned, signed by the wrong key or issuer, meant for another host, expired, replayed)."""

    mgmt_mac: str = Field(pattern=MAC_PATTERN)
    command_type: str = Field(max_length=200)
    command_id: str = Field(max_length=200)
    reason: str = Field(max_length=40)
    detail: str = Field("", max_length=500)
    forgery: bool = Field(description="The reason says someone tried to make the agent act.")


class ConfigApply(_Strict):
    """Command ``config.apply`` (to ``roost.commands``, key ``agent.<mac hex>``): bring the host to
    configuration ``version``. Agents apply it idempotently and remember the version."""

    version: int = Field(ge=1)
    hostname: str = Field(pattern=HOSTNAME_PATTERN)
    personality: Personality
    config: dict[str, Any] = Field(default_factory=dict)


class HostRecord(BaseModel):
    """``config.host.added|updated|deleted``: a host as other services need to know it.

    The BMC password travels only as ``bmc_password_enc``, the config service's Fernet
    ciphertext: the record carries only ciphertext; only holders of the site key (config, host)
    can read it. ``bmc_port`` unset means IPMI's 623.
    """

    uuid: str
    # Defaults: envelopes drop None values (``exclude_none``), so a discovered host's record
    # arrives without these keys.
    hostname: str | None = None
    personality: Personality | None = None
    mgmt_mac: str
    mgmt_ip: str | None = None
    bmc_type: str | None = None
    bmc_address: str | None = None
    bmc_port: int | None = Field(None, ge=1, le=65535)
    bmc_username: str | None = None
    bmc_password_enc: str | None = Field(None, repr=False)
    labels: dict[str, str] = Field(default_factory=dict)
    install_state: str
    config_target: int = 0
    config_applied: int = 0


# Host lifecycle ------------------------------------------------------------------------------


class HostStateChanged(BaseModel):
    """``host.state.changed``: one transition of a host's StarlingX states (host service).

    Every transition is also a timeline entry of the host; ``reason`` is a short code
    (``operator-request``, ``intest-passed``, ...), ``cause`` says in words what triggered it.
    """

    uuid: str
    hostname: str | None = None
    personality: Personality | None = None
    from_administrative: str
    from_operational: str
    from_availability: str
    to_administrative: str
    to_operational: str
    to_availability: str
    task: str = ""
    cause: str
    reason: str
    actor: str = "system"
    time: datetime


# Service management -------------------------------------------------------------------------


class ServiceGroupChanged(BaseModel):
    """``service.group.changed``: a group's state changed (service service's controller):
    ``active``, ``go-active``, ``degraded``, ``failed``, ``disabled``, with the reason and the
    hosts holding its activity. (``service.group.updated`` is a new declaration.)"""

    name: str
    from_state: str | None = None
    to_state: str
    reason: str = ""
    active_hosts: list[str] = Field(default_factory=list)
    time: datetime


class ServiceGroupRecord(BaseModel):
    """``service.group.created|updated|deleted``: a service group as others need to know it
    (service service). The full declaration is at ``GET /v1/service-groups/{name}``."""

    uuid: str
    name: str
    redundancy: str = Field(description="active-standby, n-plus-m or n")
    active: int | None = Field(None, description="Active instances; None for n (every member).")
    standby: int = 0
    member_hosts: list[str] = Field(default_factory=list)
    member_selector: dict[str, str] = Field(default_factory=dict)
    services: list[str] = Field(default_factory=list, description="In start order.")
    state: str
    version: int
    time: datetime


class InstanceAssign(_Strict):
    """Command ``service.instance.assign`` (to ``roost.commands``, key ``agent.<mac hex>``): run
    (or keep running, with a new role or token) one instance of a service on this host.

    ``spec`` is the agent's process spec (``roost_agent.pmon.ProcessSpec`` as JSON; the agent
    validates it and reports ``failed`` with the reason if it cannot run it). The process gets
    ``ROOST_ROLE`` and ``ROOST_FENCING_TOKEN`` in its environment; an assign whose
    ``fencing_token`` is lower than the one the agent already runs the instance with is stale
    and is refused (reported, not run)."""

    group: str
    service: str
    instance_id: str = Field(description="Stable per (group, service, host).")
    role: str = Field(description="active or standby")
    fencing_token: int | None = None
    spec: dict[str, Any]
    lease_expires_at: datetime | None = Field(
        None,
        description="Active only: when the activity lease runs out unless renewed. The agent "
        "steps the instance down (runs it as standby) before then unless a grant on the service "
        "link (roost_shared.smlink) extends it; None: no lease watch (no link).",
    )


class InstanceRestart(_Strict):
    """Command ``service.instance.restart``: restart one running instance in place (an
    operator's ``sm-restart``); same role and token."""

    group: str
    service: str
    instance_id: str


class InstanceRemove(_Strict):
    """Command ``service.instance.remove``: stop and forget one instance on this host."""

    group: str
    service: str
    instance_id: str


class InstanceChanged(_Strict):
    """``agent.instance.changed``: a health transition of an instance's process on a host
    (states of ``roost_agent.pmon``: starting, running, healthy, unhealthy, exited, restarting,
    failed, stopped), sent within ~100 ms of it."""

    mgmt_mac: str
    hostname: str | None = None
    group: str
    service: str
    instance_id: str
    role: str | None = None
    fencing_token: int | None = None
    state: str
    reason: str = ""
    pid: int | None = None
    code: int | None = None
    signal: int | None = None
    time: datetime
    command: str | None = Field(
        None,
        description="Id of the last assign/remove/restart command the agent applied to this "
        "instance: the controller knows a report comes after its command (go-active waits for "
        "the old active to acknowledge its step-down).",
    )


# Software (the software service and the agents) -------------------------------------------------

SOFTWARE_HOST_STATES = (
    "idle",
    "downloading",
    "installing",
    "rebooting",
    "activating",
    "installed",
    "failed",
    "rolling-back",
    "rolled-back",
)


class SoftwareInstall(_Strict):
    """Command ``software.install``: download a release archive, verify every file against
    ``files``, run its ``install`` hook, reboot when ``reboot_required`` (the agent restarts the
    node itself; the host is locked), run ``activate`` and make it the running release. Agents
    apply it idempotently: a host already running ``version`` only reports again."""

    release_id: str
    version: str
    url: str = Field(description="Where to GET the archive (carries a short-lived ticket).")
    archive_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    files: dict[str, str] = Field(description="sha256 of every file, from the signed metadata.")
    install_hook: str | None = None
    activate_hook: str | None = None
    rollback_hook: str | None = None
    reboot_required: bool = False


class SoftwareRollback(_Strict):
    """Command ``software.rollback``: run ``release_id``'s rollback hook and make the release
    the host ran before it the running one again (a reboot if ``reboot_required``)."""

    release_id: str
    reboot_required: bool = False


class SoftwareReported(_Strict):
    """``agent.software.reported``: what a host runs and where its last software action is;
    sent when the agent starts and at every step of an install or rollback."""

    mgmt_mac: str = Field(pattern=MAC_PATTERN)
    hostname: str | None = None
    boot_id: str
    running_release: str | None = Field(None, description="None: the base software.")
    running_version: str
    release_id: str | None = Field(None, description="The release the last action was about.")
    state: str = Field(description="One of SOFTWARE_HOST_STATES.")
    pending_reboot: bool = False
    error: str | None = Field(None, max_length=2000)
    disk_free_mb: int = Field(ge=0)
    command: str | None = Field(None, description="Id of the command this report answers.")
    time: datetime


class SoftwareReleaseChanged(BaseModel):
    """``software.release.changed``: a release was uploaded, changed state or was deleted."""

    id: str
    version: str
    state: str = Field(description="available, deploying, deployed, removing, unavailable, deleted")


class SoftwareHostChanged(BaseModel):
    """``software.host.changed``: a host's deploy state for the current deployment."""

    hostname: str
    release_id: str | None = None
    state: str = Field(description="pending, installing, installed, failed")
    running_version: str | None = None
    reason: str = ""


class StrategyChanged(BaseModel):
    """``software.strategy.changed``: an update strategy's state or progress moved."""

    uuid: str
    release_id: str
    state: str
    stage: int | None = Field(None, description="Index of the stage in progress.")
    stages: int
    steps_done: int
    steps_total: int
    current: str = Field("", description="The step in progress, in words.")
    reason: str = ""


CATALOG: dict[str, type[BaseModel]] = {
    # Commands-as-events that any producer publishes; the fault service consumes them.
    "fault.alarm.set": AlarmSet,
    "fault.alarm.clear": AlarmClear,
    "fault.log.write": LogWrite,
    # Facts the fault service publishes after committing them.
    "fault.alarm.raised": AlarmNotice,
    "fault.alarm.changed": AlarmNotice,
    "fault.alarm.cleared": AlarmNotice,
    # Agents report; the config service consumes.
    "agent.host.announced": HostAnnounced,
    "agent.inventory.reported": InventoryReported,
    "agent.config.applied": ConfigApplied,
    "agent.command.refused": CommandRefused,
    # The config service tells everyone about hosts.
    "config.host.added": HostRecord,
    "config.host.updated": HostRecord,
    "config.host.deleted": HostRecord,
    # The host service tells everyone about host state transitions.
    "host.state.changed": HostStateChanged,
    # The service service tells everyone about service groups.
    "service.group.created": ServiceGroupRecord,
    "service.group.updated": ServiceGroupRecord,
    "service.group.deleted": ServiceGroupRecord,
    # Agents report their service instances; the service service consumes.
    "agent.instance.changed": InstanceChanged,
    # Commands (exchange roost.commands, routing key agent.<mac hex>).
    "config.apply": ConfigApply,
    "service.group.changed": ServiceGroupChanged,
    "service.instance.assign": InstanceAssign,
    "service.instance.remove": InstanceRemove,
    "service.instance.restart": InstanceRestart,
    # Software: commands to agents, their reports, what the software service tells everyone.
    "software.install": SoftwareInstall,
    "software.rollback": SoftwareRollback,
    "agent.software.reported": SoftwareReported,
    "software.release.changed": SoftwareReleaseChanged,
    "software.host.changed": SoftwareHostChanged,
    "software.strategy.changed": StrategyChanged,
}

_TYPE_BY_MODEL: dict[type[BaseModel], str] = {
    model: name for name, model in CATALOG.items() if list(CATALOG.values()).count(model) == 1
}


#: What agents publish; each names the host it is about by ``mgmt_mac``.
AGENT_REPORTS = (
    HostAnnounced,
    InventoryReported,
    ConfigApplied,
    CommandRefused,
    InstanceChanged,
    SoftwareReported,
)


def host_identity(payload: BaseModel | None) -> str | None:
    """The management MAC of the host an agent report claims to be about, or None for a
    payload that is not an agent report (an agent with its own exchange may send only these:
    :mod:`roost_shared.agentbus`)."""
    return payload.mgmt_mac if isinstance(payload, AGENT_REPORTS) else None


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
