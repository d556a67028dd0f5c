"""Composition of the service service: settings, platform, stores, operations, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from roost_service.api import ServiceContext, install_handlers, router
from roost_service.inventory import HostInventory
from roost_service.lease import INDEXES as LEASE_INDEXES
from roost_service.lease import LeaseStore
from roost_service.operations import GroupOperations
from roost_service.settings import ServiceSettings
from roost_service.store import INDEXES, GroupStore
from roost_shared.api import Platform, create_app, serve

DESCRIPTION = """HA service groups (StarlingX sm): an operator declares a group of services
that move together (start/stop commands, health probes, dependencies), its redundancy model
(`active-standby`, `n-plus-m`, `n`), member hosts or a label selector, preferred hosts and a
failure policy. Groups can be PUT as JSON or YAML; bad declarations are refused with 422 naming
each field. Each activity slot has a lease with a monotonically increasing fencing token
(`GET /v1/service-groups/{name}/leases`).

Emits `service.group.created|updated|deleted`. Not yet: placement, instances, the agents'
process monitor, multi-path messaging, swact — groups stay `unplaced`."""


def build_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def start(platform: Platform, app: FastAPI) -> AsyncIterator[None]:
        store = GroupStore(platform.db)
        inventory = HostInventory(settings.config_service_url, settings.config_service_token)
        ops = GroupOperations(platform.db, store, platform.outbox, inventory)
        app.state.service = ServiceContext(
            store, ops, LeaseStore(platform.db), settings.max_body_bytes
        )
        yield

    app = create_app(
        settings,
        title="Roost service",
        description=DESCRIPTION,
        routers=[router],
        indexes={**INDEXES, **LEASE_INDEXES},
        start=start,
    )
    install_handlers(app)
    return app


def main() -> None:
    """``roost-service``: run the service service."""
    settings = ServiceSettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
