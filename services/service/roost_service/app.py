"""Composition of the service service: settings, platform, stores, operations, routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from roost_service import events
from roost_service.api import ServiceContext, install_handlers, router
from roost_service.commands import INDEXES as COMMAND_INDEXES
from roost_service.commands import Action, CommandBook, Commands, Wakes
from roost_service.controller import Controller
from roost_service.hosts import INDEXES as HOST_INDEXES
from roost_service.hosts import HostBook
from roost_service.inventory import HostInventory
from roost_service.lease import INDEXES as LEASE_INDEXES
from roost_service.lease import LeaseStore
from roost_service.link import LinkServer
from roost_service.operations import GroupOperations
from roost_service.placements import INDEXES as PLACEMENT_INDEXES
from roost_service.placements import PlacementStore
from roost_service.settings import ServiceSettings
from roost_service.store import INDEXES, GroupStore
from roost_shared.api import Platform, create_app, serve
from roost_shared.auth import own_peer_token
from roost_shared.hostkeys import KeyFileError, site_secret
from roost_shared.leader import FencedDatabase, running

DESCRIPTION = """HA service groups (StarlingX sm): an operator declares a group of services
that move together (start/stop commands, health probes, dependencies), its redundancy model
(`active-standby`, `n-plus-m`, `n`), member hosts or a label selector, preferred hosts and a
failure policy. Groups can be PUT as JSON or YAML; bad declarations are refused with 422 naming
each field. Each activity slot has a lease with a monotonically increasing fencing token
(`GET /v1/service-groups/{name}/leases`).

Places `active-standby`, `n-plus-m` and `n` groups on in-service member hosts (learnt from
`config.host.*` and `host.state.changed`), grants the activity lease to one host and sends
`service.instance.assign|remove` to the agents; fails over on a failed instance at once and on a
failed host when the host service confirms its fence (else after the lease expired);
`POST .../swact`, `.../restart`, `.../disable|enable`, `.../members/{host}/lock|unlock`;
`GET .../instances`; alarms 400.001/002/005.

The service link (UDP port 8198 and the bus) hands each agent the leases its actives hold; a
path silent while the other works raises 400.005. Emits `service.group.created|updated|
deleted`."""


def build_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    secret = site_secret(settings)  # none configured nor waived: refuse to start

    @asynccontextmanager
    async def start(platform: Platform, app: FastAPI) -> AsyncIterator[None]:
        store = GroupStore(platform.db)
        inventory = HostInventory(
            settings.config_service_url, own_peer_token(settings, settings.config_service_token)
        )
        ops = GroupOperations(platform.db, store, platform.outbox, inventory)
        leases = LeaseStore(platform.db)
        placements = PlacementStore(platform.db)
        book = HostBook(platform.db)
        # The controller's and the command runner's transactions (placements, operator
        # controls, claims) are fenced by the leader lease: a deposed leader's never commit.
        fenced = FencedDatabase(platform.db, platform.fence)
        controller = Controller(
            fenced,
            store,
            placements,
            book,
            leases,
            platform.outbox,
            ttl_s=settings.activity_ttl_s,
            deadline_s=settings.command_deadline_s,
        )

        leader = platform.leader
        assert leader is not None
        commands = Commands(
            CommandBook(platform.db),
            Wakes(platform.bus),
            leading=lambda: leader.leading,
            term=lambda: leader.token,
            transaction=fenced.in_transaction,
            actions=_actions(controller),
            wait_s=settings.action_wait_s,
            wake_controller=controller.wake,
        )
        await commands.wakes.start()

        def after_commit() -> None:
            platform.outbox.wake()
            # A report or host change consumed by a standby replica wakes the leader's
            # controller too (else it would see it only at its next periodic pass).
            commands.nudge()

        platform.consume(
            events.HOSTS_QUEUE,
            events.HOSTS_BINDINGS,
            events.hosts_handler(book),
            after_commit=after_commit,
        )
        platform.consume(
            events.REPORTS_QUEUE,
            events.REPORTS_BINDINGS,
            events.reports_handler(placements),
            after_commit=after_commit,
        )
        link = LinkServer(
            platform.bus,
            platform.db,
            platform.outbox,
            controller.grants_for,
            bind_host=settings.bind_host,
            port=settings.sm_link_port,
            path_timeout_s=settings.sm_link_path_timeout_s,
            secret=secret,
            max_peers=settings.sm_link_max_peers,
            boot_window_s=settings.sm_link_boot_window_s,
            metrics=platform.metrics,
        )

        async def control() -> None:
            """The controller and the service link (UDP + bus hellos answered with the
            controller's grants): the leader replica's only; a standby binds no UDP port."""
            link.peers.clear()  # heard by an earlier term: stale; each agent gets its grace
            async with running(link):
                await asyncio.gather(controller.run(), link.watch())

        platform.spawn_singleton(control, "service-controller")
        # Operator actions run on the leader only, whichever replica was asked (commands.py).
        platform.spawn_singleton(commands.run, "service-commands")
        app.state.service = ServiceContext(
            store, ops, leases, settings.max_body_bytes, placements, controller, commands
        )
        app.state.link = link
        try:
            yield
        finally:
            await commands.wakes.stop()

    app = create_app(
        settings,
        title="Roost service",
        description=DESCRIPTION,
        routers=[router],
        indexes={
            **INDEXES,
            **LEASE_INDEXES,
            **HOST_INDEXES,
            **PLACEMENT_INDEXES,
            **COMMAND_INDEXES,
        },
        start=start,
    )
    install_handlers(app)
    return app


def _actions(controller: Controller) -> dict[str, Action]:
    """What the leader's command runner does for each operator action (the controller's own
    methods: validation and effect under its lock, as with one replica)."""

    async def swact(group: str, args: dict[str, str]) -> dict[str, Any]:
        await controller.swact(group)
        return {}

    def enabled(on: bool) -> Action:
        async def run(group: str, args: dict[str, str]) -> dict[str, Any]:
            await controller.set_enabled(group, on)
            return {}

        return run

    def locked(on: bool) -> Action:
        async def run(group: str, args: dict[str, str]) -> dict[str, Any]:
            await controller.set_member_locked(group, args["host"], on)
            return {}

        return run

    async def restart(group: str, args: dict[str, str]) -> dict[str, Any]:
        return await controller.restart(group, args["service"], args["host"])

    return {
        "swact": swact,
        "enable": enabled(True),
        "disable": enabled(False),
        "lock": locked(True),
        "unlock": locked(False),
        "restart": restart,
    }


def main() -> None:
    """``roost-service``: run the service service."""
    settings = ServiceSettings()
    try:
        app = build_app(settings)
    except KeyFileError as exc:
        raise SystemExit(f"roost-service: {exc}") from None
    serve(app, settings)


if __name__ == "__main__":
    main()
