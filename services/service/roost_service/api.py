"""The service service's HTTP API: service groups (JSON or YAML) and their leases (read-only).

Routers stay thin: parse the body, let pydantic and ``logic`` judge it, run ``GroupOperations``
and shape the answer. Every refusal is a 422 problem whose ``errors`` name each bad field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from roost_service.commands import Commands, LeaderUnavailable
from roost_service.controller import Controller
from roost_service.lease import LeaseStore
from roost_service.models import (
    NAME_PATTERN,
    InstanceCollection,
    LeaseCollection,
    LeaseView,
    RestartAccepted,
    RestartRequest,
    ServiceGroupCollection,
    ServiceGroupSpec,
    ServiceGroupView,
)
from roost_service.operations import GroupOperations, GroupRefused
from roost_service.placements import PlacementStore
from roost_service.store import GroupStore
from roost_shared.auth import Principal, require_admin, require_admin_or_peer, require_reader
from roost_shared.paging import next_if_full
from roost_shared.problems import problem_response

MAX_LIMIT = 1000
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


@dataclass
class ServiceContext:
    """What the routes need, built by the app's lifespan."""

    store: GroupStore
    ops: GroupOperations
    leases: LeaseStore
    max_body_bytes: int
    placements: PlacementStore
    controller: Controller
    #: Operator actions go through it to the leader replica (``commands.py``).
    commands: Commands


def ctx(request: Request) -> ServiceContext:
    return request.app.state.service


Ctx = Annotated[ServiceContext, Depends(ctx)]
Admin = Annotated[Principal, Depends(require_admin)]
#: Swacts and member locks: the software service's strategy runs them with its peer token.
AdminOrPeer = Annotated[Principal, Depends(require_admin_or_peer)]
GroupName = Annotated[str, Path(pattern=NAME_PATTERN, description="The group's name.")]

router = APIRouter(prefix="/v1", dependencies=[Depends(require_reader)], tags=["service groups"])


def install_handlers(app: FastAPI) -> None:
    """A refused group is one 422 problem listing every problem with its field."""

    @app.exception_handler(GroupRefused)
    async def _refused(request: Request, exc: GroupRefused) -> JSONResponse:
        errors = [{"field": p.field, "message": p.message} for p in exc.problems]
        return problem_response(422, str(exc), request=request, errors=errors)

    @app.exception_handler(LeaderUnavailable)
    async def _no_leader(request: Request, exc: LeaderUnavailable) -> JSONResponse:
        # A leader takeover takes ~3-4 s: worth a retry after that.
        return problem_response(503, str(exc), request=request, headers={"Retry-After": "3"})


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": tuple(field.split(".")), "msg": message}])


async def parse_spec(request: Request, max_bytes: int) -> ServiceGroupSpec:
    """The body as a group spec, from JSON or (``Content-Type: application/yaml``) YAML."""
    raw = await request.body()
    if len(raw) > max_bytes:
        raise _invalid("body", f"larger than {max_bytes} bytes")
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        if content_type in YAML_TYPES:
            # safe_load: plain data only, never Python objects from tags.
            data: Any = yaml.safe_load(raw)
        elif content_type == "application/json" or content_type.endswith("+json"):
            data = json.loads(raw)
        else:
            raise _invalid("body", f"unsupported content type {content_type!r}: JSON or YAML")
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _invalid("body", f"not valid {content_type}: {exc}".splitlines()[0]) from None
    except RecursionError:  # "[[[[…" thousands deep: the parsers give up, so do we
        raise _invalid("body", f"not valid {content_type}: nested too deeply") from None
    if not isinstance(data, dict):
        raise _invalid("body", "a service group must be a mapping (object)")
    try:
        return ServiceGroupSpec.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


@router.get("/service-groups", response_model=ServiceGroupCollection)
async def list_groups(
    request: Request,
    c: Ctx,
    marker: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
) -> ServiceGroupCollection:
    """Service groups by name, ``limit`` + ``marker`` (a group's uuid) paging."""
    docs = await c.store.list(marker=marker, limit=limit)
    views = [ServiceGroupView.of(d) for d in docs]
    return ServiceGroupCollection(
        service_groups=views, next=next_if_full(request, "service-groups", views, limit)
    )


@router.get("/service-groups/{name}", response_model=ServiceGroupView)
async def show_group(c: Ctx, name: GroupName) -> ServiceGroupView:
    """A service group as declared, with its state, slots and start order."""
    return ServiceGroupView.of(await c.store.get(name))


@router.put(
    "/service-groups/{name}",
    response_model=ServiceGroupView,
    responses={201: {"description": "Created"}, 200: {"description": "Replaced or unchanged"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A ServiceGroupSpec as JSON, or as YAML with "
            "Content-Type: application/yaml.",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def put_group(
    request: Request, response: Response, c: Ctx, name: GroupName, who: Admin
) -> ServiceGroupView:
    """Declare (201) or replace (200) a service group. Refused with 422 naming each bad field:
    dependency cycles (with the cycle), unknown or duplicate services, impossible redundancy
    for the listed members, bad commands, unknown probe types, unknown hosts (when the config
    service is configured). New groups are ``unplaced`` until the controller places them."""
    spec = await parse_spec(request, c.max_body_bytes)
    doc, created = await c.ops.put(name, spec)
    c.commands.nudge()
    response.status_code = 201 if created else 200
    return ServiceGroupView.of(doc)


@router.delete("/service-groups/{name}", status_code=204)
async def delete_group(c: Ctx, name: GroupName, who: Admin) -> Response:
    """Remove a service group (``service.group.deleted``)."""
    await c.ops.delete(name)
    c.commands.nudge()
    return Response(status_code=204)


@router.get("/service-groups/{name}/leases", response_model=LeaseCollection)
async def group_leases(c: Ctx, name: GroupName) -> LeaseCollection:
    """Each activity slot of the group with its lease: holder, fencing token, expiry. Slots
    never granted show token 0 and no holder. Read-only."""
    group = await c.store.get(name)
    now = c.leases.clock()
    by_slot = {lease.slot: lease for lease in await c.leases.of_group(name)}
    views = []
    for slot in group["slots"]:
        lease = by_slot.get(slot)
        views.append(
            LeaseView(
                group=name,
                slot=slot,
                holder=lease.holder if lease else None,
                token=lease.token if lease else 0,
                expires_at=lease.expires_at if lease else None,
                held=lease.held_at(now) if lease else False,
            )
        )
    return LeaseCollection(leases=views)


@router.get("/service-groups/{name}/instances", response_model=InstanceCollection)
async def group_instances(c: Ctx, name: GroupName) -> InstanceCollection:
    """The group's instances on its member hosts (role, fencing token, sm state with reason,
    the agent's last report) and the group's state. Read in one document: a read never shows
    two ``enabled-active`` instances of an active-standby group."""
    await c.store.get(name)
    return InstanceCollection.of(name, await c.placements.find(name))


@router.post("/service-groups/{name}/swact", response_model=InstanceCollection)
async def swact_group(c: Ctx, name: GroupName, who: AdminOrPeer) -> InstanceCollection:
    """Planned switch of activity: the standby gets the lease (a bigger fencing token) and
    becomes active, the old active becomes standby. 409 with the reason without a healthy
    standby (or for a group that is not active-standby). Run by the leader replica, whichever
    replica was asked; 503 with Retry-After when no leader took it in time."""
    await c.commands.request("swact", name)
    return InstanceCollection.of(name, await c.placements.find(name))


HostName = Annotated[str, Path(min_length=1, max_length=255, description="A member host.")]


@router.post("/service-groups/{name}/disable", response_model=ServiceGroupView)
async def disable_group(c: Ctx, name: GroupName, who: Admin) -> ServiceGroupView:
    """Disable a group: its activity lease is released and every instance removed (state
    ``disabled``, no alarms). The declaration is kept."""
    await c.commands.request("disable", name)
    return ServiceGroupView.of(await c.store.get(name))


@router.post("/service-groups/{name}/enable", response_model=ServiceGroupView)
async def enable_group(c: Ctx, name: GroupName, who: Admin) -> ServiceGroupView:
    """Enable a disabled group: it is placed again."""
    await c.commands.request("enable", name)
    return ServiceGroupView.of(await c.store.get(name))


@router.post("/service-groups/{name}/members/{host}/lock", response_model=ServiceGroupView)
async def lock_member(
    c: Ctx, name: GroupName, host: HostName, who: AdminOrPeer
) -> ServiceGroupView:
    """Leave one member host out of the group: its instances are removed; if it held the
    activity, the standby takes over first (as in a swact). 422 if it is not a member."""
    await c.commands.request("lock", name, host=host)
    return ServiceGroupView.of(await c.store.get(name))


@router.post("/service-groups/{name}/members/{host}/unlock", response_model=ServiceGroupView)
async def unlock_member(
    c: Ctx, name: GroupName, host: HostName, who: AdminOrPeer
) -> ServiceGroupView:
    """Let a locked member host run the group's instances again."""
    await c.commands.request("unlock", name, host=host)
    return ServiceGroupView.of(await c.store.get(name))


@router.post("/service-groups/{name}/restart", response_model=RestartAccepted, status_code=202)
async def restart_instance(
    c: Ctx, name: GroupName, body: RestartRequest, who: Admin
) -> RestartAccepted:
    """Restart one service's instance on one host in place (same role and fencing token): the
    agent stops it and starts it again (``service.instance.restart``). 404 if that host runs
    no instance of it, 422 for a service the group does not have."""
    result = await c.commands.request("restart", name, service=body.service, host=body.host)
    return RestartAccepted(**result)
