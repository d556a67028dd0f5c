"""A leader lease per service, with fencing tokens: the loops that must run once (issue 9).

Every replica of a service runs a :class:`Leader` on the service's own database. They compete
for one lease document in the ``leases`` collection, ``_id: "<service>/leader"``:

    {_id, holder, token, expires_ms, granted_ms, renewed_ms, now_ms, members: {replica: ms},
     reclaims}

* **Decisions on the server's clock.** Every attempt is one atomic update pipeline evaluated
  by the database with ``$$NOW``: the lease goes to the caller if it is free or expired (a new,
  strictly bigger ``token``), is extended if the caller holds it under its token and it has not
  expired, and is left alone otherwise. No replica's wall clock is ever compared with another's.
  Times are epoch milliseconds (``{$toLong: "$$NOW"}``): SecantusDB 0.7 compares ``$$NOW``
  with stored dates wrongly (a naive/aware mix: ``{$lte: [now + 3 s, $$NOW]}`` is true), while
  numbers compare right on it and on mongod.
* **Stepping down on one's own clock.** The holder measures from *before* each successful
  renewal on its monotonic clock and gives up (cancels its singleton loops) when
  ``ttl - margin`` has passed without another, even if the database never answers. A standby
  tries every ``renew_s``, so it takes over within ``ttl + renew_s`` of the last renewal.
* **Fencing.** A singleton writer calls :meth:`Leader.fence` inside its transaction: a
  conditional update of the lease document with the caller's token. A takeover that committed
  first makes it match nothing (:class:`Deposed`, the transaction aborts); one that comes later
  conflicts with it and waits for it. Either way a deposed leader's late write never commits.
* **Dead replicas' transactions.** A replica killed mid-transaction leaves it open on the server
  for its lifetime (60 s), blocking every write to the documents it touched. Each replica marks
  itself alive in the lease document on every attempt (``members``); the leader, seeing a member
  silent past the ttl (or on taking over), aborts the orphaned transactions
  (:meth:`Database.reclaim_orphaned_transactions`), so work moves on within a few seconds.
* **A leader killed inside a fenced transaction.** Its fence wrote the lease document, so that
  write stays uncommitted for the transaction's lifetime and every standby's attempt waits on
  it: nobody could take over for a minute. A standby whose attempts keep failing while the
  lease's ``renewed_ms`` (read without a lock) stays the same for a ttl aborts the orphaned
  transactions itself (:meth:`Leader._unblock`), as the new leader would right after taking over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from roost_shared.db import Database, Session
from roost_shared.metrics import Metrics

log = logging.getLogger(__name__)

LEASES = "leases"

#: Makes a singleton loop's coroutine afresh for each term of leadership.
LoopFactory = Callable[[], Coroutine[Any, Any, Any]]

_NOW_MS: dict[str, Any] = {"$toLong": "$$NOW"}


class Deposed(Exception):
    """This replica no longer holds the leader lease under the token it wrote with."""


@dataclass(frozen=True)
class LeaseState:
    """The lease document as one attempt left it."""

    holder: str | None
    token: int
    expires_ms: int
    now_ms: int
    members: dict[str, int]
    reclaims: int

    @classmethod
    def of(cls, doc: dict[str, Any]) -> LeaseState:
        return cls(
            holder=doc.get("holder"),
            token=int(doc.get("token") or 0),
            expires_ms=int(doc.get("expires_ms") or 0),
            now_ms=int(doc.get("now_ms") or 0),
            members={k: int(v) for k, v in (doc.get("members") or {}).items()},
            reclaims=int(doc.get("reclaims") or 0),
        )


def attempt_pipeline(holder: str, token: int | None, ttl_ms: int) -> list[dict[str, Any]]:
    """The update pipeline of one acquire-or-renew attempt by ``holder`` (holding ``token``,
    or None): every comparison is made by the server at ``$$NOW``."""
    mine = {
        "$and": [
            {"$eq": ["$holder", holder]},
            {"$eq": ["$token", token if token is not None else -1]},
            {"$gt": ["$expires_ms", "$_now"]},
        ]
    }
    free = {
        "$or": [
            {"$eq": [{"$ifNull": ["$holder", None]}, None]},
            {"$lte": [{"$ifNull": ["$expires_ms", 0]}, "$_now"]},
        ]
    }
    return [
        {"$set": {"_now": _NOW_MS}},
        {"$set": {"_mine": mine, "_free": free}},
        {
            "$set": {
                "token": {
                    "$cond": [
                        {"$and": [{"$not": ["$_mine"]}, "$_free"]},
                        {"$add": [{"$ifNull": ["$token", 0]}, 1]},
                        "$token",
                    ]
                },
                "granted_ms": {
                    "$cond": [
                        {"$and": [{"$not": ["$_mine"]}, "$_free"]},
                        "$_now",
                        "$granted_ms",
                    ]
                },
                "holder": {"$cond": [{"$or": ["$_mine", "$_free"]}, holder, "$holder"]},
                "expires_ms": {
                    "$cond": [
                        {"$or": ["$_mine", "$_free"]},
                        {"$add": ["$_now", ttl_ms]},
                        "$expires_ms",
                    ]
                },
                "renewed_ms": {"$cond": [{"$or": ["$_mine", "$_free"]}, "$_now", "$renewed_ms"]},
                "now_ms": "$_now",
                "members": {
                    "$mergeObjects": [
                        {"$ifNull": ["$members", {}]},
                        {holder: {"$add": ["$_now", ttl_ms]}},
                    ]
                },
            }
        },
        {"$unset": ["_now", "_mine", "_free"]},
    ]


class LeaseDocument:
    """The database side of one named leader lease (no timing, no loops: tests drive it)."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self.leases = db[LEASES]

    async def attempt(self, holder: str, token: int | None, ttl_ms: int) -> LeaseState | None:
        """Acquire (free or expired), renew (``holder`` holds it under ``token``) or just look;
        None when a concurrent first-ever grant won the insert race."""
        try:
            doc = await self.leases.find_one_and_update(
                {"_id": self.name},
                attempt_pipeline(holder, token, ttl_ms),
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return None
        # SecantusDB answers a concurrent first upsert that lost with no document at all.
        return LeaseState.of(doc) if doc is not None else None

    async def peek(self) -> dict[str, Any] | None:
        """The lease document as last committed (a plain read: never waits on a writer)."""
        return await self.leases.find_one({"_id": self.name})

    async def release(self, holder: str, token: int) -> bool:
        """Free the lease at once (a clean shutdown), so a standby need not wait for expiry."""
        result = await self.leases.update_one(
            {"_id": self.name, "holder": holder, "token": token},
            [{"$set": {"holder": None, "expires_ms": _NOW_MS}}],
        )
        return result.modified_count == 1

    async def fence(self, session: Session | None, holder: str, token: int) -> None:
        """Raise :class:`Deposed` unless ``holder`` holds the lease under ``token`` now (and
        write the lease document, so a concurrent takeover conflicts with this transaction)."""
        result = await self.leases.update_one(
            {
                "_id": self.name,
                "holder": holder,
                "token": token,
                "$expr": {"$gt": ["$expires_ms", _NOW_MS]},
            },
            [{"$set": {"fenced_ms": _NOW_MS}}],
            session=session,
        )
        if result.matched_count != 1:
            raise Deposed(f"{self.name}: token {token} of {holder} is no longer the lease's")

    async def forget_members(self, members: list[str], reclaims: int) -> None:
        """Drop dead members and count a reclaim (live replicas re-record their sessions)."""
        await self.leases.update_one(
            {"_id": self.name},
            {"$unset": {f"members.{m}": "" for m in members}, "$set": {"reclaims": reclaims}},
        )


class Leader:
    """One replica's side of its service's leader lease, and the singleton loops it runs
    while it leads (started afresh on every term, cancelled when the term ends)."""

    def __init__(
        self,
        db: Database,
        service: str,
        *,
        ttl_s: float = 3.0,
        renew_s: float = 1.0,
        metrics: Metrics | None = None,
        holder: str | None = None,
        reclaim: bool = True,
    ) -> None:
        if not 0 < renew_s < ttl_s:
            raise ValueError(f"need 0 < renew_s < ttl_s, not {renew_s}, {ttl_s}")
        self.db = db
        self.service = service
        self.lease = LeaseDocument(db, f"{service}/leader")
        # Replica ids are field names in ``members``: hex only (no dots or dollars).
        self.holder = holder or uuid.uuid4().hex
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        # Give up this long after the start of the last successful renewal: the renewal's own
        # latency and any clock-rate difference (tiny over seconds) stay inside the margin.
        self.valid_s = ttl_s - max(0.2 * ttl_s, 0.1)
        self.reclaim = reclaim
        self.token: int | None = None
        self.terms = 0
        self._valid_until = 0.0
        self._loops: list[tuple[LoopFactory, str]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        #: Each loop's latest task, across terms: a new term's runs only after the last one's
        #: has ended (see :meth:`_supervise`).
        self._latest: dict[str, asyncio.Task[Any]] = {}
        self._runner: asyncio.Task[None] | None = None
        self._reclaims_seen: int | None = None
        #: A standby's view of a lease it cannot write: (renewed_ms seen, since when).
        self._stuck: tuple[Any, float] | None = None
        self._changed = asyncio.Event()
        self._gauge = (
            metrics.gauge(
                "leader", "1 while this replica holds its service's leader lease.", ["service"]
            ).labels(service)
            if metrics is not None
            else None
        )
        if self._gauge is not None:
            self._gauge.set(0)

    @property
    def leading(self) -> bool:
        """True while this replica holds the lease (by its own conservative clock)."""
        return self.token is not None and time.monotonic() < self._valid_until

    def singleton(self, factory: LoopFactory, name: str) -> None:
        """Run ``factory()`` while this replica leads (registered before :meth:`start`)."""
        self._loops.append((factory, name))
        if self.token is not None:
            self._tasks.append(self._launch(factory, name))

    def start(self) -> None:
        """Compete for the lease in the background until :meth:`stop`."""
        self._runner = asyncio.create_task(self.run(), name=f"leader:{self.service}")

    async def stop(self) -> None:
        """Stop competing, end the term (cancel the loops) and release the lease."""
        token = self.token  # before the runner's own step-down forgets it
        if self._runner is not None:
            # Longer than a step-down's own wait for its loops (5 s).
            await cancel_until_done(self._runner, every_s=6.0)
            self._runner = None
        await self._step_down("shutting down")
        if token is not None:
            with contextlib.suppress(PyMongoError):
                await asyncio.wait_for(self.lease.release(self.holder, token), 2.0)

    async def fence(self, session: Session | None) -> None:
        """Call inside a singleton writer's transaction: raises :class:`Deposed` (the
        transaction aborts) unless this replica still holds the lease under its token."""
        token = self.token
        if token is None or not self.leading:
            raise Deposed(f"{self.service}: not the leader")
        await self.lease.fence(session, self.holder, token)

    async def wait_leading(self, timeout_s: float) -> bool:
        """Wait until this replica leads (tests, start-up); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while not self.leading:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    async def run(self) -> None:
        """Attempt every ``renew_s``; start or end the term by the answers (or their absence)."""
        try:
            while True:
                started = time.monotonic()
                await self.tick(started)
                await asyncio.sleep(max(0.0, started + self.renew_s - time.monotonic()))
        finally:
            await self._step_down("stopped")

    async def tick(self, started: float) -> None:
        """One attempt, bounded so that a silent database still ends the term in time."""
        if self.token is not None:
            budget = self._valid_until - started
        else:
            budget = self.renew_s
        state: LeaseState | None = None
        if budget > 0:
            try:
                state = await asyncio.wait_for(
                    self.lease.attempt(self.holder, self.token, round(self.ttl_s * 1000)),
                    budget,
                )
            except (TimeoutError, PyMongoError) as exc:
                log.warning(
                    "leader lease %s: attempt failed: %s", self.lease.name, str(exc) or repr(exc)
                )
                if self.token is None and self.reclaim:
                    await self._unblock(started)
        if state is not None and state.holder == self.holder:
            if self.token is not None and state.token != self.token:
                await self._step_down("lease re-granted under a new token")
            self._valid_until = started + self.valid_s
            if self.token is None:
                await self._begin(state)
            await self._after(state)
            return
        if self.token is not None and (state is not None or time.monotonic() >= self._valid_until):
            await self._step_down(
                f"lease held by {state.holder}" if state is not None else "could not renew in time"
            )
        if state is not None:
            await self._after(state)

    async def _begin(self, state: LeaseState) -> None:
        self.token = state.token
        self.terms += 1
        log.info(
            "leader lease %s: leading (token %d); starting %d loops",
            self.lease.name,
            state.token,
            len(self._loops),
        )
        if self.reclaim:
            # A predecessor that died mid-transaction would block our writes for a minute.
            await self._reclaim(state, [])
        self._tasks = [self._launch(factory, name) for factory, name in self._loops]
        if self._gauge is not None:
            self._gauge.set(1)
        self._changed.set()

    async def _after(self, state: LeaseState) -> None:
        """Housekeeping every attempt: follow reclaims; as leader, reclaim for dead members."""
        if self._reclaims_seen is not None and state.reclaims != self._reclaims_seen:
            self.db.forget_recorded_sessions()  # ours were killed too: record them again
        self._reclaims_seen = state.reclaims
        if self.reclaim and self.token is not None:
            dead = [m for m, until in state.members.items() if until <= state.now_ms]
            if dead:
                await self._reclaim(state, dead)

    async def _unblock(self, started: float) -> None:
        """A standby whose attempt failed: if nobody has renewed the lease for a ttl, the holder
        is gone and what blocks the attempt is likely its open transaction (a fenced write of
        the lease document): abort the orphaned transactions instead of waiting out their
        lifetime. A live leader renews, which resets the count, so its sessions are left alone."""
        try:
            doc = await asyncio.wait_for(self.lease.peek(), self.renew_s)
        except (TimeoutError, PyMongoError):
            return
        if doc is None:
            return  # no lease yet: nobody can have fenced
        renewed = doc.get("renewed_ms")
        if self._stuck is None or self._stuck[0] != renewed:
            self._stuck = (renewed, started)
            return
        if started - self._stuck[1] < self.ttl_s:
            return
        self._stuck = (renewed, started)  # at most once a ttl
        log.warning(
            "leader lease %s: not renewed for %.1f s and not writable; reclaiming",
            self.lease.name,
            self.ttl_s,
        )
        # The same reclaim as a new leader's (live replicas learn their sessions' record went
        # with it); bounded, in case what blocks the lease is not a dead transaction after all.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reclaim(LeaseState.of(doc), []), self.ttl_s)

    async def _reclaim(self, state: LeaseState, dead: list[str]) -> None:
        try:
            n = await self.db.reclaim_orphaned_transactions()
            self.db.forget_recorded_sessions()
            self._reclaims_seen = state.reclaims + 1
            await self.lease.forget_members(dead, state.reclaims + 1)
        except PyMongoError as exc:
            log.warning("leader lease %s: could not reclaim: %s", self.lease.name, exc)
            return
        if dead or n:
            log.info(
                "leader lease %s: replicas gone %s; aborted transactions of %d sessions",
                self.lease.name,
                dead,
                n,
            )

    def _launch(self, factory: LoopFactory, name: str) -> asyncio.Task[Any]:
        previous = self._latest.get(name)
        task = asyncio.create_task(self._supervise(factory, name, previous), name=name)
        self._latest[name] = task
        return task

    async def _supervise(
        self, factory: LoopFactory, name: str, previous: asyncio.Task[Any] | None = None
    ) -> None:
        """Run one singleton loop for the term; a crash restarts it after a second.

        Never beside the same loop of an earlier term still unwinding in this process (a
        step-down waits 5 s for it, no longer): two would share its resources (the UDP port
        a link binds) and could both write under a re-granted token. At 200 agents on 2
        cores terms ended every few seconds, which is when this matters."""
        if previous is not None and not previous.done():
            log.warning("singleton loop %s: waiting for the previous term's to end", name)
            while not previous.done():
                await asyncio.wait({previous}, timeout=5.0)
                if not previous.done():
                    log.warning(
                        "singleton loop %s: the previous term's has not ended yet: %s",
                        name,
                        _where(previous),
                    )
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("singleton loop %s failed; restarting in 1 s", name)
                await asyncio.sleep(1.0)

    async def _step_down(self, why: str) -> None:
        if self.token is None:
            return
        log.warning("leader lease %s: stepping down (%s)", self.lease.name, why)
        self.token = None
        self._valid_until = 0.0
        if self._gauge is not None:
            self._gauge.set(0)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, slow = await asyncio.wait(tasks, timeout=5.0)
            for task in slow:  # the next term's same loop waits for it (see _supervise)
                log.warning(
                    "leader lease %s: loop %s has not ended 5 s after cancel: %s",
                    self.lease.name,
                    task.get_name(),
                    _where(task),
                )
        self._changed.set()


async def cancel_until_done(task: asyncio.Task[Any], *, every_s: float) -> None:
    """Cancel ``task`` and wait for it to end, cancelling it again every ``every_s`` (longer
    than its own clean-up, which a second cancel would cut short) while it runs on.

    On Python 3.11 ``asyncio.wait_for`` with a timeout loses a cancellation that arrives as
    its inner await completes (fixed in 3.12), and PyMongo sends every message through one
    when operations have a deadline: a runner cancelled in mid-send would otherwise run on
    and its ``stop`` never return."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every_s)


def _where(task: asyncio.Task[Any]) -> str:
    """Where a task is suspended (the innermost coroutine it awaits, asyncio's own left
    out), for a log line.
    (``Task.get_stack`` gives only the task's own frame for a suspended coroutine.)"""
    where = "done or not started"
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None and "/asyncio/" not in frame.f_code.co_filename:
            where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return where


class Startable(Protocol):
    """A part a leader term holds: started for the term, stopped when it ends."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@contextlib.asynccontextmanager
async def running(part: Startable) -> AsyncIterator[None]:
    """``part`` started for the body and stopped after it, however either ends: a term that
    ends while the part starts must still release what it got (a UDP link's port: else every
    later term fails to bind it; seen at 200 agents, where renewals time out under load and
    terms end every few seconds). ``part.stop()`` must cope with a start cut short."""
    try:
        await part.start()
        yield
    finally:
        await part.stop()


class FencedDatabase:
    """A :class:`Database` whose transactions are fenced by the leader lease: hand it to a
    singleton writer so that every transaction it commits first proves leadership."""

    def __init__(self, db: Database, fence: Callable[[Session], Coroutine[Any, Any, None]]) -> None:
        self._db = db
        self._fence = fence

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def __getitem__(self, collection: str) -> Any:
        return self._db[collection]

    async def in_transaction(self, work: Callable[[Session], Any]) -> Any:
        """``Database.in_transaction`` with the fence first: a deposed leader's work aborts."""

        async def fenced(session: Session) -> Any:
            await self._fence(session)
            return await work(session)

        return await self._db.in_transaction(fenced)
