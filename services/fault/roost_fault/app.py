"""Composition of the fault service: settings, platform, store, consumer, loops, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from roost_fault import events
from roost_fault.alarm_catalog import KNOWN_ALARMS
from roost_fault.api import FaultContext, router
from roost_fault.operations import FaultOperations
from roost_fault.retention import Retention
from roost_fault.settings import FaultSettings
from roost_fault.store import INDEXES, FaultStore
from roost_fault.webhooks import WebhookDispatcher
from roost_shared.api import Platform, create_app, serve

DESCRIPTION = """Active alarms, the event log, suppression and webhook subscriptions.

Paths and JSON follow StarlingX FM's REST API v1, so `fm --fm-url URL --os-auth-token T` works.
Producers raise and clear alarms by publishing `fault.alarm.set` / `fault.alarm.clear` /
`fault.log.write` on the `roost.events` exchange, or through `POST /v1/alarms`."""


def build_app(settings: FaultSettings | None = None) -> FastAPI:
    settings = settings or FaultSettings()

    @asynccontextmanager
    async def start(platform: Platform, app: FastAPI) -> AsyncIterator[None]:
        store = FaultStore(platform.db)
        await store.add_alarm_ids(None, KNOWN_ALARMS)
        await store.system_uuid()
        ops = FaultOperations(store, platform.outbox, platform.metrics)
        dispatcher = WebhookDispatcher(
            store,
            platform.metrics,
            timeout_s=settings.webhook_timeout_s,
            batch_max=settings.webhook_batch_max,
            retry_cap_s=settings.webhook_retry_cap_s,
            allowed_nets=settings.webhook_allow_nets,
            backlog_max=settings.webhook_backlog_max,
        )
        retention = Retention(
            store,
            platform.metrics,
            max_count=settings.event_log_max_count,
            max_age_days=settings.event_log_max_age_days,
            period_s=settings.retention_period_s,
            audit_max_count=settings.audit_log_max_count,
            audit_max_age_days=settings.audit_log_max_age_days,
        )
        context = FaultContext(platform, store, ops, dispatcher, retention)
        app.state.fault = context
        platform.consume(
            events.QUEUE,
            events.BINDINGS,
            events.command_handler(ops),
            after_commit=context.committed,
        )
        # On the leader replica only: one delivery per notification, one pruner. A standby's
        # commits wake nothing here; the leader's workers poll every second.
        platform.spawn_singleton(dispatcher.run, "webhooks")
        platform.spawn_singleton(retention.run, "retention")
        yield

    return create_app(
        settings,
        title="Roost fault",
        description=DESCRIPTION,
        routers=[router],
        indexes=INDEXES,
        start=start,
    )


def main() -> None:
    """``roost-fault``: run the fault service."""
    settings = FaultSettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
