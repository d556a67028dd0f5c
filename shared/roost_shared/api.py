"""The FastAPI app factory every Roost service is built with.

It owns the process's resources for the app's lifetime (the *platform*: settings, metrics,
database, bus, outbox relay, dead-letter store, consumers, background tasks) and gives every
service the same edges: ``/healthz``, ``/readyz``, ``/metrics``, ``/v1/dead-letters``, OpenAPI
docs, request ids, problem+json errors and token auth, and the audit of every mutating request
(:class:`Auditor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pymongo import IndexModel
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from roost_shared import deadletters
from roost_shared.auth import Authenticator, Principal
from roost_shared.bodylimit import BodyLimitMiddleware
from roost_shared.bus import BatchHandler, Bus, Consumer, inbox_indexes
from roost_shared.catalog import AlarmType, LogWrite, Severity
from roost_shared.db import Database
from roost_shared.events import Envelope, utcnow
from roost_shared.leader import Leader, LoopFactory
from roost_shared.logging import configure_logging, correlation_id
from roost_shared.metrics import Metrics
from roost_shared.outbox import Outbox
from roost_shared.problems import install_problem_handlers, problem_response
from roost_shared.ratelimit import RateLimitMiddleware
from roost_shared.settings import RoostSettings

log = logging.getLogger(__name__)


@dataclass
class Platform:
    """The resources one service process owns, created and closed by the app's lifespan."""

    settings: RoostSettings
    metrics: Metrics
    db: Database
    bus: Bus
    outbox: Outbox
    dead_letters: deadletters.DeadLetterStore
    consumers: list[Consumer] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    #: The service's leader lease (``leader.py``): singleton loops run only while it is held.
    leader: Leader | None = None

    def consume(
        self, queue: str, bindings: Sequence[str], handler: BatchHandler, **kwargs: Any
    ) -> Consumer:
        """Register a consumer; it starts after the service's own start-up, wakes the relay."""
        kwargs.setdefault("after_commit", self.outbox.wake)
        consumer = Consumer(
            bus=self.bus, db=self.db, queue=queue, bindings=bindings, handler=handler, **kwargs
        )
        self.consumers.append(consumer)
        return consumer

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a background loop for the app's lifetime (cancelled at shutdown)."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task

    def spawn_singleton(self, factory: LoopFactory, name: str) -> None:
        """Run ``factory()`` only while this replica holds the service's leader lease: started
        afresh on each term, cancelled when the term ends (see ``roost_shared.leader``)."""
        assert self.leader is not None
        self.leader.singleton(factory, name)

    async def fence(self, session: Any) -> None:
        """Inside a singleton writer's transaction: raise ``leader.Deposed`` (the transaction
        aborts) unless this replica still leads under the token it was granted."""
        assert self.leader is not None
        await self.leader.fence(session)


#: Methods that change something: each such request is audited.
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Event log id of an API audit record. Roost's own number in the security family (StarlingX
#: uses 500.1xx-500.5xx); the fault service makes its suppression entry on first use.
AUDIT_LOG_ID = "500.900"
AUDIT_ENTITY_TYPE = "system.api"
_AUDIT_PUBLISH_TIMEOUT_S = 5.0
_AUDIT_MAX_PENDING = 1000
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:=/@+-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


#: Refusals (no or a bad token, a role that may not, over the rate limit): audited as counts
#: per client address and caller per window, never one record each (anyone can cause them).
REFUSED_STATUSES = frozenset({401, 403, 429})
#: Addresses tallied at once; past that, refusals from new addresses share one tally.
_REFUSAL_MAX_KEYS = 1000
_OTHER_ADDRESSES = "other addresses"


@dataclass
class _Tally:
    since: Any
    count: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    last: str = ""


class Auditor:
    """Writes the audit of mutating requests (who, what, when, result) to the fault service's
    event log: ``fault.log.write`` on the bus, entity ``system=roost.api=<service>``, id
    :data:`AUDIT_LOG_ID`, reason ``admin token 'ops' POST /v1/hosts/worker-1/actions -> 200``.

    Refused requests (401, 403, 429) are audited as aggregates: one record per client address
    and caller per ``audit_refusals_window_s`` (``anonymous from 10.0.0.9: 9650 refused requests
    in 60 s (401 x9450, 429 x200), last POST /v1/hosts -> 429``), so a junk request loop costs
    the event log one record a minute, not one per request (the fault service also keeps audit
    records apart from alarms, with their own retention). Only the method and the path as sent
    are recorded, never the query or the body (they may carry secrets). Publishing runs in the
    background after the response, with the broker's confirm: a broker that is away costs a
    warning (with the record, so the service's own log keeps it) and
    ``roost_audit_failures_total{reason}``, never the request.
    """

    def __init__(self, settings: RoostSettings, authenticator: Authenticator) -> None:
        self.settings = settings
        self.authenticator = authenticator
        self.platform: Platform | None = None
        self.entity = f"system=roost.api={_UNSAFE.sub('_', settings.service) or 'roost'}"
        self._pending: set[asyncio.Task[None]] = set()
        self._refusals: dict[tuple[str, str], _Tally] = {}

    def who(self, scope: Scope) -> str:
        """The caller as the route authenticated it (the dashboard: its session), else as
        its token says, else ``anonymous``."""
        principal = (scope.get("state") or {}).get("principal")
        if not isinstance(principal, Principal):
            conn = HTTPConnection(scope)
            token = _bearer(conn) or None
            principal = self.authenticator.principal(token)
            if principal is None:
                return "invalid token" if token else "anonymous"
        return f"{principal.role} token '{principal.name}'"

    def record(self, scope: Scope, status: int, when: Any) -> None:
        """Queue the audit record of a finished request (called by the middleware)."""
        platform = self.platform
        if platform is None:
            return
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope.get("path", "")
        path = _CONTROL.sub("?", path.partition("?")[0])[:1024]
        who = self.who(scope)
        text = f"{who} {scope['method']} {path} -> {status}"
        if status in REFUSED_STATUSES:
            self._tally(scope, who, text.removeprefix(who + " "), status, when)
            return
        entry = self._entry(text, when, refused=False)
        request_id = (scope.get("state") or {}).get("request_id")
        log.info("audit: %s", text)
        self._send(platform, entry, text, request_id)

    def _tally(self, scope: Scope, who: str, what: str, status: int, when: Any) -> None:
        client = scope.get("client")
        address = _UNSAFE.sub("_", client[0]) if client else "unknown"
        key = (address, who)
        tally = self._refusals.get(key)
        if tally is None:
            if len(self._refusals) >= _REFUSAL_MAX_KEYS:
                key = (_OTHER_ADDRESSES, who)
                tally = self._refusals.get(key)
            if tally is None:
                tally = self._refusals[key] = _Tally(since=when)
        tally.count += 1
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        tally.last = what

    def flush_refusals(self) -> int:
        """Publish one record per tallied (address, caller) and start new tallies; how many."""
        platform = self.platform
        tallies, self._refusals = self._refusals, {}
        if platform is None:
            return 0
        window = self.settings.audit_refusals_window_s
        for (address, who), tally in tallies.items():
            statuses = ", ".join(f"{s} x{n}" for s, n in sorted(tally.statuses.items()))
            plural = "request" if tally.count == 1 else "requests"
            text = (
                f"{who} from {address}: {tally.count} refused {plural} in {window:g} s "
                f"({statuses}), last {tally.last}"
            )
            log.info("audit: %s", text)
            self._send(platform, self._entry(text, tally.since, refused=True), text, None)
        return len(tallies)

    async def run_refusals(self) -> None:
        """Publish the refusal tallies every ``audit_refusals_window_s`` (for the app's life)."""
        while True:
            await asyncio.sleep(self.settings.audit_refusals_window_s)
            try:
                self.flush_refusals()
            except Exception:  # the audit never stops: the next window tries again
                log.exception("audit of refused requests failed")

    def _entry(self, text: str, when: Any, *, refused: bool) -> LogWrite:
        return LogWrite(
            event_log_id=AUDIT_LOG_ID,
            entity_instance_id=self.entity,
            entity_type_id=AUDIT_ENTITY_TYPE,
            severity=Severity.minor if refused else Severity.warning,
            reason_text=text,
            event_log_type=AlarmType.security_service if refused else AlarmType.operational,
            probable_cause="unspecified-reason",
            suppression=False,  # an audit trail cannot be hidden
            timestamp=when,
        )

    def _send(self, platform: Platform, entry: LogWrite, text: str, request_id: str | None) -> None:
        envelope = Envelope.of(
            entry,
            source=f"roost/{self.settings.service}",
            subject=self.entity,
            correlationid=request_id,
        )
        if len(self._pending) >= _AUDIT_MAX_PENDING:
            self._failed(platform, "backlog", text, "too many audit records waiting")
            return
        task = asyncio.get_running_loop().create_task(
            self._publish(platform, envelope, text), name="audit"
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, platform: Platform, envelope: Envelope, text: str) -> None:
        try:
            await asyncio.wait_for(
                platform.bus.publish([envelope]), timeout=_AUDIT_PUBLISH_TIMEOUT_S
            )
        except TimeoutError:
            self._failed(platform, "timeout", text, "no broker confirm")
        except Exception as exc:  # the broker is away: never the request's problem
            self._failed(platform, "broker", text, str(exc) or type(exc).__name__)

    def _failed(self, platform: Platform, reason: str, text: str, why: str) -> None:
        log.warning("audit record not published (%s): %s", why, text)
        platform.metrics.counter(
            "audit_failures", "Audit records that could not be published.", ["reason"]
        ).labels(reason).inc()

    async def drain(self, timeout_s: float = 2.0) -> None:
        """Publish the refusals tallied so far, and let records still being published finish
        before the bus closes."""
        try:
            self.flush_refusals()
        except Exception:
            log.exception("audit of refused requests failed")
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)


def _bearer(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return conn.headers.get("x-auth-token") or None


class AuditMiddleware:
    """Hands every finished POST/PUT/PATCH/DELETE to the :class:`Auditor` (pure ASGI)."""

    def __init__(self, app: ASGIApp, auditor: Auditor) -> None:
        self.app = app
        self.auditor = auditor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in MUTATING_METHODS
            or not self.auditor.settings.audit
        ):
            await self.app(scope, receive, send)
            return
        when = utcnow()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            try:
                self.auditor.record(scope, status, when)
            except Exception:  # the audit never fails a request
                log.exception("audit record failed")


#: A service's own start-up: wire consumers and loops, yield while serving, then clean up.
ServiceStart = Callable[[Platform, FastAPI], AbstractAsyncContextManager[None]]


class RequestContextMiddleware:
    """Request ids (``X-Request-Id`` in and out, also the log correlation id) and HTTP metrics.

    Pure ASGI rather than ``BaseHTTPMiddleware``: it adds no task per request.
    """

    def __init__(self, app: ASGIApp, metrics_of: Callable[[], Metrics | None]) -> None:
        self.app = app
        self.metrics_of = metrics_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode()[:128] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = correlation_id.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            correlation_id.reset(token)
            metrics = self.metrics_of()
            if metrics is not None:
                route = scope.get("route")
                path = getattr(route, "path", "unmatched")
                metrics.counter(
                    "http_requests", "HTTP requests.", ["method", "route", "status"]
                ).labels(scope["method"], path, str(status)).inc()
                metrics.histogram(
                    "http_request_seconds", "HTTP request latency.", ["method", "route"]
                ).labels(scope["method"], path).observe(time.perf_counter() - started)


def create_app(
    settings: RoostSettings,
    *,
    title: str,
    description: str,
    routers: Sequence[APIRouter] = (),
    indexes: Mapping[str, Sequence[IndexModel]] | None = None,
    start: ServiceStart | None = None,
    version: str = "0.1.0",
    body_limits: Mapping[tuple[str, str], int] | None = None,
) -> FastAPI:
    """Build a service's app. ``start`` wires its consumers and loops inside the lifespan.
    ``body_limits``: routes (method, path) whose request body may exceed
    ``settings.max_body_bytes``, with their own cap (they read the body as a stream)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.service, settings.log_level, settings.log_json)
        metrics = Metrics(settings.service)
        db = Database(
            settings.mongo_url, settings.database_name, operation_timeout_ms=settings.db_timeout_ms
        )
        await db.connect()
        await db.reclaim_orphaned_transactions()
        await db.ensure_indexes(
            {**inbox_indexes(settings.inbox_ttl_s), **deadletters.INDEXES, **(indexes or {})}
        )
        bus = Bus(settings, metrics)
        await bus.connect()
        outbox = Outbox(db, bus, metrics, poll_s=settings.outbox_poll_s)
        platform = Platform(
            settings=settings,
            metrics=metrics,
            db=db,
            bus=bus,
            outbox=outbox,
            dead_letters=deadletters.DeadLetterStore(db, bus, metrics),
            leader=Leader(
                db,
                settings.service,
                ttl_s=settings.leader_ttl_s,
                renew_s=settings.leader_renew_s,
                metrics=metrics,
            ),
        )
        # One relay per service, on the leader: it relays every replica's outbox writes (one
        # shared collection), in commit order, and a standby's relay never races it.
        platform.spawn_singleton(outbox.run, "outbox-relay")
        app.state.platform = platform
        app.state.metrics = metrics
        auditor.platform = platform
        if settings.audit:
            platform.spawn(auditor.run_refusals(), "audit-refusals")
        service_start = start or _nothing
        try:
            async with service_start(platform, app):
                for consumer in platform.consumers:
                    await consumer.start()
                await platform.dead_letters.start([c.queue_name for c in platform.consumers])
                platform.leader.start()
                log.info("%s ready on %s:%d", settings.service, settings.bind_host, settings.port)
                yield
                for task in platform.tasks:
                    task.cancel()
                for task in platform.tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                for consumer in platform.consumers:
                    await consumer.stop()
                await platform.dead_letters.stop()
                await platform.leader.stop()
        finally:
            await auditor.drain()
            auditor.platform = None
            await bus.close()
            await db.close()

    app = FastAPI(title=title, description=description, version=version, lifespan=lifespan)
    app.state.authenticator = Authenticator(settings)
    app.state.metrics = None
    auditor = Auditor(settings, app.state.authenticator)
    app.state.auditor = auditor
    # Innermost of the three: a 429 still has its request id, is counted and is audited.
    app.add_middleware(
        RateLimitMiddleware,
        rate_per_s=settings.rate_limit_per_s,
        burst=settings.rate_limit_burst,
        authenticator=app.state.authenticator,
        metrics_of=lambda: app.state.metrics,
    )
    # Inside the request context (it sees the request id), outside every route and handler.
    app.add_middleware(AuditMiddleware, auditor=auditor)
    app.add_middleware(RequestContextMiddleware, metrics_of=lambda: app.state.metrics)
    # Outermost: an oversized body is refused before anything authenticates, audits or reads it.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        overrides=body_limits,
        metrics_of=lambda: app.state.metrics,
    )
    install_problem_handlers(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Alive: the process answers."""
        return {"status": "ok", "service": settings.service}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> Response:
        """Ready: database and broker connected."""
        platform: Platform = request.app.state.platform
        checks = {"database": await platform.db.ping(), "bus": platform.bus.connected}
        if all(checks.values()):
            # Informational: a standby replica is ready too (it serves the API and consumes).
            leading = platform.leader is not None and platform.leader.leading
            return JSONResponse({"status": "ready", "checks": {**checks, "leader": leading}})
        down = ", ".join(k for k, ok in checks.items() if not ok)
        return problem_response(503, f"not ready: {down} unavailable", request=request)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(deadletters.router)
    for router in routers:
        app.include_router(router)
    return app


@asynccontextmanager
async def _nothing(platform: Platform, app: FastAPI) -> AsyncIterator[None]:
    yield


def serve(app: FastAPI, settings: RoostSettings) -> None:
    """Run an app under uvicorn on uvloop (ARCHITECTURE.md: ~7x cheaper per datagram).

    Run as the ``standby`` of a service group (``ROOST_ROLE=standby``, set by the agent when
    Roost's own services are managed by the service service, see
    deploy/control-plane/README.md), the service serves nothing and runs none of its loops: it
    waits to be stopped. The agent restarts it with ``ROOST_ROLE=active`` when its host takes
    the activity, so exactly one copy of each singleton loop runs."""
    if os.environ.get("ROOST_ROLE") == "standby":
        _stand_by(settings)
        return
    uvicorn.run(
        app,
        host=settings.bind_host,
        port=settings.port,
        loop="uvloop",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        **tls_options(settings),
    )


def tls_options(settings: RoostSettings) -> dict[str, str]:
    """uvicorn's HTTPS options from ``ROOST_TLS_CERT_FILE``/``ROOST_TLS_KEY_FILE`` (none: HTTP).

    A half or unreadable configuration stops the process with one line saying which, rather
    than serving plain HTTP where HTTPS was asked for."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        missing = "ROOST_TLS_CERT_FILE" if cert is None else "ROOST_TLS_KEY_FILE"
        raise SystemExit(f"{settings.service}: TLS needs both files; {missing} is not set")
    for name, path in (("ROOST_TLS_CERT_FILE", cert), ("ROOST_TLS_KEY_FILE", key)):
        if not path.is_file():
            raise SystemExit(f"{settings.service}: {name}={path} is not a readable file")
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def _stand_by(settings: RoostSettings) -> None:
    """Wait for SIGTERM/SIGINT without serving (a warm standby costs one sleeping process)."""
    configure_logging(settings.service, settings.log_level, settings.log_json)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("%s: standby (ROOST_ROLE=standby): not serving until made active", settings.service)
    stop.wait()
    log.info("%s: standby stopped", settings.service)
