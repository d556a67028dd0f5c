"""A real HTTP webhook receiver that tests can take down and bring back on the same port."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class WebhookReceiver:
    """Records every notification POSTed to ``/hook``; ``stop()``/``start()`` simulate outages."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[dict[str, Any]] = []
        self.posts = 0
        self.authorizations: list[str | None] = []
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.posts += 1
        self.authorizations.append(request.headers.get("authorization"))
        self.received.extend(body["notifications"])
        return JSONResponse({"ok": True})

    async def start(self) -> None:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._task
            self._server = None

    def ids(self) -> list[str]:
        return [n["id"] for n in self.received]

    def unique(self) -> dict[str, dict[str, Any]]:
        """Notifications by id (at-least-once delivery may repeat one; receivers dedupe)."""
        return {n["id"]: n for n in self.received}

    def repeats(self) -> int:
        return sum(c - 1 for c in Counter(self.ids()).values())
