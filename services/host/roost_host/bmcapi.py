"""The host service's BMC API: a host's sensors and its BMC's status (never its password).

``GET /v1/hosts/{id}/sensors`` and ``GET /v1/hosts/{id}/bmc``; readers may GET. What they show
comes from the sensor monitor (``roost_host.sensors``): its last stored document plus the
times it keeps in memory.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from roost_host.bmc import IPMI_PORT, SensorReading
from roost_host.sensors import SensorMonitor
from roost_host.store import HostStore
from roost_shared.auth import require_reader

router = APIRouter(prefix="/v1", dependencies=[Depends(require_reader)], tags=["bmc"])


class SensorsView(BaseModel):
    """``GET /v1/hosts/{id}/sensors``."""

    uuid: str
    hostname: str | None
    bmc_type: str
    polled_at: datetime | None = Field(None, description="The last poll (empty: never).")
    sensors: list[SensorReading]


class BmcError(BaseModel):
    kind: str = Field(description="unreachable, auth, timeout or error")
    message: str


class BmcView(BaseModel):
    """``GET /v1/hosts/{id}/bmc``: where the BMC is and how it answers. ``password_set`` only
    says whether config gave a password; the password itself is never returned."""

    uuid: str
    hostname: str | None
    bmc_type: str
    address: str | None = None
    port: int | None = None
    username: str | None = None
    password_set: bool = False
    reachable: bool | None = Field(None, description="Empty until the first poll.")
    power_state: str | None = None
    last_error: BmcError | None = None
    breaker: str = Field("closed", description="closed, open or half-open")
    polled_at: datetime | None = None
    last_success_at: datetime | None = None


def _stores(request: Request) -> tuple[HostStore, SensorMonitor]:
    return request.app.state.host.store, request.app.state.sensors


Stores = Annotated[tuple[HostStore, SensorMonitor], Depends(_stores)]


@router.get("/hosts/{host_ref}/sensors", response_model=SensorsView)
async def host_sensors(stores: Stores, host_ref: str) -> SensorsView:
    """The host's sensors as its BMC last reported them, with their health (empty without an
    IPMI BMC or before the first successful poll)."""
    store, monitor = stores
    host = await store.host(host_ref)
    doc, live = await monitor.view(host["uuid"])
    ipmi = host.get("bmc_type") == "ipmi"
    readings = ((doc or {}).get("readings") or []) if ipmi else []
    return SensorsView(
        uuid=host["uuid"],
        hostname=host.get("hostname"),
        bmc_type=host.get("bmc_type") or "none",
        polled_at=(live.polled_at or (doc or {}).get("polled_at")) if ipmi else None,
        sensors=[SensorReading.model_validate(r) for r in readings],
    )


@router.get("/hosts/{host_ref}/bmc", response_model=BmcView)
async def host_bmc(stores: Stores, host_ref: str) -> BmcView:
    """The host's BMC: type, address, port, user, whether a password is set, and how it
    answered the last poll (reachable, power state, last error, circuit breaker)."""
    store, monitor = stores
    host = await store.host(host_ref)
    kind = host.get("bmc_type") or "none"
    view: dict[str, Any] = {"uuid": host["uuid"], "hostname": host.get("hostname")}
    if kind == "none":
        return BmcView(**view, bmc_type="none")
    doc, live = await monitor.view(host["uuid"])
    status = (doc or {}).get("bmc") or {}
    error = (
        BmcError(kind=status["error_kind"], message=status.get("error") or "")
        if status.get("error_kind")
        else None
    )
    return BmcView(
        **view,
        bmc_type=kind,
        address=host.get("bmc_address"),
        port=host.get("bmc_port") or (IPMI_PORT if kind == "ipmi" else None),
        username=host.get("bmc_username"),
        password_set=bool(host.get("bmc_password_enc")),
        reachable=status.get("reachable"),
        power_state=status.get("power"),
        last_error=error,
        breaker=live.breaker if live.polled_at else status.get("breaker", "closed"),
        polled_at=live.polled_at or (doc or {}).get("polled_at"),
        last_success_at=live.last_success_at or (doc or {}).get("last_success_at"),
    )
