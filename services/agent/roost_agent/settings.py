"""Agent settings (``ROOST_*`` environment variables); identity defaults come from the node."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from roost_shared.catalog import HOSTNAME_PATTERN, MAC_PATTERN
from roost_shared.hostkeys import HOST_KEY_FILE, parse_key, read_key
from roost_shared.settings import RoostSettings

SYS_NET = Path("/sys/class/net")


def default_interface() -> str | None:
    """The interface of the default IPv4 route (``/proc/net/route``), if there is one."""
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 1 and fields[1] == "00000000":
            return fields[0]
    return None


def node_mac() -> str:
    """The management MAC: the default route's interface, else the first real interface."""
    candidates = [default_interface(), *sorted(p.name for p in SYS_NET.glob("*"))]
    for name in candidates:
        if not name or name == "lo":
            continue
        try:
            mac = (SYS_NET / name / "address").read_text().strip().lower()
        except OSError:
            continue
        if re.fullmatch(MAC_PATTERN, mac) and mac != "00:00:00:00:00:00":
            return mac
    raise RuntimeError("no network interface with a MAC address; set ROOST_MGMT_MAC")


def node_hostname() -> str:
    """The node's short hostname, lower-cased (a valid Roost hostname or ``localhost``)."""
    name = socket.gethostname().split(".")[0].lower()
    return name if re.fullmatch(HOSTNAME_PATTERN, name) else "localhost"


class AgentSettings(RoostSettings):
    """What an agent needs to know; on a real node only ``ROOST_AMQP_URL`` is usually set."""

    service: str = "agent"
    mgmt_mac: str = Field(
        default_factory=node_mac, description="Identity of the node; routing key of its commands."
    )
    hostname: str = Field(default_factory=node_hostname)
    mgmt_ip: str | None = Field(
        None, description="Reported management address; default: the source address to the broker."
    )
    state_dir: Path = Field(
        Path("/var/lib/roost-agent"),
        description="Applied version (applied.json) and applied configs (config/<version>.json).",
    )
    profile: Path | None = Field(
        None, description="JSON hardware profile (simulation); default: read the real node."
    )
    boot_id: str | None = Field(
        None, description="Default: the kernel's boot id, or a new one per process with a profile."
    )
    apply_hooks: Path | None = Field(
        None, description="Directory of executables run as HOOK VERSION PATH after a config write."
    )
    hook_timeout_s: float = Field(
        120.0, gt=0, description="Per configuration hook and per software release hook."
    )
    # Software updates (roost_agent.software).
    base_version: str = Field(
        "1.0.0",
        pattern=r"^\d+(\.\d+){0,3}$",
        description="The software version of a host on which no release was ever installed.",
    )
    reboot_command: str | None = Field(
        None,
        description="How a release that needs a reboot reboots the node (e.g. 'systemctl "
        "reboot'); unset (simulation, containers): the agent stops as on SIGTERM and exits "
        "with roost_agent.software.REBOOT_EXIT_CODE for its supervisor to start it again.",
    )
    software_url: str | None = Field(
        None,
        description="Base URL of the software service (comma-separated for several): release "
        "archives are downloaded from there and nowhere else (http or https; any other scheme, "
        "host, port or path, and a redirect elsewhere, is refused before a request). Unset: "
        "every software.install is refused.",
    )
    release_keys_file: Path | None = Field(
        None,
        description="The site's release signing public keys, one base64 Ed25519 key a line "
        "('#' comments; the software service's release-keys.pub), provisioned on the node and "
        "read at every install. A release is installed only when its metadata is signed by one.",
    )
    release_public_keys: list[str] = Field(
        default_factory=list,
        description='More release signing keys (JSON list, e.g. ["n8hT...="]), as the software '
        "service's setting of that name. No key at all: every software.install is refused.",
    )
    max_release_bytes: int = Field(
        512 * 1024 * 1024,
        gt=0,
        description="Largest release archive downloaded (streamed to disk, never held in "
        "memory); a larger one fails its install.",
    )
    inventory_poll_s: float = Field(60.0, gt=0, description="How often inventory is re-read.")
    publish_retry_s: float = Field(
        300.0, ge=0, description="How long a publish is retried while the broker is unreachable."
    )
    # Commands come one at a time and in order; nothing to gain from a deep prefetch.
    prefetch: int = Field(4, ge=1, le=5000)
    # A command that fails is parked at once (roost.dead) instead of going through retry queues:
    # a queue per back-off step per agent adds up across a fleet, and the config service re-sends
    # whatever a host has not applied when it announces itself.
    retry_delays_ms: list[int] = Field(default_factory=list)

    # Heartbeats (roost_agent.heartbeat; the format and why two paths: roost_shared.heartbeat).
    heartbeat_addr: str = Field(
        "127.0.0.1:8199", description="host:port of the host service's UDP heartbeat receiver."
    )
    heartbeat_period_ms: int = Field(
        100, ge=20, le=10_000, description="One UDP heartbeat datagram every this many ms."
    )
    bus_heartbeat_period_ms: int = Field(
        5000,
        ge=100,
        le=60_000,
        description="One passive heartbeat on the bus every this many ms (slow on purpose: the "
        "host service probes the bus path at once when UDP stops; at 1,000 hosts a 1 s period "
        "cost it ~14 % of a core in message handling alone).",
    )
    heartbeat_bind_ip: str | None = Field(
        None,
        description="Source address of UDP heartbeats; default: mgmt_ip when it is an address "
        "of this machine (simulated hosts' 127.1.x.y), else the kernel's choice.",
    )
    # The service link (roost_agent.link; why and the format: roost_shared.smlink).
    sm_link_addr: str = Field(
        "127.0.0.1:8198", description="host:port of the service service's UDP link receiver."
    )
    sm_link_period_ms: int = Field(
        200, ge=20, le=10_000, description="UDP hello every this many ms while leases are held."
    )
    sm_link_bus_period_ms: int = Field(
        1000, ge=100, le=60_000, description="Bus hello every this many ms while leases are held."
    )
    lease_margin_s: float = Field(
        0.5,
        ge=0,
        le=60,
        description="An active steps down this long before its lease runs out unrenewed (covers "
        "clock skew between this host and the service service's).",
    )
    lease_max_s: float = Field(
        4.0,
        gt=0,
        le=3600,
        description="The longest an activity lease is believed to run from now, whatever "
        "expiry an assign or grant carries (the service service's ROOST_ACTIVITY_TTL_S; "
        "grants renew it every hello).",
    )
    bus_secured: bool = Field(
        False,
        description="Per-host bus credentials (ROOST_AMQP_URL names user agent-<mac hex>): "
        "publish only through the exchange agent.<mac hex> and consume only what the control "
        "plane declared for this host (python -m roost_agent.credentials add MAC). Default: the "
        "shared topology, declared by the agent itself.",
    )
    command_keys_file: Path | None = Field(
        None,
        description="JSON file of the issuers' command public keys ({config: <base64>, ...}; "
        "python -m roost_shared.commands keygen makes it), provisioned with the node. Without "
        "it (or command_keys) every command is refused.",
    )
    command_keys: dict[str, str | list[str]] | None = Field(
        None, description="The same public keys given inline (JSON), e.g. from a Secret."
    )
    heartbeat_key: SecretStr | None = Field(
        None,
        description="This host's key (hex) for heartbeats and the service link, derived from "
        "the site secret at enrolment (python -m roost_shared.hostkeys derive MAC); wins over "
        "heartbeat_key_file.",
    )
    heartbeat_key_file: Path | None = Field(
        None, description="File with this host's key (hex); default <state_dir>/heartbeat.key."
    )
    heartbeat_insecure: bool = Field(
        False,
        description="Start without a host key (heartbeats and hellos unsigned: a host service "
        "with a site secret drops them, and fails this host). Never in production.",
    )

    def host_key(self) -> bytes | None:
        """This host's key; None only with ``heartbeat_insecure`` and no key anywhere. Raises
        :class:`roost_shared.hostkeys.KeyFileError` when it is missing or unreadable."""
        if self.heartbeat_key is not None:
            return parse_key(self.heartbeat_key.get_secret_value(), "ROOST_HEARTBEAT_KEY")
        path = self.heartbeat_key_file or self.state_dir / HOST_KEY_FILE
        if self.heartbeat_insecure and not path.exists():
            return None
        return read_key(path)

    @field_validator("mgmt_mac")
    @classmethod
    def _mac(cls, value: str) -> str:
        value = value.strip().lower().replace("-", ":")
        if not re.fullmatch(MAC_PATTERN, value):
            raise ValueError("expected a MAC address like 02:00:00:00:00:01")
        return value

    @field_validator("software_url")
    @classmethod
    def _software_url(cls, value: str | None) -> str | None:
        from roost_agent.download import Refused, parse_bases

        try:
            parse_bases(value)
        except Refused as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(HOSTNAME_PATTERN, value):
            raise ValueError("expected a hostname of a-z, 0-9 and '-'")
        return value
