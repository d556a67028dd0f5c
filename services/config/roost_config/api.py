"""The config service's HTTP API: the system, hosts (``system host-*``), labels, parameters,
inventory and desired-vs-applied configuration.

Routers stay thin: they validate, run ``ConfigOperations`` in one transaction, wake the outbox
relay and shape the answer. Every view is built field by field (``HostView.of``), so the BMC
password, stored only encrypted, has no way into a response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from roost_config import logic
from roost_config.host_service import DeleteGuard
from roost_config.logic import InstallState
from roost_config.models import (
    HostCollection,
    HostConfigView,
    HostCreate,
    HostPatch,
    HostView,
    InventoryView,
    LabelsBody,
    ParametersBody,
    ParametersPatch,
    ParametersView,
    SystemPatch,
    SystemView,
)
from roost_config.operations import ConfigOperations
from roost_config.store import ConfigStore
from roost_shared.api import Platform
from roost_shared.auth import Principal, require_admin, require_reader
from roost_shared.catalog import Personality
from roost_shared.paging import next_if_full
from roost_shared.problems import NotFound

MAX_LIMIT = 1000


@dataclass
class ConfigContext:
    """What the config routes need, built by the app's lifespan."""

    platform: Platform
    store: ConfigStore
    ops: ConfigOperations
    guard: DeleteGuard

    async def run(self, work: Any) -> Any:
        """Run ``work(session)`` in one transaction, then wake the relay for what it queued."""
        result = await self.platform.db.in_transaction(work)
        self.platform.outbox.wake()
        return result


def ctx(request: Request) -> ConfigContext:
    return request.app.state.config


Ctx = Annotated[ConfigContext, Depends(ctx)]
Admin = Annotated[Principal, Depends(require_admin)]

router = APIRouter(prefix="/v1", dependencies=[Depends(require_reader)])


@router.get("", include_in_schema=False)
async def version(request: Request) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    links = {name: [{"href": f"{base}/v1/{name}", "rel": "self"}] for name in ("system", "hosts")}
    return {"id": "v1", "links": [{"href": f"{base}/v1/", "rel": "self"}], **links}


# System ----------------------------------------------------------------------------------------


def _system_view(doc: dict[str, Any]) -> SystemView:
    return SystemView.model_validate({k: v for k, v in doc.items() if k != "_id"})


@router.get("/system", response_model=SystemView)
async def show_system(c: Ctx) -> SystemView:
    """The system (``system show``)."""
    return _system_view(await c.store.get_system())


@router.patch("/system", response_model=SystemView)
async def modify_system(c: Ctx, body: SystemPatch, who: Admin) -> SystemView:
    """Change the system (``system modify``); every configured host whose configuration changes
    gets a new version and a ``config.apply``."""
    return _system_view(await c.run(lambda s: c.ops.update_system(s, body)))


# Hosts -----------------------------------------------------------------------------------------


@router.get("/hosts", response_model=HostCollection)
async def list_hosts(
    request: Request,
    c: Ctx,
    marker: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
    personality: Personality | None = None,
    hostname: str | None = None,
    install_state: InstallState | None = None,
) -> HostCollection:
    """Hosts in the order they were added (``system host-list``), ``limit`` + ``marker`` paging."""
    query: dict[str, Any] = {}
    if personality is not None:
        query["personality"] = personality.value
    if hostname is not None:
        query["hostname"] = hostname
    if install_state is not None:
        query["install_state"] = install_state.value
    docs = await c.store.list_hosts(query, marker=marker, limit=limit)
    views = [HostView.of(d) for d in docs]
    nxt = next_if_full(request, "hosts", views, limit)
    return HostCollection(hosts=views, next=nxt)


@router.post("/hosts", status_code=201, response_model=HostView)
async def add_host(c: Ctx, body: HostCreate, who: Admin) -> HostView:
    """Add a host (``system host-add``); it is configured at once (``config.apply`` version 1)."""
    return HostView.of(await c.run(lambda s: c.ops.add_host(s, body)))


@router.get("/hosts/{host_ref}", response_model=HostView)
async def show_host(c: Ctx, host_ref: str) -> HostView:
    """A host by uuid or hostname (``system host-show``)."""
    return HostView.of(await c.store.host(host_ref))


@router.patch("/hosts/{host_ref}", response_model=HostView)
async def modify_host(c: Ctx, host_ref: str, body: HostPatch, who: Admin) -> HostView:
    """Change a host (``system host-update``). Giving a discovered host a hostname and a
    personality provisions it."""
    return HostView.of(await c.run(lambda s: c.ops.update_host(s, host_ref, body)))


@router.delete("/hosts/{host_ref}", status_code=204)
async def delete_host(c: Ctx, host_ref: str, who: Admin) -> Response:
    """Delete a host (``system host-delete``); refused while the host service says unlocked."""
    host = await c.store.host(host_ref)
    await c.guard.check(host.get("hostname"))

    async def work(session: Any) -> None:
        current = await c.store.host(host["uuid"], session)
        await c.ops.delete_host(session, current)

    await c.run(work)
    return Response(status_code=204)


@router.put("/hosts/{host_ref}/labels", response_model=HostView)
async def put_labels(c: Ctx, host_ref: str, body: LabelsBody, who: Admin) -> HostView:
    """Replace a host's labels (``system host-label-assign``/``-remove`` in one call)."""
    return HostView.of(await c.run(lambda s: c.ops.set_labels(s, host_ref, body.labels)))


def _parameters_view(doc: dict[str, Any]) -> ParametersView:
    return ParametersView(
        uuid=doc["uuid"],
        hostname=doc.get("hostname"),
        parameters=doc.get("parameters") or {},
        config_target=int(doc.get("config_target") or 0),
    )


@router.get("/hosts/{host_ref}/parameters", response_model=ParametersView)
async def show_parameters(c: Ctx, host_ref: str) -> ParametersView:
    return _parameters_view(await c.store.host(host_ref))


@router.put("/hosts/{host_ref}/parameters", response_model=ParametersView)
async def put_parameters(c: Ctx, host_ref: str, body: ParametersBody, who: Admin) -> ParametersView:
    """Replace the user parameters of the host's desired configuration."""
    doc = await c.run(lambda s: c.ops.set_parameters(s, host_ref, body.parameters, merge=False))
    return _parameters_view(doc)


@router.patch("/hosts/{host_ref}/parameters", response_model=ParametersView)
async def patch_parameters(
    c: Ctx, host_ref: str, body: ParametersPatch, who: Admin
) -> ParametersView:
    """Merge parameters; a key set to ``null`` is removed."""
    doc = await c.run(lambda s: c.ops.set_parameters(s, host_ref, body.parameters, merge=True))
    return _parameters_view(doc)


@router.get("/hosts/{host_ref}/config", response_model=HostConfigView)
async def show_config(c: Ctx, host_ref: str) -> HostConfigView:
    """Desired (version ``config_target``) against applied configuration."""
    doc = await c.store.host(host_ref)
    target = int(doc.get("config_target") or 0)
    applied = int(doc.get("config_applied") or 0)
    return HostConfigView(
        uuid=doc["uuid"],
        hostname=doc.get("hostname"),
        config_target=target,
        config_applied=applied,
        config_status=logic.config_status(doc),
        out_of_date=target > applied,
        out_of_date_since=doc.get("out_of_date_since"),
        alarmed=bool(doc.get("drift_alarmed")),
        failed_version=doc.get("config_failed_version"),
        error=doc.get("config_error"),
        desired=doc.get("config"),
    )


@router.get("/hosts/{host_ref}/inventory", response_model=InventoryView)
async def show_inventory(c: Ctx, host_ref: str) -> InventoryView:
    """The hardware the host's agent last reported (CPUs, memory, disks, ports, PCI)."""
    host = await c.store.host(host_ref)
    inv = await c.store.inventory_of(host["mgmt_mac"])
    if inv is None:
        raise NotFound(f"host {host_ref} has not reported its inventory yet")
    return InventoryView(
        uuid=host["uuid"],
        hostname=host.get("hostname"),
        mgmt_mac=host["mgmt_mac"],
        cpu=inv["cpu"],
        memory_mb=inv["memory_mb"],
        disks=inv.get("disks") or [],
        ports=inv.get("ports") or [],
        pci=inv.get("pci") or [],
        reported_at=inv["reported_at"],
        changed_at=inv["changed_at"],
    )
