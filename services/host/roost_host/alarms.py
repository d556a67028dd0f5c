"""The alarms heartbeat loss, failures and multi-node failure avoidance raise (fm-doc numbering).

* **200.001** warning, ``host=<name>``: the host is administratively locked (as fm-doc
  events.yaml: out-of-service, service-affecting, not suppressible, management-affecting).
* **200.004** critical, ``host=<name>``: the host failed (every heartbeat path silent, or its
  in-test failed); auto-recovery is in progress, or gave up (the reason text says which).
* **200.005** major, ``host=<name>``: the management network (UDP) heartbeat path is lost while
  the bus still answers (the host is degraded, not failed).
* **200.009** major, ``host=<name>``: the bus heartbeat path is lost while UDP still arrives.
  StarlingX uses 200.009 for its second heartbeat network (cluster-host); Roost's second path is
  the bus, so it takes that id.
* **200.030** major, ``system=roost``: multi-node failure avoidance — many hosts went silent
  together, their failures are held. StarlingX's mtce only logs MNFA; one alarm for the group
  tells the operator why several hosts are degraded at once.
"""

from __future__ import annotations

from datetime import datetime

from roost_shared.catalog import AlarmClear, AlarmSet, AlarmType, Severity

LOCKED = "200.001"
FAILED = "200.004"
UDP_PATH = "200.005"
BUS_PATH = "200.009"
MNFA = "200.030"
MNFA_ENTITY = "system=roost"

PATH_ALARMS = {"udp": UDP_PATH, "bus": BUS_PATH}
PATH_WORDS = {
    "udp": "management network (UDP) heartbeat lost",
    "bus": "bus heartbeat lost",
}


def host_entity(hostname: str) -> str:
    return f"host={hostname}"


def locked(hostname: str, now: datetime) -> AlarmSet:
    return AlarmSet(
        alarm_id=LOCKED,
        entity_instance_id=host_entity(hostname),
        entity_type_id="host",
        severity=Severity.warning,
        reason_text=f"{hostname} was administratively locked to take it out-of-service.",
        alarm_type=AlarmType.operational,
        probable_cause="out-of-service",
        proposed_repair_action="Administratively unlock Host to bring it back in-service.",
        service_affecting=True,
        suppression=False,
        mgmt_affecting=True,
        timestamp=now,
    )


def unlocked(hostname: str, now: datetime) -> AlarmClear:
    return clear_host(LOCKED, hostname, now)


def host_failed(hostname: str, now: datetime, why: str, *, gave_up: bool = False) -> AlarmSet:
    if gave_up:
        text = (
            f"{hostname} experienced a service-affecting failure and auto-recovery gave up: "
            f"{why}. Manual intervention required."
        )
    else:
        text = (
            f"{hostname} experienced a service-affecting failure ({why}). "
            "Auto-recovery in progress."
        )
    return AlarmSet(
        alarm_id=FAILED,
        entity_instance_id=host_entity(hostname),
        entity_type_id="host",
        severity=Severity.critical,
        reason_text=text,
        alarm_type=AlarmType.operational,
        probable_cause="application-subsystem-failure",
        proposed_repair_action=(
            "If auto-recovery cannot bring the host back, check its BMC and console, then lock "
            "and unlock it (or replace it)."
        ),
        service_affecting=True,
        suppression=False,
        mgmt_affecting=True,
        degrade_affecting=False,
        timestamp=now,
    )


def path_lost(hostname: str, path: str, now: datetime) -> AlarmSet:
    if path == "udp":
        text = (
            f"{hostname} experienced a persistent 'Management Network' heartbeat communication "
            "failure; its bus path still answers, so it is degraded, not failed."
        )
        repair = "Check the management network between the host and the controllers."
    else:
        text = (
            f"{hostname} lost its bus heartbeat path (message broker); its management network "
            "heartbeats still arrive, so it is degraded, not failed."
        )
        repair = "Check the host's connection to the message broker (RabbitMQ) and its agent."
    return AlarmSet(
        alarm_id=PATH_ALARMS[path],
        entity_instance_id=host_entity(hostname),
        entity_type_id="host",
        severity=Severity.major,
        reason_text=text,
        alarm_type=AlarmType.communication,
        probable_cause="loss-of-signal",
        proposed_repair_action=repair,
        service_affecting=False,
        suppression=True,
        mgmt_affecting=False,
        degrade_affecting=True,
        timestamp=now,
    )


def mnfa(hostnames: list[str], now: datetime) -> AlarmSet:
    shown = ", ".join(sorted(hostnames)[:20]) + (" ..." if len(hostnames) > 20 else "")
    return AlarmSet(
        alarm_id=MNFA,
        entity_instance_id=MNFA_ENTITY,
        entity_type_id="system",
        severity=Severity.major,
        reason_text=(
            f"Multi-node failure avoidance: {len(hostnames)} hosts lost heartbeat together "
            f"({shown}); failing them is held until heartbeats return."
        ),
        alarm_type=AlarmType.communication,
        probable_cause="loss-of-signal",
        proposed_repair_action="Check the site's management network and the message broker.",
        service_affecting=True,
        suppression=False,
        mgmt_affecting=True,
        timestamp=now,
    )


def clear(alarm_id: str, entity_instance_id: str, now: datetime) -> AlarmClear:
    return AlarmClear(alarm_id=alarm_id, entity_instance_id=entity_instance_id, timestamp=now)


def clear_host(alarm_id: str, hostname: str, now: datetime) -> AlarmClear:
    return clear(alarm_id, host_entity(hostname), now)
