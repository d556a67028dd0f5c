"""Webhook delivery from the notification log.

Every alarm change is logged once in ``notifications`` with a sequence number that follows
commit order (see ``FaultStore.next_seqs``). Each subscription keeps a cursor: its worker reads
the next notifications after the cursor, POSTs the ones the subscription wants in one batch,
and only after a 2xx moves the cursor past everything it read — one write per POST, however many
subscribers. A failed POST is retried with back-off, the same batch again, so nothing is skipped
and order holds; a receiver that is down for a while gets everything when it returns.

Delivery is at least once: if the service dies after a POST succeeded but before the cursor
moved, the batch is sent again; receivers de-duplicate on each notification's ``id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx

from roost_fault import logic
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
    ) -> None:
        self.store = store
        self.batch_max = batch_max
        self.retry_cap_s = retry_cap_s
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.http = httpx.AsyncClient(timeout=timeout_s, headers={"User-Agent": "roost-fault"})
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()
        self._sent = metrics.counter(
            "webhook_notifications", "Webhook notifications by outcome.", ["outcome"]
        )
        self._latency = metrics.histogram(
            "webhook_delivery_seconds", "From the alarm change to the receiver's 2xx.", []
        )

    def wake(self) -> None:
        """New notifications were committed."""
        for event in self._wakes.values():
            event.set()

    def subscriptions_changed(self) -> None:
        self._changed.set()

    async def run(self) -> None:
        """Keep one worker per subscription until cancelled (run again on each leader term)."""
        if self.http.is_closed:
            self.http = httpx.AsyncClient(
                timeout=self.timeout_s, headers={"User-Agent": "roost-fault"}
            )
        try:
            while True:
                subs = {s["_id"]: s for s in await self.store.subscriptions_all()}
                for sub_id in list(self._workers):
                    if sub_id not in subs:
                        self._workers.pop(sub_id).cancel()
                        self._wakes.pop(sub_id, None)
                for sub_id, sub in subs.items():
                    if sub_id not in self._workers:
                        self._wakes[sub_id] = asyncio.Event()
                        self._workers[sub_id] = asyncio.create_task(
                            self._deliver(sub_id, sub["url"]), name=f"webhook:{sub_id}"
                        )
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 10.0)
        finally:
            for task in self._workers.values():
                task.cancel()
            await asyncio.gather(*self._workers.values(), return_exceptions=True)
            self._workers.clear()
            await self.http.aclose()

    async def _deliver(self, sub_id: str, url: str) -> None:
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
        try:
            response = await self.http.post(url, json=body)
            if response.status_code >= 300:
                raise httpx.HTTPStatusError(
                    f"receiver answered {response.status_code}",
                    request=response.request,
                    response=response,
                )
        except httpx.HTTPError as exc:
            self._sent.labels("failed").inc(len(wanted))
            error = str(exc) or type(exc).__name__
            await self.store.subscriptions.update_one(
                {"_id": sub_id},
                {"$set": {"state": "retrying", "last_error": error[:500]}, "$inc": {"attempts": 1}},
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
