"""Service group alarms (fm-doc numbering), entity ``service_group=<name>``.

* **400.001** critical: the group is failed (no instance active), with the reason.
* **400.002** major: loss of redundancy: the group is active but has no healthy standby
  (``degraded``).
* **400.005** major: communication failure on one path of the service link to a host
  (entity ``host=<name>.path=<udp|bus>``; :mod:`roost_service.link`). StarlingX raises 400.005
  for a lost sm peer interface; here the peer is each agent that holds an activity lease.
"""

from __future__ import annotations

from datetime import datetime

from roost_shared.catalog import AlarmClear, AlarmSet, AlarmType, Severity

FAILED = "400.001"
REDUNDANCY = "400.002"
PATH_LOST = "400.005"


def entity(group: str) -> str:
    return f"service_group={group}"


def wanted(state: str) -> set[str]:
    """The alarms a group state calls for."""
    return {"failed": {FAILED}, "degraded": {REDUNDANCY}}.get(state, set())


def raise_(alarm_id: str, group: str, reason: str, now: datetime) -> AlarmSet:
    if alarm_id == FAILED:
        return AlarmSet(
            alarm_id=FAILED,
            entity_instance_id=entity(group),
            entity_type_id="service_group",
            severity=Severity.critical,
            reason_text=f"Service group {group} failure: {reason}",
            alarm_type=AlarmType.processing_error,
            probable_cause="underlying-resource-unavailable",
            proposed_repair_action="Check the group's member hosts and service instances.",
            service_affecting=True,
            timestamp=now,
        )
    return AlarmSet(
        alarm_id=REDUNDANCY,
        entity_instance_id=entity(group),
        entity_type_id="service_group",
        severity=Severity.major,
        reason_text=f"Service group {group} loss of redundancy: {reason}",
        alarm_type=AlarmType.operational,
        probable_cause="underlying-resource-unavailable",
        proposed_repair_action="Bring a standby member host back in service.",
        timestamp=now,
    )


def clear(alarm_id: str, group: str, now: datetime) -> AlarmClear:
    return AlarmClear(alarm_id=alarm_id, entity_instance_id=entity(group), timestamp=now)


def path_entity(host: str, path: str) -> str:
    return f"host={host}.path={path}"


def path_lost(host: str, path: str, after_s: float, now: datetime) -> AlarmSet:
    return AlarmSet(
        alarm_id=PATH_LOST,
        entity_instance_id=path_entity(host, path),
        entity_type_id="host.path",
        severity=Severity.major,
        reason_text=(
            f"Service link to {host}: no message on the {path} path for {after_s:g} s while the "
            "other path works; activity is kept, one more path lost would leave the host to the "
            "host service's failure decision"
        ),
        alarm_type=AlarmType.communication,
        probable_cause="loss-of-signal",
        proposed_repair_action=(
            "Check the management network (udp) or the broker connection (bus) of the host."
        ),
        timestamp=now,
    )


def path_back(host: str, path: str, now: datetime) -> AlarmClear:
    return AlarmClear(alarm_id=PATH_LOST, entity_instance_id=path_entity(host, path), timestamp=now)
