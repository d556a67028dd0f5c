"""Composition of the dashboard: settings, platform, API clients, the live feed, pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from roost_dashboard import csrf, events, pages, web
from roost_dashboard.clients import Services
from roost_dashboard.live import Broadcaster
from roost_dashboard.settings import DashboardSettings
from roost_shared.api import Platform, create_app, serve

DESCRIPTION = """Roost's web console: server-rendered pages over the service APIs, called with the
operator's own token; live by server-sent events fed from the bus (`/events/stream`)."""


def build_app(settings: DashboardSettings | None = None) -> FastAPI:
    settings = settings or DashboardSettings()

    @asynccontextmanager
    async def start(platform: Platform, app: FastAPI) -> AsyncIterator[None]:
        services = Services.create(settings)
        live = Broadcaster(platform.bus, platform.metrics, events.BINDINGS, events.shape)
        app.state.dashboard = web.Dashboard(settings, services, app.state.authenticator, live=live)
        await live.start()
        try:
            yield
        finally:
            await live.stop()
            await services.close()

    app = create_app(settings, title="Roost dashboard", description=DESCRIPTION, start=start)
    # Outermost of all: a cross-origin post is refused before anything reads it.
    app.add_middleware(
        csrf.OriginCheckMiddleware,
        allowed=settings.dashboard_origins,
        metrics_of=lambda: app.state.metrics,
    )
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.include_router(pages.router)
    web.install_handlers(app)
    return app


def main() -> None:
    """``roost-dashboard``: run the dashboard."""
    settings = DashboardSettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
