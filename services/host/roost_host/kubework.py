"""The Kubernetes runner: drains a locked host's node and uncordons an enabled host's node.

A request (``kube: {id, op, node, status: "pending"}``) is written in the host document in the
same transaction as the lock (drain) or the in-test's end (uncordon), so it survives a restart:
at start-up, and whenever it is woken or its poll comes round, the runner starts one task per
host with a pending request. A newer request for the same host (a lock after an uncordon, an
uncordon after a lock) cancels the task still working on the older one. The outcome is written
in its own transaction, checked against the request's id (a superseded result is dropped), as a
timeline entry (cause ``kubernetes drain``/``kubernetes uncordon``, a reason code such as
``drain-done`` or ``drain-blocked``, and the drainer's message as ``detail``).

Nothing here changes a host's states: StarlingX locks a host whatever Kubernetes says, and so
does Roost; the timeline tells the operator what is still on the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from roost_host.kube import DrainResult, KubeDrainer, NodeResult
from roost_host.operations import DRAIN, HostOperations
from roost_host.store import HostStore
from roost_shared.db import Database
from roost_shared.retry import backoff

log = logging.getLogger(__name__)


class KubeRunner:
    def __init__(
        self,
        db: Database,
        store: HostStore,
        ops: HostOperations,
        drainer: KubeDrainer,
        *,
        drain_timeout_s: float,
        grace_s: int | None,
        poll_s: float,
    ) -> None:
        self.db = db
        self.store = store
        self.ops = ops
        self.drainer = drainer
        self.drain_timeout_s = drain_timeout_s
        self.grace_s = grace_s
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        #: host uuid -> (request id, the task working on it)
        self._running: dict[str, tuple[str, asyncio.Task[None]]] = {}

    def wake(self) -> None:
        """A request may have been written: look now."""
        self._wake.set()

    async def scan(self) -> int:
        """Start a task for every pending request not already being worked on."""
        started = 0
        for doc in await self.store.kube_pending():
            request = doc["kube"]
            current = self._running.get(doc["uuid"])
            if current is not None:
                request_id, task = current
                if request_id == request["id"] and (not task.done() or not task.cancelled()):
                    continue  # under way, or done and recorded after this scan read the host
                task.cancel()  # superseded by a newer request
            task = asyncio.create_task(
                self._work(doc["uuid"], request), name=f"kube-{request['op']}-{request['node']}"
            )
            self._running[doc["uuid"]] = (request["id"], task)
            started += 1
        for host_uuid, (_, task) in list(self._running.items()):
            if task.done():
                del self._running[host_uuid]
        return started

    async def _work(self, host_uuid: str, request: dict[str, Any]) -> None:
        node = request["node"]
        result: DrainResult | NodeResult
        if request["op"] == DRAIN:
            result = await self.drainer.drain(
                node, timeout_s=self.drain_timeout_s, grace_s=self.grace_s
            )
        else:
            result = await self.drainer.uncordon(node)
        log.info("kube %s %s: %s (%s)", request["op"], node, result.status, result.message)
        delays = backoff(initial=0.2, cap=10.0)
        while True:  # the drain is done: record it, retrying only the write
            try:
                await self.db.in_transaction(
                    lambda s: self.ops.kube_done(s, host_uuid, request["id"], result)
                )
                self.ops.outbox.wake()  # its events now, not at the relay's next poll
                return
            except Exception as exc:
                delay = next(delays)
                log.warning("kube runner: recording %s of %s: %s", request["op"], node, exc)
                await asyncio.sleep(delay)

    async def run(self) -> None:
        delays = backoff(initial=0.2, cap=10.0)
        try:
            while True:
                try:
                    await self.scan()
                    delays = backoff(initial=0.2, cap=10.0)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    delay = next(delays)
                    log.warning("kube runner: %s; retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
        finally:
            tasks = [task for _, task in self._running.values()]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
