"""Composition of the software service: settings, platform, peers, stores, executor, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from roost_shared.api import Platform, create_app, serve
from roost_software import deploy, releases, strategy_api, strategy_store
from roost_software.executor import WAKE_BINDINGS, WAKE_QUEUE, Executor, wake_handler
from roost_software.peers import Peers
from roost_software.release_api import install_handlers
from roost_software.release_api import router as release_router
from roost_software.settings import SoftwareSettings
from roost_software.strategy_api import router as strategy_router

DESCRIPTION = """Software releases, their deployment across the fleet and rolling-update
strategies (StarlingX usm + vim orchestration). Upload a signed release archive, precheck it,
then either deploy host by host (`POST /v1/deploy`, `POST /v1/deploy/hosts/{h}` on locked hosts)
or create and apply a strategy that locks (moving workloads and service activity away first),
installs, reboots if needed, unlocks and waits for each host, a few at a time, stopping on its
own when something goes wrong. Emits `software.release.changed`, `software.host.changed`,
`software.strategy.changed`; alarms 900.021, 900.101, 900.103."""


def build_app(settings: SoftwareSettings | None = None) -> FastAPI:
    settings = settings or SoftwareSettings()

    @asynccontextmanager
    async def start(platform: Platform, app: FastAPI) -> AsyncIterator[None]:
        peers = Peers(settings)
        store = releases.ReleaseStore(platform.db, platform.outbox, settings)
        deployment = deploy.DeployOps(platform.db, platform.outbox, store, peers, settings)
        strategies = strategy_store.StrategyStore(platform.db)
        executor = Executor(platform.db, platform.outbox, strategies, deployment, peers, settings)
        # Strategy progress is written by the leader's executor only: a deposed leader's late
        # write is refused (Deposed), so two executors can never both move a strategy on.
        executor.fence = platform.fence

        def after_report() -> None:
            platform.outbox.wake()
            executor.wake()

        platform.consume(
            deploy.REPORTS_QUEUE,
            deploy.REPORTS_BINDINGS,
            deployment.reports_handler(),
            after_commit=after_report,
        )
        platform.consume(WAKE_QUEUE, WAKE_BINDINGS, wake_handler(), after_commit=executor.wake)
        platform.spawn_singleton(executor.run, "software-executor")  # leader replica only
        app.state.settings = settings
        app.state.releases = store
        app.state.deploy = deployment
        app.state.strategies = strategy_api.StrategyOps(
            strategies, executor, deployment, peers, store
        )
        try:
            yield
        finally:
            await peers.close()

    app = create_app(
        settings,
        title="Roost software",
        description=DESCRIPTION,
        routers=[release_router, strategy_router],
        indexes={**releases.INDEXES, **deploy.INDEXES, **strategy_store.INDEXES},
        start=start,
        body_limits={("POST", "/v1/releases"): settings.max_release_bytes},
    )
    install_handlers(app)
    return app


def main() -> None:
    """``roost-software``: run the software service."""
    settings = SoftwareSettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
