"""The config service's API shapes. Input models validate (422 naming the field); views are
built from stored documents field by field, so a stored secret can never leak into a response.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    WithJsonSchema,
    field_validator,
)

from roost_config import logic
from roost_config.logic import BmcType, ConfigStatus, InstallState, SystemMode
from roost_shared.catalog import (
    CpuInventory,
    DiskInventory,
    PciInventory,
    Personality,
    PortInventory,
)
from roost_shared.refs import normalise_mac

Hostname = Annotated[str, AfterValidator(logic.check_hostname)]
Mac = Annotated[str, AfterValidator(normalise_mac)]
# The checks are functions (their messages name the key); the schemas say the same to clients
# and to spec-driven tools (without them a fuzzer's keys never got past the key check).
_PARAMETER_VALUE = {
    "anyOf": [
        {"type": "string", "maxLength": logic.PARAM_VALUE_MAX},
        {"type": "number"},
        {"type": "boolean"},
    ]
}
Labels = Annotated[
    dict[str, str],
    AfterValidator(logic.check_labels),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": logic.LABELS_MAX,
            "propertyNames": {"pattern": logic.LABEL_KEY_RE.pattern},
            "additionalProperties": {"type": "string", "maxLength": logic.LABEL_VALUE_MAX},
        }
    ),
]
Parameters = Annotated[
    dict[str, Any],
    AfterValidator(logic.check_parameters),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": logic.PARAMS_MAX,
            "propertyNames": {"pattern": logic.PARAM_KEY_RE.pattern},
            "additionalProperties": _PARAMETER_VALUE,
        }
    ),
]
Subfunction = Annotated[str, Field(pattern="^(" + "|".join(logic.SUBFUNCTIONS) + ")$")]


def _ip(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError("not an IPv4 or IPv6 address") from None


def _bmc_address(value: str | None) -> str | None:
    """An IP address, or a host name (Redfish BMCs are often reached by name)."""
    if value is None:
        return None
    try:
        return _ip(value)
    except ValueError:
        return logic.check_servers([value], names_allowed=True)[0]


IpAddress = Annotated[str, AfterValidator(_ip)]
BmcAddress = Annotated[str, AfterValidator(_bmc_address)]
#: The BMC's UDP (IPMI) or TCP (Redfish) port when it is not the protocol's default (IPMI: 623).
BmcPort = Annotated[int, Field(ge=1, le=65535, description="BMC port; unset: 623 for IPMI.")]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# System ----------------------------------------------------------------------------------------


class SystemView(BaseModel):
    uuid: str
    name: str
    mode: SystemMode
    timezone: str
    dns_servers: list[str]
    ntp_servers: list[str]
    description: str
    created_at: datetime
    updated_at: datetime


class SystemPatch(_Input):
    """Change the system; any field left out keeps its value."""

    name: str | None = Field(None, min_length=1, max_length=255)
    mode: SystemMode | None = None
    timezone: str | None = Field(None, max_length=64, examples=["UTC", "Europe/Paris"])
    dns_servers: list[str] | None = Field(None, max_length=logic.SERVERS_MAX)
    ntp_servers: list[str] | None = Field(None, max_length=logic.SERVERS_MAX)
    description: str | None = Field(None, max_length=1024)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value[:64]!r} (IANA names, e.g. UTC)") from None
        return value

    @field_validator("dns_servers")
    @classmethod
    def _dns(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else logic.check_servers(value, names_allowed=False)

    @field_validator("ntp_servers")
    @classmethod
    def _ntp(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else logic.check_servers(value, names_allowed=True)


# Hosts -----------------------------------------------------------------------------------------


class HostCreate(_Input):
    """Add a host by hand (``system host-add``). BMC fields come all together or not at all."""

    hostname: Hostname
    personality: Personality
    mgmt_mac: Mac
    mgmt_ip: IpAddress | None = None
    subfunctions: list[Subfunction] | None = Field(None, max_length=4)
    bmc_type: BmcType = BmcType.none
    bmc_address: BmcAddress | None = None
    bmc_port: BmcPort | None = None
    bmc_username: str | None = Field(None, min_length=1, max_length=64)
    bmc_password: SecretStr | None = Field(None, min_length=1, max_length=256)
    location: str = Field("", max_length=255)
    labels: Labels = Field(default_factory=dict)
    parameters: Parameters = Field(default_factory=dict)


class HostPatch(_Input):
    """Change a host; only the fields sent change. Sending ``bmc_type: none`` removes the BMC."""

    hostname: Hostname | None = None
    personality: Personality | None = None
    mgmt_mac: Mac | None = None
    mgmt_ip: IpAddress | None = None
    subfunctions: list[Subfunction] | None = Field(None, max_length=4)
    bmc_type: BmcType | None = None
    bmc_address: BmcAddress | None = None
    bmc_port: BmcPort | None = None
    bmc_username: str | None = Field(None, min_length=1, max_length=64)
    bmc_password: SecretStr | None = Field(None, min_length=1, max_length=256)
    location: str | None = Field(None, max_length=255)
    labels: Labels | None = None


class HostView(BaseModel):
    """A host as the API shows it. There is no password field: ``bmc_password_set`` says whether
    one is stored."""

    uuid: str
    hostname: str | None
    reported_hostname: str | None
    personality: Personality | None
    subfunctions: list[str]
    mgmt_mac: str
    mgmt_ip: str | None
    bmc_type: BmcType
    bmc_address: str | None
    bmc_port: int | None = None
    bmc_username: str | None
    bmc_password_set: bool
    location: str
    labels: dict[str, str]
    install_state: InstallState
    config_target: int
    config_applied: int
    config_status: ConfigStatus
    conflict: str | None = Field(None, description="Why an announcement was not merged.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, doc: dict[str, Any]) -> HostView:
        return cls(
            uuid=doc["uuid"],
            hostname=doc.get("hostname"),
            reported_hostname=doc.get("reported_hostname"),
            personality=doc.get("personality"),
            subfunctions=doc.get("subfunctions") or [],
            mgmt_mac=doc["mgmt_mac"],
            mgmt_ip=doc.get("mgmt_ip"),
            bmc_type=doc.get("bmc_type") or BmcType.none,
            bmc_address=doc.get("bmc_address"),
            bmc_port=doc.get("bmc_port"),
            bmc_username=doc.get("bmc_username"),
            bmc_password_set=bool(doc.get("bmc_password_enc")),
            location=doc.get("location") or "",
            labels=doc.get("labels") or {},
            install_state=doc["install_state"],
            config_target=int(doc.get("config_target") or 0),
            config_applied=int(doc.get("config_applied") or 0),
            config_status=logic.config_status(doc),
            conflict=doc.get("conflict"),
            created_at=doc["created_at"],
            updated_at=doc["updated_at"],
        )


class HostCollection(BaseModel):
    hosts: list[HostView]
    next: str | None = None


class LabelsBody(_Input):
    labels: Labels


class ParametersBody(_Input):
    parameters: Parameters


class ParametersPatch(_Input):
    """Merge: a key with ``null`` removes it."""

    parameters: Annotated[
        dict[str, Any],
        WithJsonSchema(
            {
                "type": "object",
                "propertyNames": {"pattern": logic.PARAM_KEY_RE.pattern},
                "additionalProperties": {"anyOf": [*_PARAMETER_VALUE["anyOf"], {"type": "null"}]},
            }
        ),
    ]

    @field_validator("parameters")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        logic.check_parameters({k: v for k, v in value.items() if v is not None})
        return value


class ParametersView(BaseModel):
    uuid: str
    hostname: str | None
    parameters: dict[str, Any]
    config_target: int


class HostConfigView(BaseModel):
    """Desired against applied configuration of one host."""

    uuid: str
    hostname: str | None
    config_target: int
    config_applied: int
    config_status: ConfigStatus
    out_of_date: bool
    out_of_date_since: datetime | None
    alarmed: bool = Field(description="Alarm 250.001 is raised for this host.")
    failed_version: int | None
    error: str | None
    desired: dict[str, Any] | None = Field(description="The configuration of version target.")


class InventoryView(BaseModel):
    """The hardware an agent reported (StarlingX: host-cpu-list, host-memory-list, ...)."""

    uuid: str
    hostname: str | None
    mgmt_mac: str
    cpu: CpuInventory
    memory_mb: int
    disks: list[DiskInventory]
    ports: list[PortInventory]
    pci: list[PciInventory]
    reported_at: datetime
    changed_at: datetime
