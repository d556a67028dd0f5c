"""Activity leases with fencing tokens, against the real database: exactly one winner among
concurrent acquirers, strictly bigger tokens after expiry, stale holders refused, and a seeded
random-interleaving check of the invariant against a reference model."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from roost_service.lease import INDEXES, Lease, LeaseStore
from roost_shared.db import Database


class FakeClock:
    """A clock the test moves (milliseconds, like the stored dates)."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += timedelta(milliseconds=ms)


@pytest.fixture
async def db(mongo_url: str) -> AsyncIterator[Database]:
    database = Database(mongo_url, f"roost_service_lease_{uuid.uuid4().hex[:8]}")
    await database.connect(10)
    await database.ensure_indexes(INDEXES)
    yield database
    await database.client.drop_database(database.db.name)
    await database.close()


async def test_concurrent_acquire_has_exactly_one_winner(db):
    clock = FakeClock()
    leases = LeaseStore(db, clock)
    for round_ in range(3):
        # First grant (an upsert race) and later grants (a conditional update race) alike.
        got = await asyncio.gather(
            *(leases.acquire("gw", "active", f"h{i}", ttl_s=5) for i in range(25))
        )
        winners = [g for g in got if g is not None]
        assert len(winners) == 1, winners
        assert winners[0].token == round_ + 1
        current = await leases.current("gw", "active")
        assert current == winners[0] and current.held_at(clock())
        clock.advance(5_000)  # expires exactly now: free for the next round
        assert not current.held_at(clock())


async def test_expiry_gives_a_new_holder_a_bigger_token_and_refuses_the_stale_one(db):
    clock = FakeClock()
    leases = LeaseStore(db, clock)
    a = await leases.acquire("gw", "active", "controller-0", ttl_s=1)
    assert a is not None and a.token == 1
    assert await leases.acquire("gw", "active", "controller-1", ttl_s=1) is None
    assert await leases.acquire("gw", "active", "controller-0", ttl_s=1) is None  # renew instead
    clock.advance(500)
    renewed = await leases.renew("gw", "active", "controller-0", a.token, ttl_s=1)
    assert renewed is not None and renewed.token == a.token
    assert renewed.expires_at == clock() + timedelta(seconds=1)
    clock.advance(999)
    assert await leases.acquire("gw", "active", "controller-1", ttl_s=1) is None  # not yet
    clock.advance(1)
    b = await leases.acquire("gw", "active", "controller-1", ttl_s=1)
    assert b is not None and b.holder == "controller-1" and b.token > a.token
    # The old holder, fenced out by the new token, can neither renew nor release.
    assert await leases.renew("gw", "active", "controller-0", a.token, ttl_s=1) is None
    assert not await leases.release("gw", "active", "controller-0", a.token)
    # Nor can the new holder with a wrong token.
    assert await leases.renew("gw", "active", "controller-1", a.token, ttl_s=1) is None
    assert await leases.current("gw", "active") == b
    # Release frees the slot at once; the token stays, so the next grant is bigger still.
    assert await leases.release("gw", "active", "controller-1", b.token)
    assert not await leases.release("gw", "active", "controller-1", b.token)
    c = await leases.acquire("gw", "active", "controller-0", ttl_s=1)
    assert c is not None and c.token == b.token + 1
    # An expired holder cannot renew; it must acquire again (and gets a new token).
    clock.advance(1000)
    assert await leases.renew("gw", "active", "controller-0", c.token, ttl_s=1) is None
    d = await leases.acquire("gw", "active", "controller-0", ttl_s=1)
    assert d is not None and d.token == c.token + 1


async def test_slots_and_groups_are_independent(db):
    leases = LeaseStore(db, FakeClock())
    got = [await leases.acquire("db", f"active-{i}", f"h{i}", ttl_s=5) for i in range(3)]
    assert [g.token for g in got if g] == [1, 1, 1]
    assert (await leases.acquire("gw", "active", "h0", ttl_s=5)).token == 1
    assert [x.slot for x in await leases.of_group("db")] == ["active-0", "active-1", "active-2"]
    assert await leases.current("db", "active-9") is None


@dataclass
class Grant:
    holder: str
    token: int
    expires_at: datetime


async def test_random_interleavings_keep_one_holder_and_increasing_tokens(db):
    """Seeded random operations, run concurrently at shared instants, checked against a
    reference model. Each batch gives every slot it touches either a crowd of concurrent
    acquirers or one renew/release (so the model's answer does not depend on the order the
    database happens to run them in):

    * acquirers: exactly one wins if the slot was free or expired, none if it was held; the
      winner's token is one above every earlier token of the slot;
    * renew succeeds only for the latest grant's holder and token before expiry; release only
      for the latest grant's holder and token, once;
    * afterwards ``current`` agrees with the model: at most one unexpired holder per slot.
    """
    rng = random.Random(20261125)
    clock = FakeClock()
    leases = LeaseStore(db, clock)
    slots = [("g1", "active"), ("g2", "active-0"), ("g2", "active-1")]
    holders = ["c0", "c1", "c2", "c3"]
    latest: dict[tuple[str, str], Grant | None] = dict.fromkeys(slots)
    released: set[tuple[str, str]] = set()
    issued: dict[tuple[str, str], int] = dict.fromkeys(slots, 0)
    steps = 0
    while steps < 400:
        clock.advance(rng.choice([0, 0, 50, 200, 400, 900, 1000]))
        now = clock()
        batch: list[tuple[str, tuple[str, str], str, int]] = []
        for key in rng.sample(slots, rng.randint(1, len(slots))):
            grant = latest[key]
            if rng.random() < 0.5:
                for holder in rng.sample(holders, rng.randint(1, len(holders))):
                    batch.append(("acquire", key, holder, 0))
            else:
                kind = rng.choice(["renew", "renew", "release"])
                right = grant is not None and rng.random() < 0.7
                holder = grant.holder if right else rng.choice(holders)
                token = grant.token if right else rng.randint(0, 5)
                batch.append((kind, key, holder, token))
        results = await asyncio.gather(*(_run(leases, *op) for op in batch))
        steps += len(batch)

        wins: dict[tuple[str, str], list[Lease]] = {}
        for (kind, key, holder, token), result in zip(batch, results, strict=True):
            grant = latest[key]
            live = grant is not None and key not in released and now < grant.expires_at
            matches = grant is not None and grant.holder == holder and grant.token == token
            if kind == "acquire":
                wins.setdefault(key, [])
                if result is not None:
                    wins[key].append(result)
            elif kind == "renew":
                assert (result is not None) == (live and matches), (key, holder, token, grant)
                if result is not None:
                    latest[key] = Grant(holder, token, result.expires_at)
            else:
                assert result == (matches and key not in released), (key, holder, token, grant)
                if result:
                    released.add(key)
        for key, won in wins.items():
            grant = latest[key]
            live = grant is not None and key not in released and now < grant.expires_at
            assert len(won) == (0 if live else 1), f"{key}: winners {won}, latest {grant}"
            if won:
                assert won[0].token == issued[key] + 1, (won[0], issued[key])
                issued[key] = won[0].token
                latest[key] = Grant(won[0].holder, won[0].token, won[0].expires_at)
                released.discard(key)
        for key in slots:
            current = await leases.current(*key)
            grant = latest[key]
            if grant is None:
                assert current is None
                continue
            assert current.token == issued[key]
            if key in released:
                assert current.holder is None and not current.held_at(now)
            else:
                assert current.holder == grant.holder and current.expires_at == grant.expires_at
    assert all(n > 1 for n in issued.values()), issued


async def _run(leases: LeaseStore, kind: str, key: tuple[str, str], holder: str, token: int):
    group, slot = key
    if kind == "acquire":
        return await leases.acquire(group, slot, holder, ttl_s=1)
    if kind == "renew":
        return await leases.renew(group, slot, holder, token, ttl_s=1)
    return await leases.release(group, slot, holder, token)
