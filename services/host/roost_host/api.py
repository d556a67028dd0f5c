"""The host service's HTTP API: hosts and their states, operator actions, timelines.

Routers stay thin: they validate, run ``HostOperations`` in one transaction, wake the outbox
relay (and the step runner when an action started a timed step) and shape the answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from roost_host.kubework import KubeRunner
from roost_host.models import (
    ActionRequest,
    HostCollection,
    HostView,
    TimelineCollection,
    TimelineEntry,
)
from roost_host.operations import ActionRefused, HostOperations
from roost_host.steps import StepRunner
from roost_host.store import HostStore
from roost_shared.api import Platform
from roost_shared.auth import Principal, require_admin, require_admin_or_peer, require_reader
from roost_shared.paging import next_if_full
from roost_shared.problems import PROBLEM_JSON, problem_response

MAX_LIMIT = 1000


@dataclass
class HostContext:
    """What the host routes need, built by the app's lifespan."""

    platform: Platform
    store: HostStore
    ops: HostOperations
    steps: StepRunner
    kube: KubeRunner

    async def run(self, work: Any) -> Any:
        """Run ``work(session)`` in one transaction, then wake the relay, the step runner and
        the Kubernetes runner (a lock requests a drain)."""
        result = await self.platform.db.in_transaction(work)
        self.platform.outbox.wake()
        self.steps.wake()
        self.kube.wake()
        return result


def ctx(request: Request) -> HostContext:
    return request.app.state.host


Ctx = Annotated[HostContext, Depends(ctx)]
Admin = Annotated[Principal, Depends(require_admin)]
AdminOrPeer = Annotated[Principal, Depends(require_admin_or_peer)]
#: The host actions a peer (the software service's strategy) may run; the rest are admin only.
PEER_ACTIONS = frozenset({"lock", "unlock", "force-lock"})

router = APIRouter(prefix="/v1", dependencies=[Depends(require_reader)])


def install_handlers(app: FastAPI) -> None:
    """A refused action is a 409 problem naming ``action``, with the current state beside it."""

    @app.exception_handler(ActionRefused)
    async def _refused(request: Request, exc: ActionRefused) -> JSONResponse:
        base = problem_response(
            409, str(exc), request=request, errors=[{"field": "action", "message": str(exc)}]
        )
        body = json.loads(base.body)
        body["state"] = {**exc.state.fields(), "task": exc.state.task}
        return JSONResponse(body, status_code=409, media_type=PROBLEM_JSON)


@router.get("/hosts", response_model=HostCollection)
async def list_hosts(
    request: Request,
    c: Ctx,
    marker: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
    personality: str | None = None,
    administrative: str | None = None,
    availability: str | None = None,
) -> HostCollection:
    """Hosts in the order config added them, ``limit`` + ``marker`` paging, filterable."""
    query: dict[str, Any] = {}
    for name, value in (
        ("personality", personality),
        ("administrative", administrative),
        ("availability", availability),
    ):
        if value is not None:
            query[name] = value
    docs = await c.store.list_hosts(query, marker=marker, limit=limit)
    views = [HostView.of(d) for d in docs]
    nxt = next_if_full(request, "hosts", views, limit)
    return HostCollection(hosts=views, next=nxt)


@router.get("/hosts/{host_ref}", response_model=HostView)
async def show_host(c: Ctx, host_ref: str) -> HostView:
    """A host and its states by uuid or hostname (or a discovered host's management MAC)."""
    return HostView.of(await c.store.host(host_ref))


@router.post("/hosts/{host_ref}/actions", response_model=HostView)
async def act(c: Ctx, host_ref: str, body: ActionRequest, who: AdminOrPeer) -> HostView:
    """Run ``lock``, ``force-lock``, ``unlock``, ``reboot``, ``reset``, ``power-on``,
    ``power-off`` or ``reinstall``. State changes happen at once; timed steps (the unlock's
    in-test, a reboot, ...) finish in the background (watch ``task`` and the timeline), and so
    does the Kubernetes drain after a lock (``kube`` shows it pending; its outcome goes to the
    timeline; the host stays locked whatever it is).
    Refused in the wrong state with 409 naming ``action``, giving the reason and the state.
    A peer token may only lock, force-lock and unlock (403 for the rest)."""
    if who.is_peer and body.action not in PEER_ACTIONS:
        raise HTTPException(403, f"a peer token may not {body.action} a host; admin needed")
    doc = await c.run(lambda s: c.ops.act(s, host_ref, body.action, body.reason, who.name))
    return HostView.of(doc)


@router.get("/hosts/{host_ref}/timeline", response_model=TimelineCollection)
async def timeline(
    request: Request,
    c: Ctx,
    host_ref: str,
    marker: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> TimelineCollection:
    """Every transition of the host, oldest first (``limit`` + ``marker`` paging)."""
    host = await c.store.host(host_ref)
    docs = await c.store.entries(host["uuid"], marker=marker, limit=limit)
    entries = [TimelineEntry.model_validate(d) for d in docs]
    nxt = next_if_full(request, f"hosts/{host_ref}/timeline", entries, limit)
    return TimelineCollection(timeline=entries, next=nxt)
