"""Composition of the config service: settings, platform, secrets, store, consumer, drift loop,
routes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from roost_config import events
from roost_config.api import ConfigContext, router
from roost_config.host_service import DeleteGuard
from roost_config.logic import SystemMode
from roost_config.operations import ConfigOperations
from roost_config.settings import ConfigSettings
from roost_config.store import INDEXES, ConfigStore
from roost_shared.api import Platform, create_app, serve
from roost_shared.auth import own_peer_token
from roost_shared.events import utcnow
from roost_shared.vault import Vault

DESCRIPTION = """The system, its hosts, their hardware inventory and their configuration
(StarlingX sysinv).

Agents report on the bus (`agent.host.announced`, `agent.inventory.reported`,
`agent.config.applied`); config sends each host its desired configuration as a versioned
`config.apply` command and raises 250.001 while a host lags behind it. BMC passwords are
write-only and encrypted at rest."""


def build_app(settings: ConfigSettings | None = None) -> FastAPI:
    settings = settings or ConfigSettings()
    vault = Vault.from_settings(settings.secret_key, settings.state_dir)

    @asynccontextmanager
    async def start(platform: Platform, app: FastAPI) -> AsyncIterator[None]:
        store = ConfigStore(platform.db)
        now = utcnow()
        await store.ensure_system(
            {
                "uuid": str(uuid.uuid4()),
                "name": settings.system_name,
                "mode": SystemMode.simplex.value,
                "timezone": "UTC",
                "dns_servers": [],
                "ntp_servers": [],
                "description": "",
                "created_at": now,
                "updated_at": now,
            }
        )
        ops = ConfigOperations(store, platform.outbox, vault, settings, platform.metrics)
        guard = DeleteGuard(
            settings.host_service_url, own_peer_token(settings, settings.host_service_token)
        )
        app.state.config = ConfigContext(platform, store, ops, guard)
        platform.consume(events.QUEUE, events.BINDINGS, events.agent_handler(ops))
        platform.spawn_singleton(ops.drift_loop, "drift")  # on the leader replica only
        yield

    return create_app(
        settings,
        title="Roost config",
        description=DESCRIPTION,
        routers=[router],
        indexes=INDEXES,
        start=start,
    )


def main() -> None:
    """``roost-config``: run the config service."""
    settings = ConfigSettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
