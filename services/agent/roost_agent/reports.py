"""Publish instance reports promptly, and keep them while the broker is away.

Process monitor callbacks must never wait on the network (a child's exit is handled in the event
loop; blocking there would delay the restart), so a report is only appended to a small queue
here and one task drains it: everything pending goes out in one publisher-confirm round, so a
burst (``starting``, ``running``, ``healthy`` in the same loop turn) costs one round trip.

While the broker is unreachable the queue keeps what could not be published. It is bounded: when
it overflows, only the newest report per key (per instance) is kept -- the controller needs
the latest state of each instance, not every step it missed -- and if there are more keys than
room, the oldest keys go. A failed publish is retried with a back-off (100 ms doubling to 2 s)
and at once after a reconnect (:meth:`Reporter.kick`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from roost_shared.events import Envelope

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Envelope]], Awaitable[None]]


class Reporter:
    """A bounded, latest-wins-on-overflow queue of envelopes drained by one task."""

    def __init__(self, publish: Publish, *, limit: int = 1000, publish_timeout_s: float = 5.0):
        self._publish = publish
        self.limit = limit
        self._timeout = publish_timeout_s
        self._pending: list[tuple[str, Envelope]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is pending or being published
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.failures = 0
        self.dropped = 0

    def start(self) -> None:
        """Start the draining task (idempotent; needs the running loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="reports")

    def put(self, key: str, envelope: Envelope) -> None:
        """Queue ``envelope`` (never blocks). ``key`` groups reports of one instance."""
        self._pending.append((key, envelope))
        self._idle.clear()
        if len(self._pending) > self.limit:
            self._compact()
        self._wake.set()

    def kick(self) -> None:
        """Publish now (after a reconnect) instead of at the end of the current back-off."""
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _compact(self) -> None:
        latest: dict[str, tuple[str, Envelope]] = {}
        for item in self._pending:
            latest.pop(item[0], None)  # re-inserted last: keys stay in order of their newest
            latest[item[0]] = item
        kept = list(latest.values())[-self.limit :]
        self.dropped += len(self._pending) - len(kept)
        self._pending = kept

    async def _drain(self) -> None:
        delay = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._publish([e for _, e in batch])
                except asyncio.CancelledError:
                    self._pending[:0] = batch
                    raise
                except Exception as exc:
                    # Broker away: keep them (in order, before anything newer) and wait.
                    self._pending[:0] = batch
                    if len(self._pending) > self.limit:
                        self._compact()
                    self.failures += 1
                    log.log(
                        logging.WARNING if delay == 0.1 else logging.DEBUG,  # once per outage
                        "could not publish %d instance report(s) (%s); retrying in %.1fs",
                        len(self._pending),
                        exc or type(exc).__name__,
                        delay,
                    )
                    await self._pause(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                self.published += len(batch)
                delay = 0.1
            self._idle.set()

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less if :meth:`kick` is called (a reconnect)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
        self._wake.clear()

    async def close(self, flush_s: float = 1.0) -> None:
        """Try to publish what is pending for up to ``flush_s``, then stop the task."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_s):
                await self._idle.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
