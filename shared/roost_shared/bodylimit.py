"""A request body cap, enforced before anything reads the body (pure ASGI, outermost).

A declared ``Content-Length`` over the cap is answered 413 problem+json at once, before any
route, authentication or parsing runs and without reading a byte of the body. A streamed body
(``Transfer-Encoding: chunked``, or one longer than it declared) is counted as the app reads
it: the chunk that crosses the cap is never handed over, the app is told the client went away,
and the caller gets 413; nothing past the cap is ever buffered.

The cap is ``max_body_bytes`` (``ROOST_MAX_BODY_BYTES``, 1 MiB); a few routes that take large
uploads (a software release) name their own larger cap (:class:`BodyLimitMiddleware`'s
``overrides``, exact method and path), and read their body as a stream themselves.

Each refusal counts ``roost_http_body_refused_total{reason}`` (``declared`` or ``streamed``)
and is logged, at most once a minute per client address (with how many since), so a flood of
them cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from roost_shared.metrics import Metrics
from roost_shared.problems import problem_response

log = logging.getLogger(__name__)

#: The default cap: far above any JSON document a Roost API takes.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_LOG_EVERY_S = 60.0
_LOG_MAX_ADDRESSES = 1000


class ThrottledLog:
    """Logs one line per key per ``every_s`` (with how many were not logged since), for
    refusals an attacker can cause at will. At most ``max_keys`` keys are remembered."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        every_s: float = _LOG_EVERY_S,
        max_keys: int = _LOG_MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self.max_keys = max_keys
        self.clock = clock
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def warning(self, key: str, message: str, *args: object) -> None:
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.every_s:
            self._seen[key] = (last[0], last[1] + 1)
            return
        suppressed = last[1] if last is not None else 0
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        if suppressed:
            message += " (%d more like it not logged since)"
            args = (*args, suppressed)
        self.logger.warning(message, *args)


class BodyLimitMiddleware:
    """Refuses request bodies over the cap with 413 (see the module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        overrides: Mapping[tuple[str, str], int] | None = None,
        metrics_of: Callable[[], Metrics | None],
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = dict(overrides or {})
        self.metrics_of = metrics_of
        self.log = ThrottledLog(log)

    def cap(self, scope: Scope) -> int:
        return self.overrides.get((scope["method"], scope.get("path", "")), self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.cap(scope)
        declared = _content_length(scope)
        if declared is not None and declared > cap:
            await self._refuse(scope, receive, send, cap, "declared", declared)
            return
        received = 0
        cut = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, cut
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    cut = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if cut:
                return  # the app's answer to a body it never got in full: ours goes instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not cut:
                raise
        if cut and not started:
            await self._refuse(scope, receive, send, cap, "streamed", received)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, cap: int, reason: str, size: int
    ) -> None:
        client = scope.get("client")
        address = client[0] if client else "unknown"
        path = scope.get("path", "")
        self.log.warning(
            address,
            "request body refused (%s): %s %s from %s is over the %d-byte cap (%s %d bytes)",
            reason,
            scope["method"],
            path[:200],
            address,
            cap,
            "declared" if reason == "declared" else "got at least",
            size,
        )
        metrics = self.metrics_of()
        if metrics is not None:
            metrics.counter(
                "http_body_refused", "Requests refused for a body over the cap.", ["reason"]
            ).labels(reason).inc()
        response = problem_response(
            413,
            f"the request body is over this endpoint's cap of {cap} bytes",
            request=Request(scope),
            errors=[{"field": "body", "message": f"at most {cap} bytes"}],
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
