"""Strategy operations and routes: create (plan), apply (or resume), abort, delete, show.

Creating plans the stages from what the peers say now (hosts and personalities from the host
service, running versions from the agents' reports, service-group members from the service
service); nothing runs until ``apply``. ``apply`` on an aborted or failed strategy resumes it
from the first step not done (the failed step runs again).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from roost_shared.auth import Principal, require_admin, require_reader
from roost_shared.catalog import AlarmClear
from roost_shared.db import Session
from roost_shared.events import Envelope, utcnow
from roost_shared.problems import Conflict
from roost_software.deploy import DeployOps
from roost_software.executor import SOURCE, STRATEGY_ENTITY, Executor
from roost_software.peers import Peers
from roost_software.releases import ReleaseStore
from roost_software.strategy_logic import HostPlan, plan
from roost_software.strategy_models import (
    ACTIVE,
    StageState,
    StepState,
    StrategyAccepted,
    StrategyCreate,
    StrategyState,
    StrategyView,
)
from roost_software.strategy_store import StrategyStore

DEPLOYABLE = ("available", "deploying")


class StrategyOps:
    def __init__(
        self,
        store: StrategyStore,
        executor: Executor,
        deploy: DeployOps,
        peers: Peers,
        releases: ReleaseStore,
    ) -> None:
        self.store = store
        self.executor = executor
        self.deploy = deploy
        self.peers = peers
        self.releases = releases
        self.db = executor.db
        self.outbox = executor.outbox

    async def create(self, body: StrategyCreate) -> dict[str, Any]:
        existing = await self.store.current()
        if existing is not None:
            raise Conflict(
                kind="Strategy",
                id=existing["uuid"],
                reason=f"a strategy for {existing['release']} exists ({existing['state']}); "
                "finish or abort it, then delete it (roost strategy delete)",
                field="strategy",
            )
        release = await self.releases.get(body.release)
        if release["state"] not in DEPLOYABLE:
            raise Conflict(
                kind="Release",
                id=body.release,
                reason=f"it is {release['state']}; only an available (or the deploying) release "
                "can be rolled out",
                field="body.release",
            )
        current = await self.deploy.current()
        if current is not None and current.release != body.release and current.state != "deployed":
            raise Conflict(
                kind="Release",
                id=body.release,
                reason=f"release {current.release} is being deployed; finish it first",
                field="body.release",
            )
        hosts = [
            HostPlan(h["hostname"], h["personality"])
            for h in await self.peers.hosts()
            if h.get("hostname") and h.get("personality")
        ]
        reports = await self.deploy.hosts()
        up_to_date = [r.hostname for r in reports if r.running_version == release["version"]]
        groups = await self.peers.group_members()
        planned = plan(
            body,
            hosts=hosts,
            applies_to=release["applies_to"],
            up_to_date=up_to_date,
            reboot_required=bool(release["reboot_required"]),
            groups=groups,
        )
        doc = {
            **body.model_dump(mode="json"),
            "uuid": str(uuid.uuid4()),
            "version": release["version"],
            "state": StrategyState.ready_to_apply.value,
            "reason": "",
            "abort_requested": False,
            "current_stage": None,
            "created_at": utcnow(),
            "started_at": None,
            "finished_at": None,
            "skipped": planned.skipped,
            "stages": planned.stages,
        }

        async def work(session: Session) -> None:
            await self.store.insert(session, doc)
            await self.outbox.add(session, [self.executor.progress_event(doc)])

        await self.db.in_transaction(work)
        self.outbox.wake()
        return doc

    async def apply(self) -> dict[str, Any]:
        doc = await self.store.get()
        state = StrategyState(doc["state"])
        if state in ACTIVE:
            raise Conflict(kind="Strategy", id=doc["uuid"], reason=f"it is {state}", field="state")
        if state is StrategyState.applied:
            raise Conflict(
                kind="Strategy",
                id=doc["uuid"],
                reason="it is applied already; delete it",
                field="state",
            )
        fields: dict[str, Any] = {
            "state": StrategyState.applying.value,
            "abort_requested": False,
            "reason": "",
            "finished_at": None,
        }
        redo = (StepState.failed.value, StepState.skipped.value, StepState.in_progress.value)
        for i, stage in enumerate(doc["stages"]):
            if stage["state"] in (StageState.failed.value, StageState.aborted.value):
                fields[f"stages.{i}.state"] = StageState.initial.value
                fields[f"stages.{i}.reason"] = ""
                fields[f"stages.{i}.finished_at"] = None
                for j, step in enumerate(stage["steps"]):
                    if step["state"] in redo:
                        fields[f"stages.{i}.steps.{j}.state"] = StepState.initial.value
        doc = await self.executor.update(doc["uuid"], fields)
        self.executor.wake()
        return doc

    async def abort(self) -> dict[str, Any]:
        doc = await self.store.get()
        if doc["state"] != StrategyState.applying.value:
            raise Conflict(
                kind="Strategy",
                id=doc["uuid"],
                reason=f"it is {doc['state']}; only an applying strategy can be aborted",
                field="state",
            )
        doc = await self.executor.update(
            doc["uuid"], {"state": StrategyState.aborting.value, "abort_requested": True}
        )
        self.executor.wake()
        return doc

    async def delete(self) -> None:
        doc = await self.store.get()
        if doc["state"] in ACTIVE:
            raise Conflict(
                kind="Strategy",
                id=doc["uuid"],
                reason=f"it is {doc['state']}; abort it and wait for it to stop first",
                field="state",
            )
        clear = Envelope.of(
            AlarmClear(entity_instance_id=STRATEGY_ENTITY), source=SOURCE, subject=doc["uuid"]
        )

        async def work(session: Session) -> None:
            await self.store.delete(session)
            await self.outbox.add(session, [clear])

        await self.db.in_transaction(work)
        self.outbox.wake()


def ops(request: Request) -> StrategyOps:
    return request.app.state.strategies


Ops = Annotated[StrategyOps, Depends(ops)]
Admin = Annotated[Principal, Depends(require_admin)]
router = APIRouter(prefix="/v1", dependencies=[Depends(require_reader)], tags=["strategy"])


@router.post("/strategy", response_model=StrategyView, status_code=201)
async def create_strategy(o: Ops, body: StrategyCreate, _: Admin) -> StrategyView:
    """Plan a strategy for a release (``roost strategy create``); nothing runs until apply."""
    return StrategyView.of(await o.create(body))


@router.get("/strategy", response_model=StrategyView)
async def show_strategy(o: Ops) -> StrategyView:
    """The strategy with every stage and step (state, times, reason)."""
    return StrategyView.of(await o.store.get())


@router.post("/strategy/apply", response_model=StrategyAccepted, status_code=202)
async def apply_strategy(o: Ops, _: Admin) -> StrategyAccepted:
    """Apply the strategy, or resume an aborted or failed one from its first step not done."""
    doc = await o.apply()
    return StrategyAccepted(
        uuid=doc["uuid"], state=doc["state"], detail="applying; watch: roost strategy show"
    )


@router.post("/strategy/abort", response_model=StrategyAccepted, status_code=202)
async def abort_strategy(o: Ops, _: Admin) -> StrategyAccepted:
    """Stop after the stage in flight (its hosts come back in service first)."""
    doc = await o.abort()
    return StrategyAccepted(
        uuid=doc["uuid"], state=doc["state"], detail="aborting after the stage in flight"
    )


@router.delete("/strategy", status_code=204)
async def delete_strategy(o: Ops, _: Admin) -> None:
    """Forget the strategy (not while it is applying or aborting)."""
    await o.delete()
