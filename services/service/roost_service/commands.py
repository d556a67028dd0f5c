"""Operator actions through the leader: the one writer of placements and activity leases.

With several replicas only the leader-lease holder runs the controller, so an action that moves
activity or changes placement (swact, restart, enable/disable, member lock/unlock) must not run
in whichever replica received the HTTP request. Any replica records it as a **command
document** (collection ``commands``) and waits for its outcome; the leader's
:class:`CommandRunner` claims it (in a transaction fenced by the leader lease), runs it through
the controller exactly as a single replica did (validation and effect under the controller's
lock) and writes the outcome. The HTTP answer is the outcome: 200/202, or the same 404/409/422
problem as before.

* **Wake-up**: the receiving replica wakes its own runner when it leads, else publishes an
  empty, non-persistent message (``roost.sm``, key :data:`WAKE_KEY`) that only the leader's
  exclusive queue is bound to. A lost wake costs at most :data:`POLL_S` (the runner's poll).
* **Exactly once**: a command goes ``pending`` → ``running`` (claimed by one leader, under its
  token) → ``done``; or ``pending`` → ``expired`` when the requester gave up before any leader
  claimed it (both conditional updates of one document: only one wins), so a late leader never
  runs what the client was told was not done. A ``running`` command whose leader died is
  marked ``interrupted`` by the next leader, never run again (its effect may have committed).
* **Deadlines on the database's clock** (``$$NOW``): a pending command past its deadline is
  never claimed (its requester died before expiring it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from pymongo import ASCENDING, IndexModel, ReturnDocument

from roost_shared.bus import Bus
from roost_shared.db import Database, Session
from roost_shared.leader import Deposed
from roost_shared.problems import RoostError
from roost_shared.smlink import SM_EXCHANGE

log = logging.getLogger(__name__)

COMMANDS = "commands"
#: Routing key (exchange ``roost.sm``) of a wake-up for the leader's runner and controller.
WAKE_KEY = "sm.service.wake"
#: The runner looks for pending commands this often even without a wake-up.
POLL_S = 1.0
#: How long a requester waits for a claimed command's outcome beyond its deadline.
GRACE_S = 10.0

INDEXES: dict[str, list[IndexModel]] = {
    COMMANDS: [
        IndexModel([("state", ASCENDING), ("created_at", ASCENDING)]),
        # Outcomes are kept a day for the record, then dropped.
        IndexModel([("created_at", ASCENDING)], expireAfterSeconds=86400),
    ]
}

_NOW_MS: dict[str, Any] = {"$toLong": "$$NOW"}

#: Runs one command on the leader: (group, args) -> the result to hand back (JSON-able).
Action = Callable[[str, dict[str, str]], Awaitable[dict[str, Any]]]


class LeaderUnavailable(RoostError):
    """No leader ran the action in time (503 with ``Retry-After``)."""

    status = 503
    msg_fmt = "{action} of service group {group}: {reason}"


class Relayed(RoostError):
    """A refusal the leader gave (its status, message and field), re-raised in the requester."""

    def __init__(self, status: int, message: str, field: str | None) -> None:
        super().__init__(message, field=field)
        self.status = status


@dataclass
class CommandBook:
    """The ``commands`` collection: each state change is one conditional document update."""

    db: Database

    @property
    def coll(self) -> Any:
        return self.db[COMMANDS]

    async def submit(self, kind: str, group: str, args: dict[str, str], wait_s: float) -> str:
        """Record a pending command with a deadline ``wait_s`` from now on the server's clock."""
        cid = uuid.uuid4().hex
        literal = {k: {"$literal": v} for k, v in args.items()}  # never read as "$field" paths
        await self.coll.update_one(
            {"_id": cid},
            [
                {
                    "$set": {
                        "kind": {"$literal": kind},
                        "group": {"$literal": group},
                        "args": literal,
                        "state": "pending",
                        "created_at": {"$literal": datetime.now(UTC)},  # for the TTL only
                        "deadline_ms": {"$add": [_NOW_MS, round(wait_s * 1000)]},
                    }
                }
            ],
            upsert=True,
        )
        return cid

    async def get(self, cid: str) -> dict[str, Any] | None:
        return await self.coll.find_one({"_id": cid})

    async def any_pending(self) -> bool:
        """True if a command waits for a leader (and its requester still waits for it)."""
        live = {"state": "pending", "$expr": {"$gt": ["$deadline_ms", _NOW_MS]}}
        return await self.coll.find_one(live, {"_id": 1}) is not None

    async def claim(self, session: Session, term: int) -> dict[str, Any] | None:
        """The oldest pending command not past its deadline, now ``running`` under ``term``."""
        return await self.coll.find_one_and_update(
            {"state": "pending", "$expr": {"$gt": ["$deadline_ms", _NOW_MS]}},
            {"$set": {"state": "running", "term": term}},
            sort=[("created_at", ASCENDING)],
            return_document=ReturnDocument.AFTER,
            session=session,
        )

    async def finish(self, cid: str, state: str, outcome: dict[str, Any]) -> None:
        """``running`` → ``state`` (done or interrupted) with its outcome."""
        await self.coll.update_one(
            {"_id": cid, "state": "running"}, {"$set": {"state": state, "outcome": outcome}}
        )

    async def expire(self, cid: str) -> bool:
        """``pending`` → ``expired``; False if a leader claimed it first."""
        result = await self.coll.update_one(
            {"_id": cid, "state": "pending"}, {"$set": {"state": "expired"}}
        )
        return result.modified_count == 1

    async def interrupt_running(self) -> int:
        """At the start of a term: commands a dead leader was running will never finish."""
        result = await self.coll.update_many(
            {"state": "running"},
            {"$set": {"state": "interrupted", "outcome": {"message": "the leader stopped"}}},
        )
        return result.modified_count


@dataclass
class Wakes:
    """Wake-ups for the leader over the bus: every replica publishes, only the leader listens."""

    bus: Bus
    _channel: AbstractChannel | None = None
    _exchange: AbstractExchange | None = None
    _sending: asyncio.Task[None] | None = None
    _again: bool = False

    async def start(self) -> None:
        assert self.bus.connection is not None
        self._channel = await self.bus.connection.channel(publisher_confirms=False)
        self._exchange = await self._channel.declare_exchange(
            SM_EXCHANGE, ExchangeType.DIRECT, durable=True
        )

    async def stop(self) -> None:
        if self._sending is not None:
            self._sending.cancel()
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._channel.close(), 5)

    def send(self) -> None:
        """Publish one wake-up soon (coalesced: many calls meanwhile make one more message)."""
        if self._sending is not None and not self._sending.done():
            self._again = True
            return
        self._sending = asyncio.create_task(self._send())

    async def _send(self) -> None:
        while True:
            self._again = False
            if self._exchange is not None:
                # A wake-up is a hint (the runner also polls): never worth a retry.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self._exchange.publish(
                            Message(b"", delivery_mode=DeliveryMode.NOT_PERSISTENT, expiration=5),
                            WAKE_KEY,
                        ),
                        1.0,
                    )
            if not self._again:
                return

    async def listen(self, on_wake: Callable[[], None]) -> AbstractChannel:
        """The leader's queue of wake-ups (exclusive: gone with its channel or connection)."""
        assert self.bus.connection is not None
        channel = await self.bus.connection.channel(publisher_confirms=False)
        exchange = await channel.declare_exchange(SM_EXCHANGE, ExchangeType.DIRECT, durable=True)
        queue = await channel.declare_queue(
            "", exclusive=True, auto_delete=True, arguments={"x-max-length": 100}
        )
        await queue.bind(exchange, WAKE_KEY)

        async def on_message(_: AbstractIncomingMessage) -> None:
            on_wake()

        await queue.consume(on_message, no_ack=True)
        return channel


@dataclass
class Commands:
    """Every replica's side: submit an action and wait for the leader's outcome; the leader's
    side: :meth:`run` (a singleton loop) claims and runs them."""

    book: CommandBook
    wakes: Wakes
    leading: Callable[[], bool]
    term: Callable[[], int | None]
    transaction: Callable[[Callable[[Session], Awaitable[Any]]], Awaitable[Any]]
    actions: dict[str, Action]
    wait_s: float = 10.0
    #: Woken by anything that changed what the controller reads (on the leader).
    wake_controller: Callable[[], None] = lambda: None
    _pending: asyncio.Event = field(default_factory=asyncio.Event)
    _done: dict[str, asyncio.Event] = field(default_factory=dict)

    def nudge(self) -> None:
        """Something the leader's controller should look at was committed here: wake it (its
        own loop if this replica leads, else over the bus)."""
        self.wake_controller()
        if not self.leading():
            self.wakes.send()

    async def request(self, kind: str, group: str, **args: str) -> dict[str, Any]:
        """Have the leader run ``kind`` on ``group``; its result, or its refusal re-raised
        (:class:`Relayed`), or :class:`LeaderUnavailable` when no leader ran it in time."""
        cid = await self.book.submit(kind, group, args, self.wait_s)
        done = self._done[cid] = asyncio.Event()
        try:
            self._pending.set()
            if not self.leading():
                self.wakes.send()
            return await self._outcome(cid, kind, group, done)
        finally:
            self._done.pop(cid, None)

    async def _outcome(
        self, cid: str, kind: str, group: str, done: asyncio.Event
    ) -> dict[str, Any]:
        started = time.monotonic()
        while True:
            doc = await self.book.get(cid) or {}
            state = doc.get("state")
            outcome = doc.get("outcome") or {}
            if state == "done":
                if outcome.get("status", 200) >= 400:
                    raise Relayed(outcome["status"], outcome["message"], outcome.get("field"))
                return outcome.get("result") or {}
            if state == "interrupted":
                raise LeaderUnavailable(
                    action=kind,
                    group=group,
                    reason="the leader replica stopped while running it; it may or may not "
                    "have taken effect: look at the group before retrying",
                )
            waited = time.monotonic() - started
            if state == "pending" and waited >= self.wait_s and await self.book.expire(cid):
                raise LeaderUnavailable(
                    action=kind,
                    group=group,
                    reason=f"no leader replica took it within {self.wait_s:g} s; nothing was "
                    "done, retry",
                )
            if waited >= self.wait_s + GRACE_S:
                raise LeaderUnavailable(
                    action=kind,
                    group=group,
                    reason="the leader took it but gave no outcome in time; look at the group",
                )
            # Our own runner says when it is done; another replica's outcome is polled for:
            # often while an action usually finishes (tens of ms), rarely once it takes long.
            poll = 0.01 if waited < 0.1 else 0.025 if waited < 1.0 else 0.1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), poll)

    # -- the leader -----------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run pending commands while this replica leads (a singleton loop)."""
        interrupted = await self.book.interrupt_running()
        if interrupted:
            log.warning("%d operator actions were cut short by the previous leader", interrupted)

        def woken() -> None:
            self._pending.set()
            self.wake_controller()

        channel = await self.wakes.listen(woken)
        try:
            while True:
                self._pending.clear()
                try:
                    while await self.book.any_pending() and await self._run_one():
                        pass
                except (asyncio.CancelledError, Deposed):
                    raise
                except Exception:
                    log.exception("operator action runner failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._pending.wait(), POLL_S)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 5)

    async def _run_one(self) -> bool:
        """Claim the oldest pending command and run it; False when there was none to claim."""
        term = self.term()
        if term is None:
            raise Deposed("not the leader")

        async def claim(session: Session) -> dict[str, Any] | None:
            return await self.book.claim(session, term)

        cmd = await self.transaction(claim)
        if cmd is None:
            return False
        state, outcome = "done", await self._execute(cmd)
        if outcome is None:
            state, outcome = "interrupted", {"message": "the leader stepped down"}
        await self.book.finish(cmd["_id"], state, outcome)
        event = self._done.get(cmd["_id"])
        if event is not None:
            event.set()
        return True

    async def _execute(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        """The outcome of one command (None if this replica lost the lease meanwhile)."""
        action = self.actions.get(cmd.get("kind", ""))
        try:
            if action is None:
                raise RoostError(f"unknown action {cmd.get('kind')!r}")
            return {"status": 200, "result": await action(cmd["group"], cmd.get("args") or {})}
        except RoostError as exc:
            return {"status": exc.status, "message": str(exc), "field": exc.field}
        except Deposed:
            return None
        except Exception as exc:
            log.exception("operator action %s on %s failed", cmd.get("kind"), cmd.get("group"))
            return {"status": 500, "message": f"{cmd.get('kind')} failed: {exc}", "field": None}
