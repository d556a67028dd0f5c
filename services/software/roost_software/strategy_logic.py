"""Planning a strategy: which hosts go together, and the steps of each stage. No I/O.

Order (StarlingX vim's sw-deploy): a ``deploy-start`` stage (precheck and start the
deployment), the controllers one at a time, then the workers (and storage hosts) — one per stage
(serial) or up to ``max_parallel_worker_hosts`` per stage (parallel) — then ``deploy-complete``.

Parallel stages keep redundancy: two hosts that are both members of one service group (any group
with more than one member: active/standby, N+M) never go down in the same stage, so a group
always keeps a member in service. This is graph colouring, done greedily (hosts with the most
shared groups first, each into the first stage with room and no conflict): not always the fewest
stages, but never a wrong one, and linear enough for 1,000 hosts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from roost_software.strategy_models import (
    ApplyType,
    ControllerApplyType,
    InstanceAction,
    StageState,
    StepState,
    StrategyCreate,
)

#: Steps of one host stage, in order. ``reboot`` only for a release that requires one;
#: ``swact-services``/``restore-services`` only where service groups have members on the hosts.
HOST_STEPS = (
    "query-alarms",
    "swact-services",
    "lock-hosts",
    "install",
    "reboot",
    "unlock-hosts",
    "wait-hosts-available",
    "restore-services",
    "wait-alarms-clear",
)
#: Steps before which an abort stops a stage at once (nothing on its hosts changed yet).
BEFORE_LOCK = ("query-alarms", "swact-services")


@dataclass(frozen=True, slots=True)
class HostPlan:
    hostname: str
    personality: str


@dataclass(slots=True)
class Plan:
    stages: list[dict[str, Any]] = field(default_factory=list)
    #: Hosts left out and why (already running the release, personality not applicable, ignored).
    skipped: dict[str, str] = field(default_factory=dict)


def conflicts(groups: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """hostname → the hosts it must not go down with (members of a shared group)."""
    out: dict[str, set[str]] = {}
    for members in groups.values():
        hosts = sorted(set(members))
        if len(hosts) < 2:
            continue
        for h in hosts:
            out.setdefault(h, set()).update(x for x in hosts if x != h)
    return out


def batches(
    hosts: Sequence[str], limit: int, groups: Mapping[str, Iterable[str]]
) -> list[list[str]]:
    """Hosts in stages of at most ``limit``, no two members of one group in a stage."""
    avoid = conflicts(groups)
    order = sorted(hosts, key=lambda h: (-len(avoid.get(h, ())), h))
    stages: list[list[str]] = []
    for h in order:
        for stage in stages:
            if len(stage) < limit and not avoid.get(h, set()).intersection(stage):
                stage.append(h)
                break
        else:
            stages.append([h])
    return [sorted(s) for s in stages]


def _step(name: str, hosts: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "hosts": hosts,
        "state": StepState.initial.value,
        "started_at": None,
        "finished_at": None,
        "reason": "",
    }


def _stage(index: int, name: str, hosts: list[str], steps: list[str]) -> dict[str, Any]:
    return {
        "index": index,
        "name": name,
        "hosts": hosts,
        "state": StageState.initial.value,
        "started_at": None,
        "finished_at": None,
        "reason": "",
        "steps": [_step(s, hosts) for s in steps],
    }


def host_steps(reboot_required: bool, action: InstanceAction, has_groups: bool) -> list[str]:
    """The steps of a host stage for this release and these options."""
    steps = list(HOST_STEPS)
    if not reboot_required:
        steps.remove("reboot")
    if not has_groups or action is InstanceAction.stop_start:
        steps.remove("swact-services")
    if not has_groups:
        steps.remove("restore-services")
    return steps


def plan(
    options: StrategyCreate,
    *,
    hosts: Sequence[HostPlan],
    applies_to: Iterable[str],
    up_to_date: Iterable[str],
    reboot_required: bool,
    groups: Mapping[str, Iterable[str]],
) -> Plan:
    """The stages for ``hosts``; ``up_to_date`` already run the release; ``groups`` maps each
    service group to its member hosts."""
    result = Plan()
    wanted = set(applies_to)
    done = set(up_to_date)
    grouped = {h for members in groups.values() if len(set(members)) > 1 for h in members}
    controllers: list[str] = []
    workers: list[str] = []
    for h in sorted(hosts, key=lambda x: x.hostname):
        if h.personality not in wanted:
            result.skipped[h.hostname] = f"the release does not apply to {h.personality} hosts"
        elif h.hostname in done:
            result.skipped[h.hostname] = "already runs the release"
        elif h.personality == "controller":
            if options.controller_apply_type is ControllerApplyType.ignore:
                result.skipped[h.hostname] = "controller-apply-type is ignore"
            else:
                controllers.append(h.hostname)
        elif options.worker_apply_type is ApplyType.ignore:
            result.skipped[h.hostname] = "worker-apply-type is ignore"
        else:
            workers.append(h.hostname)

    stages = result.stages
    stages.append(_stage(0, "deploy-start", [], ["precheck", "deploy-start"]))
    host_groups: list[tuple[str, list[str]]] = [("controllers", [c]) for c in controllers]
    limit = (
        options.max_parallel_worker_hosts if options.worker_apply_type is ApplyType.parallel else 1
    )
    host_groups += [("workers", b) for b in batches(workers, limit, groups)]
    for name, members in host_groups:
        steps = host_steps(
            reboot_required, options.default_instance_action, bool(grouped.intersection(members))
        )
        stages.append(_stage(len(stages), name, members, steps))
    stages.append(_stage(len(stages), "deploy-complete", [], ["wait-deployed"]))
    return result


def unfinished(stage: Mapping[str, Any]) -> bool:
    return stage["state"] not in (StageState.done.value,)
