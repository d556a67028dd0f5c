"""The leader lease (roost_shared.leader) on a real database: two replicas' Leader objects.

Short lease times (ttl 1.2 s, attempts every 0.3 s) keep the takeovers quick; the logic is
the same as with the defaults (3 s / 1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from roost_shared.db import Database
from roost_shared.leader import Deposed, Leader, LeaseDocument
from tests.support.waiting import eventually

TTL_S = 1.2
RENEW_S = 0.3


@pytest.fixture
async def db(mongo_url: str) -> AsyncIterator[Database]:
    d = Database(mongo_url, f"leader_{uuid.uuid4().hex[:8]}")
    await d.connect()
    yield d
    await d.client.drop_database(d.db.name)
    await d.close()


class Journal:
    """What the singleton loops of each replica did, with monotonic times."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []

    def loop(self, replica: str):
        async def run() -> None:
            self.events.append((time.monotonic(), replica, "start"))
            try:
                await asyncio.Event().wait()
            finally:
                self.events.append((time.monotonic(), replica, "stop"))

        return run

    def running(self) -> set[str]:
        state: dict[str, bool] = {}
        for _t, replica, what in self.events:
            state[replica] = what == "start"
        return {r for r, on in state.items() if on}

    def when(self, replica: str, what: str) -> float:
        return next(t for t, r, w in self.events if r == replica and w == what)


def pair(db: Database, journal: Journal) -> tuple[Leader, Leader]:
    leaders = []
    for name in ("a", "b"):
        leader = Leader(db, "svc", ttl_s=TTL_S, renew_s=RENEW_S)
        leader.singleton(journal.loop(name), f"loop-{name}")
        leaders.append(leader)
    return leaders[0], leaders[1]


async def test_exactly_one_replica_leads_and_runs_the_loops(db: Database) -> None:
    journal = Journal()
    a, b = pair(db, journal)
    a.start()
    b.start()
    try:
        await eventually(lambda: a.leading or b.leading, timeout=5, what="a leader")
        # Several attempt periods later, still exactly one, and its loop alone runs.
        deadline = time.monotonic() + 4 * RENEW_S
        while time.monotonic() < deadline:
            assert a.leading != b.leading
            await asyncio.sleep(RENEW_S / 3)
        assert journal.running() == {"a" if a.leading else "b"}
        assert a.terms + b.terms == 1
    finally:
        await a.stop()
        await b.stop()
    assert journal.running() == set()


async def test_a_leader_that_stops_renewing_is_replaced_within_ttl_plus_renew(
    db: Database,
) -> None:
    journal = Journal()
    a, b = pair(db, journal)
    a.start()
    assert await a.wait_leading(5)
    first = a.token
    b.start()
    await asyncio.sleep(2 * RENEW_S)
    assert not b.leading  # a standby while a renews
    # The leader's process stops renewing (its lease task dies) without releasing the lease.
    assert a._runner is not None
    stopped = time.monotonic()
    a._runner.cancel()
    assert await b.wait_leading(TTL_S + 2 * RENEW_S + 1.0)
    took = time.monotonic() - stopped
    assert took <= TTL_S + RENEW_S + 0.5, took
    assert b.token is not None and first is not None and b.token > first
    assert journal.running() == {"b"}
    await b.stop()
    await a.stop()


async def test_a_leader_cut_off_from_the_database_steps_down_before_anyone_takes_over(
    db: Database,
) -> None:
    """Its attempts hang (a partition): it must end its term on its own clock, before the
    other replica's term begins: never two leaders at once."""
    journal = Journal()
    a, b = pair(db, journal)
    a.start()
    assert await a.wait_leading(5)
    b.start()
    await asyncio.sleep(2 * RENEW_S)

    async def hang(*_args: object) -> None:
        await asyncio.Event().wait()

    a.lease.attempt = hang  # type: ignore[method-assign]
    assert await b.wait_leading(TTL_S + 2 * RENEW_S + 1.0)
    assert not a.leading
    assert journal.when("a", "stop") < journal.when("b", "start")
    await b.stop()
    await a.stop()


async def test_tokens_strictly_increase_across_grants(db: Database) -> None:
    tokens = []
    for _ in range(3):
        leader = Leader(db, "svc", ttl_s=TTL_S, renew_s=RENEW_S)
        leader.start()
        # Released by the one before: leads at its first attempt, not after the ttl.
        assert await leader.wait_leading(RENEW_S)
        tokens.append(leader.token)
        await leader.stop()
    assert tokens == sorted(set(tokens)) and len(tokens) == 3


async def test_a_deposed_leaders_fenced_write_is_refused(db: Database) -> None:
    journal = Journal()
    a, b = pair(db, journal)
    a.start()
    assert await a.wait_leading(5)
    old_token = a.token
    assert old_token is not None

    async def write(tag: str):
        async def work(session):
            await a.lease.fence(session, a.holder, old_token)
            await db["effects"].insert_one({"tag": tag}, session=session)

        return await db.in_transaction(work)

    await write("while leading")
    assert a._runner is not None
    a._runner.cancel()  # a stops renewing; b takes over
    b.start()
    assert await b.wait_leading(TTL_S + 2 * RENEW_S + 1.0)
    # The old leader wakes up late (it still believes its token) and writes: refused.
    with pytest.raises(Deposed):
        await write("after takeover")
    with pytest.raises(Deposed):  # and the Leader object itself no longer claims to lead
        await a.fence(None)
    assert [d["tag"] for d in await db["effects"].find({}).to_list()] == ["while leading"]
    # The new leader's fence passes.
    await db.in_transaction(b.fence)
    await b.stop()
    await a.stop()


async def test_a_takeover_waits_for_a_fenced_transaction_in_flight(db: Database) -> None:
    """Fence first, then a takeover attempt, then commit: the commit wins and the takeover
    happens after it (never a write by the old leader after the new one's grant)."""
    lease = LeaseDocument(db, "svc/leader")
    first = await lease.attempt("a", None, 200)
    assert first is not None and first.holder == "a"
    async with db.client.start_session() as session:
        await session.start_transaction()
        await lease.fence(session, "a", first.token)
        await db["effects"].insert_one({"tag": "fenced"}, session=session)
        await asyncio.sleep(0.3)  # the lease expires meanwhile
        takeover = asyncio.create_task(lease.attempt("b", None, 5000))
        await asyncio.sleep(0.2)
        await session.commit_transaction()
    state = await asyncio.wait_for(takeover, 10)
    assert state is not None and state.holder == "b" and state.token == first.token + 1
    assert await db["effects"].count_documents({"tag": "fenced"}) == 1


async def test_a_crashing_singleton_loop_is_restarted_while_leading(db: Database) -> None:
    runs = []

    async def flaky() -> None:
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise RuntimeError("boom")
        await asyncio.Event().wait()

    leader = Leader(db, "svc", ttl_s=TTL_S, renew_s=RENEW_S)
    leader.singleton(flaky, "flaky")
    leader.start()
    try:
        await eventually(lambda: len(runs) >= 3, timeout=5, what="three runs")
        assert leader.leading
    finally:
        await leader.stop()


async def test_a_leader_killed_inside_a_fenced_transaction_is_replaced_within_seconds(
    db: Database, mongo_url: str
) -> None:
    """The leader fenced (wrote the lease document) in a transaction and died before committing:
    the transaction stays open on the server for its lifetime (60 s) and the standby's attempts
    wait on that write. The standby sees nobody renewing, aborts the orphaned transaction and
    takes over within a few ttls, not a minute."""
    journal = Journal()
    # Two processes: each replica its own client (a replica never kills its own sessions).
    other = Database(mongo_url, db.db.name)
    await other.connect()
    a = Leader(other, "svc", ttl_s=TTL_S, renew_s=RENEW_S)
    a.singleton(journal.loop("a"), "loop-a")
    b = Leader(db, "svc", ttl_s=TTL_S, renew_s=RENEW_S)
    b.singleton(journal.loop("b"), "loop-b")
    a.start()
    assert await a.wait_leading(5)
    token = a.token
    assert token is not None
    session = other.client.start_session()
    await other._record_session(session)  # as every transaction's session is (in_transaction)
    await session.start_transaction()
    await a.lease.fence(session, a.holder, token)
    await other["effects"].insert_one({"tag": "never committed"}, session=session)
    assert a._runner is not None
    a._runner.cancel()  # "killed": no renewal, no release, the transaction left open
    killed = time.monotonic()
    b.start()
    try:
        assert await b.wait_leading(20), "the standby never took over"
        took = time.monotonic() - killed
        assert took < 4 * TTL_S + 2.0, took
        assert b.token is not None and b.token > token
        assert await db["effects"].count_documents({}) == 0
    finally:
        await b.stop()
        await a.stop()
        with contextlib.suppress(Exception):
            await session.end_session()
        await other.close()


async def test_a_new_term_runs_a_loop_only_after_the_last_terms_has_ended(db: Database) -> None:
    """A loop slower to end than the step-down's 5 s wait (a link closing its bus channel on
    a loaded machine): the next term's run of it must wait, never run beside it (two links
    would contend for one UDP port; two writers for one re-granted token)."""
    events: list[str] = []

    async def slow_to_stop() -> None:
        events.append("start")
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(6.5)
            events.append("stop")

    async def hang(*_args: object) -> None:
        await asyncio.Event().wait()

    leader = Leader(db, "svc", ttl_s=TTL_S, renew_s=RENEW_S)
    leader.singleton(slow_to_stop, "slow")
    leader.start()
    try:
        assert await leader.wait_leading(5)
        await eventually(lambda: events == ["start"], timeout=5, what="the first term's loop")
        attempt = leader.lease.attempt
        leader.lease.attempt = hang  # type: ignore[method-assign]
        await eventually(lambda: not leader.leading, timeout=5, what="a step-down")
        leader.lease.attempt = attempt  # type: ignore[method-assign]
        await eventually(
            lambda: events.count("start") == 2, timeout=20, what="the second term's loop"
        )
        assert events == ["start", "stop", "start"], events
    finally:
        await leader.stop()


async def test_stop_ends_a_runner_that_swallowed_its_cancellation() -> None:
    """Python 3.11's wait_for (inside PyMongo's sends once operations have a deadline) can lose
    a cancellation; the runner must still end."""
    from roost_shared.leader import cancel_until_done

    ends: list[str] = []

    async def swallows_once() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ends.append("swallowed")  # as a lost cancellation leaves it: running on
        await asyncio.Event().wait()

    task = asyncio.create_task(swallows_once())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_until_done(task, every_s=0.1), 5)
    assert task.cancelled() and ends == ["swallowed"]
