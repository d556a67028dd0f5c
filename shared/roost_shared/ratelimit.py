"""Rate limits on every Roost API: a token bucket per caller (pure ASGI middleware).

Who a caller is: the token it sends (``Authorization``/``X-Auth-Token``) when the token is
valid, keyed by its digest; otherwise its client address
(so guessing tokens, each one different, is limited per address, not per guess). Each bucket
holds up to ``rate_limit_burst`` requests and refills at ``rate_limit_per_s``; an empty bucket
answers 429 problem+json with ``Retry-After`` (whole seconds until one request is allowed) and
counts ``roost_http_rate_limited_total{caller}`` (``token`` or ``address``).

Never limited: ``/healthz``, ``/readyz`` and ``/metrics`` (orchestrators and Prometheus poll
them), and *peer* tokens (``"peer": true`` in the tokens file: a service calling another, whose
traffic grows with the fleet during a rollout and must never be refused for its volume; it is
trusted like any admin). ``rate_limit_per_s = 0`` turns the limit off.

Memory is bounded: a bucket idle long enough to be full again is the same as no bucket, so it is
forgotten (callers are kept in least-recently-used order and expired from the old end on each
request, O(1) amortised), and at most ``MAX_CALLERS`` are kept (past that the least recently
seen caller is forgotten: it gets a full bucket again, a leniency only a caller with that many
addresses can use).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from roost_shared.auth import Authenticator, digest
from roost_shared.metrics import Metrics
from roost_shared.problems import problem_response

log = logging.getLogger(__name__)

#: Paths polled by machines, never limited.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: Callers remembered at most (about 150 bytes each: ~1.5 MB at the cap).
MAX_CALLERS = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    limited: bool = False


class TokenBuckets:
    """One token bucket per caller key, bounded in number."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_callers: int = MAX_CALLERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_callers = max_callers
        self.clock = clock
        #: After this long idle a bucket is full again: forgetting it changes nothing.
        self.refill_s = self.burst / rate_per_s
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> tuple[float, bool]:
        """Spend one request of ``key``'s bucket: (0, _) when allowed, else (seconds until one
        is, whether this is the first refusal since the caller was last allowed)."""
        now = self.clock()
        self._forget_idle(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_callers:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            self._buckets.move_to_end(key)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.limited = False
            return 0.0, False
        first = not bucket.limited
        bucket.limited = True
        return (1.0 - bucket.tokens) / self.rate, first

    def _forget_idle(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            key, oldest = next(iter(buckets.items()))
            if now - oldest.stamp < self.refill_s:
                return
            del buckets[key]


def _token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return conn.headers.get("x-auth-token") or None


class RateLimitMiddleware:
    """Refuses a caller over its rate with 429 before any route runs (see the module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        rate_per_s: float,
        burst: int,
        authenticator: Authenticator,
        metrics_of: Callable[[], Metrics | None],
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.metrics_of = metrics_of
        self.buckets = TokenBuckets(rate_per_s, burst) if rate_per_s > 0 else None

    def caller(self, scope: Scope) -> tuple[str | None, str]:
        """(bucket key, who for the log); key None: never limited (a peer)."""
        conn = HTTPConnection(scope)
        token = _token(conn)
        if token and not self.authenticator.disabled:
            wanted = digest(token)
            principal = self.authenticator.by_digest(wanted)
            if principal is not None:
                if principal.peer:
                    return None, principal.name
                return f"token:{wanted}", f"{principal.role} token '{principal.name}'"
        address = conn.client.host if conn.client else "unknown"
        return f"address:{address}", f"address {address}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.buckets is None or scope["type"] != "http" or scope.get("path", "") in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        key, who = self.caller(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        wait_s, first = self.buckets.take(key)
        if wait_s <= 0:
            await self.app(scope, receive, send)
            return
        kind = key.partition(":")[0]
        if first:  # once per episode, not once per refused request
            log.warning(
                "rate limit: %s is over %g requests/s (burst %d); refusing with 429",
                who,
                self.buckets.rate,
                int(self.buckets.burst),
            )
        metrics = self.metrics_of()
        if metrics is not None:
            metrics.counter(
                "http_rate_limited", "API requests refused by the rate limit.", ["caller"]
            ).labels(kind).inc()
        retry_after = max(1, math.ceil(wait_s))
        response = problem_response(
            429,
            f"too many requests from {who}: at most {self.buckets.rate:g} per second "
            f"(bursts of {int(self.buckets.burst)}); retry after {retry_after} s",
            request=Request(scope),
            headers={"Retry-After": str(retry_after)},
        )
        await response(scope, receive, send)
