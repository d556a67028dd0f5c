"""Webhook delivery from the notification log.

Every alarm change is logged once in ``notifications`` with a sequence number that follows
commit order (see ``FaultStore.next_seqs``). Each subscription keeps a cursor: its worker reads
the next notifications after the cursor, POSTs the ones the subscription wants in one batch,
and only after a 2xx moves the cursor past everything it read — one write per POST, however many
subscribers. A failed POST is retried with back-off, the same batch again, so nothing is skipped
and order holds; a receiver that is down for a while gets everything when it returns.

Delivery is at least once: if the service dies after a POST succeeded but before the cursor
moved, the batch is sent again; receivers de-duplicate on each notification's ``id``.

The supervisor restarts a worker that died (logged with its traceback and counted, after a
jittered pause), and bounds what a dead receiver can hold: a subscription more than
``backlog_max`` notifications behind has its oldest unreceived ones dropped (its cursor moves
on; ``dropped`` on the subscription and ``webhook_notifications{outcome="dropped"}`` count
them), so retention can prune the log. Destinations are checked by
:mod:`roost_fault.destinations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from pymongo.errors import PyMongoError

from roost_fault import logic
from roost_fault.destinations import (
    DestinationRefused,
    Network,
    check_url,
    guarded_client,
    split_userinfo,
)
from roost_fault.store import FaultStore
from roost_shared.events import utcnow
from roost_shared.metrics import Metrics
from roost_shared.retry import backoff

log = logging.getLogger(__name__)


class WebhookDispatcher:
    """Supervises one delivery worker per subscription."""

    def __init__(
        self,
        store: FaultStore,
        metrics: Metrics,
        *,
        timeout_s: float = 5.0,
        batch_max: int = 100,
        retry_cap_s: float = 30.0,
        poll_s: float = 1.0,
        allowed_nets: Sequence[Network] = (),
        backlog_max: int = 10_000,
        supervise_s: float = 10.0,
    ) -> None:
        self.store = store
        self.batch_max = batch_max
        self.retry_cap_s = retry_cap_s
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.allowed = list(allowed_nets)
        self.backlog_max = backlog_max
        self.supervise_s = supervise_s
        self.http = guarded_client(self.allowed, timeout_s)
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._restart_delays: dict[str, Iterator[float]] = {}
        self._changed = asyncio.Event()
        self._sent = metrics.counter(
            "webhook_notifications", "Webhook notifications by outcome.", ["outcome"]
        )
        self._latency = metrics.histogram(
            "webhook_delivery_seconds", "From the alarm change to the receiver's 2xx.", []
        )
        self._refused = metrics.counter(
            "webhook_refused",
            "Webhook destinations refused (forbidden address ranges), by stage and reason.",
            ["stage", "reason"],
        )
        self._restarts = metrics.counter(
            "webhook_worker_restarts", "Webhook delivery workers restarted after dying.", []
        )

    def wake(self) -> None:
        """New notifications were committed."""
        for event in self._wakes.values():
            event.set()

    def subscriptions_changed(self) -> None:
        self._changed.set()

    def check_destination(self, url: str) -> None:
        """Refuse (raise :class:`DestinationRefused`, logged and counted) a URL that names a
        forbidden address; called when a subscription is created."""
        try:
            check_url(url, self.allowed)
        except DestinationRefused as exc:
            self._refused.labels("create", exc.reason).inc()
            log.warning("webhook subscription refused: %s", exc)
            raise

    async def run(self) -> None:
        """Keep one live worker per subscription until cancelled (run again on each leader
        term)."""
        if self.http.is_closed:
            self.http = guarded_client(self.allowed, self.timeout_s)
        try:
            while True:
                self._changed.clear()
                try:
                    await self._supervise()
                except PyMongoError as exc:
                    log.warning("webhooks: cannot read subscriptions: %s", exc)
                except Exception:
                    log.exception("webhooks: supervising the delivery workers failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self.supervise_s)
        finally:
            for task in self._workers.values():
                task.cancel()
            await asyncio.gather(*self._workers.values(), return_exceptions=True)
            self._workers.clear()
            await self.http.aclose()

    async def _supervise(self) -> None:
        subs = {s["_id"]: s for s in await self.store.subscriptions_all()}
        for sub_id in list(self._workers):
            if sub_id not in subs:
                self._workers.pop(sub_id).cancel()
                self._wakes.pop(sub_id, None)
                self._restart_delays.pop(sub_id, None)
        for sub_id, sub in subs.items():
            pause = 0.0
            task = self._workers.get(sub_id)
            if task is not None:
                if not task.done():
                    continue
                pause = await self._died(sub_id, task)
            self._wakes.setdefault(sub_id, asyncio.Event())
            worker = asyncio.create_task(
                self._deliver(sub_id, sub["url"], pause), name=f"webhook:{sub_id}"
            )
            worker.add_done_callback(lambda _: self._changed.set())
            self._workers[sub_id] = worker
        await self._cap_backlogs(list(subs.values()))

    async def _died(self, sub_id: str, task: asyncio.Task[None]) -> float:
        """Log and count a dead worker; the pause before its successor starts."""
        cause = None if task.cancelled() else task.exception()
        log.error(
            "webhook %s: delivery worker died (%s); restarting",
            sub_id,
            repr(cause) if cause else "it stopped",
            exc_info=cause,
        )
        self._restarts.inc()
        with contextlib.suppress(PyMongoError):
            await self.store.subscriptions.update_one(
                {"_id": sub_id},
                {"$set": {"last_error": f"delivery worker died: {cause!r}"[:500]}},
            )
        delays = self._restart_delays.setdefault(sub_id, backoff(initial=0.5, cap=self.retry_cap_s))
        return next(delays)

    async def _cap_backlogs(self, subs: list[dict[str, Any]]) -> None:
        """Drop the oldest notifications a subscription more than ``backlog_max`` behind has
        not received, so that one dead receiver cannot keep the log growing."""
        floor = await self.store.last_seq() - self.backlog_max
        for sub in subs:
            if sub.get("cursor", 0) >= floor:
                continue
            dropped = await self.store.skip_notifications(sub, floor)
            if dropped is None:  # its worker moved the cursor meanwhile: next round
                continue
            self._sent.labels("dropped").inc(dropped)
            log.warning(
                "webhook %s: more than %d notifications behind; dropped the oldest %d it had "
                "not received (ROOST_WEBHOOK_BACKLOG_MAX)",
                sub["_id"],
                self.backlog_max,
                dropped,
            )

    async def _deliver(self, sub_id: str, url: str, pause_s: float = 0.0) -> None:
        if pause_s:
            await asyncio.sleep(pause_s)
        wake = self._wakes[sub_id]
        delays = backoff(initial=0.5, cap=self.retry_cap_s)
        while True:
            try:
                sub = await self.store.subscriptions.find_one({"_id": sub_id})
                if sub is None:
                    return
                batch = await self.store.notifications_after(sub.get("cursor", 0), self.batch_max)
            except Exception as exc:
                log.warning("webhook %s: cannot read notifications: %s", sub_id, exc)
                await asyncio.sleep(next(delays))
                continue
            if not batch:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.poll_s)
                continue
            wanted = [n for n in batch if logic.matches(sub, n["alarm"])]
            error = await self._post(sub_id, url, wanted) if wanted else None
            if error is None:
                await self._advance(sub_id, batch[-1]["seq"], len(wanted))
                delays = backoff(initial=0.5, cap=self.retry_cap_s)
                continue
            delay = next(delays)
            log.warning(
                "webhook %s: %s; retrying %d notifications in %.1fs",
                sub_id,
                error,
                len(wanted),
                delay,
            )
            await asyncio.sleep(delay)

    async def _post(self, sub_id: str, url: str, wanted: list[dict[str, Any]]) -> str | None:
        """POST one batch; None on success, else the reason (also recorded on the subscription)."""
        body = {"subscription": sub_id, "notifications": [_jsonable(n) for n in wanted]}
        bare, credentials = split_userinfo(url)
        state = "retrying"
        try:
            response = await self.http.post(
                bare, json=body, auth=credentials or httpx.USE_CLIENT_DEFAULT
            )
            if response.status_code >= 300:
                raise httpx.HTTPStatusError(
                    f"receiver answered {response.status_code}",
                    request=response.request,
                    response=response,
                )
        except DestinationRefused as exc:
            self._refused.labels("deliver", exc.reason).inc()
            self._sent.labels("refused").inc(len(wanted))
            error, state = str(exc), "refused"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            self._sent.labels("failed").inc(len(wanted))
            error = str(exc) or type(exc).__name__
        else:
            error = None
        if error is not None:
            await self.store.subscriptions.update_one(
                {"_id": sub_id},
                {"$set": {"state": state, "last_error": error[:500]}, "$inc": {"attempts": 1}},
            )
            return error
        self._sent.labels("delivered").inc(len(wanted))
        wall = time.time()
        for n in wanted:
            self._latency.observe(max(0.0, wall - n["time"].timestamp()))
        return None

    async def _advance(self, sub_id: str, seq: int, delivered: int) -> None:
        update: dict[str, Any] = {"$max": {"cursor": seq}}
        if delivered:
            update["$set"] = {
                "state": "ok",
                "attempts": 0,
                "last_error": None,
                "last_delivered_at": utcnow(),
            }
            update["$inc"] = {"delivered": delivered}
        await self.store.subscriptions.update_one({"_id": sub_id}, update)


def _jsonable(notification: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": notification["id"],
        "type": notification["type"],
        "time": notification["time"].isoformat(),
        "alarm": notification["alarm"],
    }
