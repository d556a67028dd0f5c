"""Config domain rules, free of I/O: the vocabulary (modes, install states, BMC types), input
rules (hostnames, MACs, labels, parameters, BMC fields), what a host's desired configuration is,
when it gets a new version, how an agent's report moves a host, and which alarms and logs follow.

Every function here is deterministic given its arguments (``now`` is passed in), so the rules are
unit-tested without a broker or a database (tests/config/test_config_logic.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from roost_shared.catalog import (
    HOSTNAME_PATTERN,
    AlarmClear,
    AlarmSet,
    AlarmType,
    HostRecord,
    LogWrite,
    Personality,
    Severity,
)

# Vocabulary ------------------------------------------------------------------------------------


class SystemMode(StrEnum):
    """How the site is built (StarlingX: AIO simplex, AIO duplex, standard)."""

    simplex = "simplex"
    duplex = "duplex"
    standard = "standard"


class BmcType(StrEnum):
    ipmi = "ipmi"
    redfish = "redfish"
    none = "none"


class InstallState(StrEnum):
    """Where a host is in being brought into the system.

    ``discovered``: an agent announced an unknown MAC; no hostname or personality yet.
    ``provisioning``: hostname and personality known, first configuration not applied yet.
    ``provisioned``: its agent applied a configuration at least once (later versions may lag:
    see ``config_status``). ``failed``: its first configuration failed to apply.
    """

    discovered = "discovered"
    provisioning = "provisioning"
    provisioned = "provisioned"
    failed = "failed"


class ConfigStatus(StrEnum):
    """The short answer to "is this host configured as desired?"."""

    none = "none"  # nothing to apply yet (discovered)
    up_to_date = "up-to-date"
    out_of_date = "out-of-date"
    failed = "failed"


#: Subfunctions a host may carry (StarlingX: an AIO controller is also a worker, lowlatency).
SUBFUNCTIONS = ("controller", "worker", "storage", "lowlatency")

#: Alarm and log ids (StarlingX numbering, fm-doc events.yaml).
ALARM_CONFIG_FAILURE = "200.011"
ALARM_CONFIG_OUT_OF_DATE = "250.001"
#: Not in StarlingX: two nodes claim one hostname. A configuration-family id of its own, so that
#: clearing a configuration failure never clears an identity conflict and vice versa.
ALARM_HOST_CONFLICT = "250.010"
#: Not in StarlingX: a host's agent refused commands that someone forged (roost_shared.commands).
ALARM_FORGED_COMMANDS = "250.011"
#: Not in StarlingX: a host reports a configuration version config never sent it.
ALARM_CONFIG_AHEAD = "250.012"
#: StarlingX's customer log "<host> has been 'discovered' on the network".
LOG_HOST_DISCOVERED = "200.020"

# Input rules -----------------------------------------------------------------------------------

HOSTNAME_RE = re.compile(HOSTNAME_PATTERN)
LABEL_KEY_RE = re.compile(r"^[a-z0-9./-]{1,63}$")
LABEL_VALUE_MAX = 255
LABELS_MAX = 64
PARAM_KEY_RE = re.compile(r"^[a-z0-9_.-]{1,63}$")
PARAM_VALUE_MAX = 1024
PARAMS_MAX = 128
SERVERS_MAX = 3  # StarlingX takes up to three DNS and three NTP servers
_FQDN_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def check_hostname(value: str) -> str:
    """A lower-case RFC 1123 label (what StarlingX accepts for a host name)."""
    if not HOSTNAME_RE.match(value):
        raise ValueError(
            "must be a lower-case RFC 1123 label: a-z, 0-9 and '-', 1-63 characters, "
            "starting and ending with a letter or digit"
        )
    return value


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Bounded key/value labels; the message names the offending key."""
    if len(labels) > LABELS_MAX:
        raise ValueError(f"at most {LABELS_MAX} labels (got {len(labels)})")
    for key, value in labels.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise ValueError(f"label key {key[:70]!r}: 1-63 characters of a-z, 0-9, '.', '/', '-'")
        if not isinstance(value, str) or len(value) > LABEL_VALUE_MAX:
            raise ValueError(f"label {key!r}: the value must be a string of at most 255 characters")
    return dict(labels)


def _is_unicode(text: str) -> bool:
    # JSON may carry a lone surrogate ("\ud800"); pydantic refuses it in ``str`` fields but
    # these values are ``Any``, and the database driver cannot encode it (it was a 500).
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """User parameters for the desired configuration: bounded, scalar values."""
    if len(params) > PARAMS_MAX:
        raise ValueError(f"at most {PARAMS_MAX} parameters (got {len(params)})")
    for key, value in params.items():
        if not PARAM_KEY_RE.fullmatch(key):
            raise ValueError(f"parameter key {key[:70]!r}: 1-63 characters of a-z, 0-9, '_.-'")
        if not isinstance(value, str | int | float | bool):
            raise ValueError(f"parameter {key!r}: the value must be a string, number or boolean")
        if isinstance(value, str) and len(value) > PARAM_VALUE_MAX:
            raise ValueError(f"parameter {key!r}: the value is longer than {PARAM_VALUE_MAX}")
        if isinstance(value, str) and not _is_unicode(value):
            raise ValueError(f"parameter {key!r}: the value is not valid Unicode text")
    return dict(params)


def check_servers(servers: list[str], *, names_allowed: bool) -> list[str]:
    """DNS servers are IP addresses; NTP servers may also be host names."""
    if len(servers) > SERVERS_MAX:
        raise ValueError(f"at most {SERVERS_MAX} servers")
    out = []
    for s in servers:
        s = s.strip().lower()
        try:
            out.append(str(ipaddress.ip_address(s)))
        except ValueError:
            if names_allowed and _FQDN_RE.match(s):
                out.append(s)
            else:
                kind = "an IP address or host name" if names_allowed else "an IP address"
                raise ValueError(f"{s[:80]!r} is not {kind}") from None
    if len(set(out)) != len(out):
        raise ValueError("servers are listed twice")
    return out


def bmc_problem(
    bmc_type: str | None,
    address: str | None,
    username: str | None,
    has_password: bool,
    *,
    port: int | None = None,
) -> tuple[str, str] | None:
    """``(field, reason)`` when the BMC fields are half-given, else None.

    A BMC is either not configured at all (type ``none`` and nothing else) or fully: type,
    address, username and password together (StarlingX's bm_type/bm_ip/bm_username/bm_password).
    """
    kind = bmc_type or BmcType.none
    if kind == BmcType.none:
        for name, given in (
            ("bmc_address", address),
            ("bmc_port", port),
            ("bmc_username", username),
            ("bmc_password", has_password),
        ):
            if given:
                return "bmc_type", f"{name} is given but bmc_type is none; say ipmi or redfish"
        return None
    for name, given in (
        ("bmc_address", address),
        ("bmc_username", username),
        ("bmc_password", has_password),
    ):
        if not given:
            return (
                name,
                f"a {kind} BMC needs bmc_address, bmc_username and bmc_password: {name} is missing",
            )
    return None


# Desired configuration -------------------------------------------------------------------------

#: What each personality's configuration adds (small and declarative; the agent interprets it).
PERSONALITY_SETTINGS: dict[Personality, dict[str, Any]] = {
    Personality.controller: {
        "kubernetes_role": "control-plane",
        "ntp_role": "server",  # controllers follow the system's NTP servers, others follow them
        "platform_services": ["config", "fault", "host", "service", "software"],
    },
    Personality.worker: {
        "kubernetes_role": "worker",
        "ntp_role": "client",
        "platform_services": [],
    },
    Personality.storage: {
        "kubernetes_role": "none",
        "ntp_role": "client",
        "platform_services": [],
        "ceph": {"osd": True},
    },
}

#: System fields that reach hosts (the description is for people only).
SYSTEM_CONFIG_FIELDS = ("name", "mode", "timezone", "dns_servers", "ntp_servers")


def configurable(host: Mapping[str, Any]) -> bool:
    """A host gets configuration once it has both a hostname and a personality."""
    return bool(host.get("hostname")) and bool(host.get("personality"))


def desired_config(system: Mapping[str, Any], host: Mapping[str, Any]) -> dict[str, Any] | None:
    """The configuration the host should run, or None while it cannot have one (discovered)."""
    if not configurable(host):
        return None
    personality = Personality(host["personality"])
    return {
        "hostname": host["hostname"],
        "personality": personality.value,
        "subfunctions": list(host.get("subfunctions") or [personality.value]),
        "system": {k: system.get(k) for k in SYSTEM_CONFIG_FIELDS},
        "settings": PERSONALITY_SETTINGS[personality],
        "labels": dict(sorted((host.get("labels") or {}).items())),
        "parameters": dict(sorted((host.get("parameters") or {}).items())),
    }


def config_digest(config: Mapping[str, Any]) -> str:
    """A stable fingerprint of a configuration document (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_version(
    system: Mapping[str, Any], host: Mapping[str, Any], now: datetime
) -> dict[str, Any] | None:
    """The ``$set`` that gives the host a new configuration version, or None if unchanged.

    A version is bumped only when the desired document really changes (its digest), so saving
    the same thing twice sends nothing. The first version moves a discovered host to
    provisioning. ``out_of_date_since`` keeps the start of the current lag.
    """
    config = desired_config(system, host)
    if config is None:
        return None
    digest = config_digest(config)
    if digest == host.get("config_digest"):
        return None
    update: dict[str, Any] = {
        "config_target": int(host.get("config_target") or 0) + 1,
        "config_digest": digest,
        "config": config,
        "out_of_date_since": host.get("out_of_date_since") or now,
    }
    if host.get("install_state") in (None, InstallState.discovered):
        update["install_state"] = InstallState.provisioning.value
    return update


def config_status(host: Mapping[str, Any]) -> ConfigStatus:
    target = int(host.get("config_target") or 0)
    applied = int(host.get("config_applied") or 0)
    if target == 0:
        return ConfigStatus.none
    if host.get("config_failed_version") and host["config_failed_version"] > applied:
        return ConfigStatus.failed
    return ConfigStatus.up_to_date if applied >= target else ConfigStatus.out_of_date


# Agent reports ---------------------------------------------------------------------------------


@dataclass
class Effects:
    """What a report does to one host: fields to set, alarms to raise or clear, logs."""

    set: dict[str, Any] = field(default_factory=dict)
    alarms: list[AlarmSet | AlarmClear] = field(default_factory=list)
    logs: list[LogWrite] = field(default_factory=list)
    resend: bool = False
    note: str | None = None  # why nothing happened, for the service's log

    @property
    def changed(self) -> bool:
        return bool(self.set)


def entity(host: Mapping[str, Any]) -> str:
    """The FM entity of a host: ``host=<hostname>``, or its MAC while it has no name."""
    return f"host={host.get('hostname') or host['mgmt_mac']}"


def on_applied(
    host: Mapping[str, Any], version: int, ok: bool, error: str | None, now: datetime
) -> Effects:
    """An agent reports the outcome of ``config.apply`` for ``version``."""
    fx = Effects()
    target = int(host.get("config_target") or 0)
    applied = int(host.get("config_applied") or 0)
    if version > target:
        fx.note = f"version {version} was never sent (target is {target}): alarmed"
        if not host.get("ahead_alarmed"):
            fx.alarms.append(config_ahead_alarm(host, version))
            fx.set["ahead_alarmed"] = True
        return fx
    if host.get("ahead_alarmed"):
        fx.alarms.append(AlarmClear(alarm_id=ALARM_CONFIG_AHEAD, entity_instance_id=entity(host)))
        fx.set["ahead_alarmed"] = False
    if not ok:
        fx.set = {"config_failed_version": version, "config_error": (error or "")[:2000]}
        if host.get("install_state") == InstallState.provisioning:
            fx.set["install_state"] = InstallState.failed.value
        fx.alarms.append(config_failure_alarm(host, version, error))
        fx.set["failure_alarmed"] = True
        return fx
    if version <= applied:
        fx.note = f"ignored: version {version} is not newer than applied {applied}"
        return fx
    fx.set["config_applied"] = version  # never backwards: only a newer version gets here
    failed = host.get("config_failed_version")
    if failed and version >= failed:
        fx.set["config_failed_version"] = None
        fx.set["config_error"] = None
        failed = None
    if host.get("failure_alarmed") and not failed:
        fx.alarms.append(AlarmClear(alarm_id=ALARM_CONFIG_FAILURE, entity_instance_id=entity(host)))
        fx.set["failure_alarmed"] = False
    if version >= target:
        fx.set["out_of_date_since"] = None
        if host.get("install_state") in (InstallState.provisioning, InstallState.failed):
            fx.set["install_state"] = InstallState.provisioned.value
        if host.get("drift_alarmed"):
            fx.alarms.append(
                AlarmClear(alarm_id=ALARM_CONFIG_OUT_OF_DATE, entity_instance_id=entity(host))
            )
            fx.set["drift_alarmed"] = False
    return fx


def on_refused(
    host: Mapping[str, Any],
    reason: str,
    command_type: str,
    now: datetime,
    *,
    threshold: int,
    window_s: float,
    realarm_s: float = 60.0,
) -> Effects:
    """An agent refused a forged command. ``threshold`` of them within ``window_s`` raise
    250.011 (re-raised with the new count at most every ``realarm_s``, so a flood of forgeries
    is not a flood of alarm updates). It is never cleared by itself: someone holds the site's
    broker credentials and is using them, which an operator must look into."""
    fx = Effects()
    since = now - timedelta(seconds=window_s)
    recent = [t for t in host.get("forgeries") or [] if t > since][-(threshold - 1) :]
    recent.append(now)
    total = int(host.get("forgeries_total") or 0) + 1
    fx.set = {"forgeries": recent if threshold > 1 else [now], "forgeries_total": total}
    last_alarm = host.get("forgery_alarm_at")
    if len(recent) >= threshold and (
        last_alarm is None or now - last_alarm >= timedelta(seconds=realarm_s)
    ):
        fx.alarms.append(forged_commands_alarm(host, total, reason, command_type))
        fx.set["forgery_alarm_at"] = now
    return fx


def drift_action(host: Mapping[str, Any], now: datetime, grace_s: float) -> Effects:
    """Raise 250.001 once a host has lagged longer than the grace period; clear it when not."""
    fx = Effects()
    target = int(host.get("config_target") or 0)
    applied = int(host.get("config_applied") or 0)
    since = host.get("out_of_date_since")
    lagging = target > applied and since is not None
    if lagging and not host.get("drift_alarmed") and now - since >= timedelta(seconds=grace_s):
        fx.alarms.append(out_of_date_alarm(host, since))
        fx.set["drift_alarmed"] = True
    elif not lagging and host.get("drift_alarmed"):
        fx.alarms.append(
            AlarmClear(alarm_id=ALARM_CONFIG_OUT_OF_DATE, entity_instance_id=entity(host))
        )
        fx.set["drift_alarmed"] = False
    return fx


@dataclass
class Announcement:
    """How config reads an ``agent.host.announced``."""

    kind: str  # "new" (unknown MAC), "known" or "conflict" (hostname claimed by another MAC)
    conflict_with: str | None = None


def classify_announcement(
    known: Mapping[str, Any] | None,
    reported_hostname: str,
    name_owner: Mapping[str, Any] | None,
) -> Announcement:
    """Classify an announcement.

    ``known``: the host with the announced MAC, if any. ``name_owner``: the host whose *assigned*
    hostname equals the agent's own hostname, if any.

    * A known MAC whose assigned hostname differs from what the agent says is fine: the operator
      renamed it and the next configuration renames the node.
    * A node without an assigned hostname (new, or still discovered) whose own hostname is
      another host's assigned hostname is a conflict: two machines claim one name. It is never
      merged into that host; it stays a separate discovered host and an alarm says why.
    """
    assigned = known.get("hostname") if known else None
    if (
        not assigned
        and name_owner is not None
        and (known is None or name_owner.get("uuid") != known.get("uuid"))
    ):
        return Announcement("conflict", conflict_with=name_owner["hostname"])
    return Announcement("known" if known else "new")


def discovered_log(mac: str, reported_hostname: str, ip: str | None) -> LogWrite:
    where = f" at {ip}" if ip else ""
    return LogWrite(
        event_log_id=LOG_HOST_DISCOVERED,
        entity_instance_id=f"host={mac}.event=discovered",
        entity_type_id="host.event",
        severity=Severity.warning,
        reason_text=(
            f"{mac} has been 'discovered' on the network{where} "
            f"(calls itself {reported_hostname}); assign a hostname and personality"
        ),
        event_log_type=AlarmType.equipment,
        probable_cause="unspecified-reason",
    )


def conflict_entity(owner_hostname: str, mac: str) -> str:
    return f"host={owner_hostname}.conflict={mac}"


def conflict_alarm(owner_hostname: str, mac: str, reported_hostname: str) -> AlarmSet:
    return AlarmSet(
        alarm_id=ALARM_HOST_CONFLICT,
        entity_instance_id=conflict_entity(owner_hostname, mac),
        entity_type_id="host.conflict",
        severity=Severity.major,
        reason_text=(
            f"Node {mac} calls itself {reported_hostname}, which is already the hostname of "
            f"another host; it was not merged and is kept as a separate discovered node"
        ),
        alarm_type=AlarmType.integrity_violation,
        probable_cause="duplicate-information",
        proposed_repair_action=(
            "Assign the node another hostname, or delete it if it is not meant to join"
        ),
        mgmt_affecting=False,
    )


def forged_commands_alarm(
    host: Mapping[str, Any], total: int, reason: str, command_type: str
) -> AlarmSet:
    name = host.get("hostname") or host["mgmt_mac"]
    return AlarmSet(
        alarm_id=ALARM_FORGED_COMMANDS,
        entity_instance_id=entity(host),
        entity_type_id="host",
        severity=Severity.critical,
        reason_text=(
            f"{name} refused {total} forged command(s); the last was {command_type} ({reason}). "
            "Someone with broker access is trying to make the host act"
        )[:2048],
        alarm_type=AlarmType.integrity_violation,
        probable_cause="unauthorized-access",
        proposed_repair_action=(
            "Find who publishes to roost.commands (the host's agent log names each command), "
            "rotate the broker credentials, then delete this alarm"
        ),
        mgmt_affecting=False,
    )


def config_ahead_alarm(host: Mapping[str, Any], version: int) -> AlarmSet:
    name = host.get("hostname") or host["mgmt_mac"]
    target = int(host.get("config_target") or 0)
    return AlarmSet(
        alarm_id=ALARM_CONFIG_AHEAD,
        entity_instance_id=entity(host),
        entity_type_id="host",
        severity=Severity.major,
        reason_text=(
            f"{name} reports configuration version {version}, which was never sent to it "
            f"(target {target}); it will not take newer configuration until this is resolved"
        ),
        alarm_type=AlarmType.integrity_violation,
        probable_cause="configuration-or-customization-error",
        proposed_repair_action=(
            "Check the host for tampering; reset its agent's applied.json to the target version "
            "or below and restart the agent"
        ),
        mgmt_affecting=True,
    )


def config_failure_alarm(host: Mapping[str, Any], version: int, error: str | None) -> AlarmSet:
    name = host.get("hostname") or host["mgmt_mac"]
    detail = f": {error}" if error else ""
    return AlarmSet(
        alarm_id=ALARM_CONFIG_FAILURE,
        entity_instance_id=entity(host),
        entity_type_id="host",
        severity=Severity.major,
        reason_text=f"{name} experienced a configuration failure (version {version}){detail}"[
            :2048
        ],
        alarm_type=AlarmType.processing_error,
        probable_cause="configuration-or-customization-error",
        proposed_repair_action="Check the error, fix the configuration and lock/unlock the host",
        service_affecting=True,
        mgmt_affecting=True,
    )


def out_of_date_alarm(host: Mapping[str, Any], since: datetime) -> AlarmSet:
    name = host.get("hostname") or host["mgmt_mac"]
    return AlarmSet(
        alarm_id=ALARM_CONFIG_OUT_OF_DATE,
        entity_instance_id=entity(host),
        entity_type_id="host",
        severity=Severity.major,
        reason_text=(
            f"{name} Configuration is out-of-date. (applied: "
            f"{int(host.get('config_applied') or 0)} target: {int(host['config_target'])})"
        ),
        alarm_type=AlarmType.operational,
        probable_cause="unspecified-reason",
        proposed_repair_action="Check that the host's agent is running; it re-applies on return",
        # Like StarlingX: an out-of-date host is not yet running what operators asked for, so
        # orchestration (software updates) must not treat it as settled.
        mgmt_affecting=True,
        timestamp=since,
    )


def host_record(host: Mapping[str, Any]) -> HostRecord:
    """What other services hear about a host: the BMC password only as the ciphertext stored
    (the host service holds the site key and decrypts it when it calls the BMC)."""
    return HostRecord(
        uuid=host["uuid"],
        hostname=host.get("hostname"),
        personality=host.get("personality"),
        mgmt_mac=host["mgmt_mac"],
        mgmt_ip=host.get("mgmt_ip"),
        bmc_type=host.get("bmc_type"),
        bmc_address=host.get("bmc_address"),
        bmc_port=host.get("bmc_port"),
        bmc_username=host.get("bmc_username"),
        bmc_password_enc=host.get("bmc_password_enc"),
        labels=host.get("labels") or {},
        install_state=host["install_state"],
        config_target=int(host.get("config_target") or 0),
        config_applied=int(host.get("config_applied") or 0),
    )


def inventory_digest(inventory: Mapping[str, Any]) -> str:
    """Fingerprint of a hardware report, to tell a change from a repeat."""
    return config_digest(inventory)
