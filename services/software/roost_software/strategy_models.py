"""An update strategy's API models (StarlingX vim's sw-deploy strategy, simplified).

A strategy rolls one release across the fleet as **stages** (a group of hosts updated together)
of **steps** (query alarms, move service activity away, lock, install, reboot, unlock, wait).
Every stage and step is persisted with its state, start and end time and reason, so an apply
survives a restart of the software service and can be aborted and resumed.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from roost_shared.releases import RELEASE_ID_PATTERN


class ApplyType(StrEnum):
    serial = "serial"
    parallel = "parallel"
    ignore = "ignore"


class ControllerApplyType(StrEnum):
    serial = "serial"
    ignore = "ignore"


class InstanceAction(StrEnum):
    """What happens to a host's workloads before it is locked (vim's default-instance-action)."""

    #: Service-group activity swacts away and Kubernetes pods are drained (evicted and
    #: rescheduled elsewhere) and the step waits until they are: no downtime where a standby or
    #: spare capacity exists.
    migrate = "migrate"
    #: The lock stops what runs on the host; it starts again after the unlock (downtime).
    stop_start = "stop-start"


class AlarmRestrictions(StrEnum):
    #: Any active alarm (but the software service's own) stops a stage.
    strict = "strict"
    #: Only management-affecting alarms do.
    relaxed = "relaxed"


class StrategyState(StrEnum):
    ready_to_apply = "ready-to-apply"
    applying = "applying"
    applied = "applied"
    apply_failed = "apply-failed"
    aborting = "aborting"
    aborted = "aborted"


#: States in which the executor works on the strategy.
ACTIVE = (StrategyState.applying, StrategyState.aborting)


class StageState(StrEnum):
    initial = "initial"
    in_progress = "in-progress"
    done = "done"
    failed = "failed"
    aborted = "aborted"


class StepState(StrEnum):
    initial = "initial"
    in_progress = "in-progress"
    done = "done"
    failed = "failed"
    skipped = "skipped"


class StrategyCreate(BaseModel):
    """``POST /v1/strategy`` (``roost strategy create``)."""

    model_config = ConfigDict(extra="forbid")

    # The pattern of every release id: anything else named no release, and text that is not
    # Unicode (a lone surrogate) reached the database query (a 500).
    release: str = Field(pattern=RELEASE_ID_PATTERN, description="Id of the release to roll out.")
    controller_apply_type: ControllerApplyType = ControllerApplyType.serial
    worker_apply_type: ApplyType = ApplyType.serial
    max_parallel_worker_hosts: int = Field(
        2, ge=2, le=100, description="Workers updated together when worker_apply_type=parallel."
    )
    default_instance_action: InstanceAction = InstanceAction.migrate
    alarm_restrictions: AlarmRestrictions = AlarmRestrictions.strict
    stop_on_failure: bool = Field(
        True,
        description="Stop the whole strategy when a stage fails (else its hosts are left as "
        "they are and the next stage runs; the strategy ends apply-failed).",
    )


class StepView(BaseModel):
    name: str
    hosts: list[str] = Field(default_factory=list)
    state: StepState
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str = ""


class StageView(BaseModel):
    index: int
    name: str
    hosts: list[str] = Field(default_factory=list)
    state: StageState
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str = ""
    steps: list[StepView]


class StrategyView(StrategyCreate):
    model_config = ConfigDict(extra="ignore")

    uuid: str
    version: str = Field(description="The release's version.")
    state: StrategyState
    reason: str = Field("", description="Why it failed or was aborted.")
    abort_requested: bool = False
    current_stage: int | None = None
    steps_done: int
    steps_total: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    stages: list[StageView]
    skipped: dict[str, str] = Field(
        default_factory=dict, description="Hosts left out of the plan, and why."
    )

    @classmethod
    def of(cls, doc: dict[str, Any]) -> StrategyView:
        steps = [s for stage in doc["stages"] for s in stage["steps"]]
        finished = (StepState.done, StepState.skipped)
        return cls.model_validate(
            {
                **{k: v for k, v in doc.items() if k != "_id"},
                "steps_done": sum(1 for s in steps if s["state"] in finished),
                "steps_total": len(steps),
            }
        )


class StrategyAccepted(BaseModel):
    uuid: str
    state: StrategyState
    detail: str
