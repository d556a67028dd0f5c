"""Every database call has a deadline: one blocked behind a transaction that never ends (a
process killed inside it) fails after ``db_timeout_ms`` instead of hanging its loop."""

from __future__ import annotations

import time
import uuid

import pytest
from pymongo.errors import PyMongoError

from roost_shared.db import DEFAULT_OPERATION_TIMEOUT_MS, Database
from roost_shared.settings import RoostSettings


def test_the_default_deadline_is_set_and_outlasts_normal_operations():
    assert RoostSettings().db_timeout_ms == DEFAULT_OPERATION_TIMEOUT_MS == 30_000
    db = Database("mongodb://127.0.0.1:1/?directConnection=true", "x")
    assert db.client.options.timeout == 30.0


async def test_a_call_blocked_by_an_open_transaction_times_out(mongo_url):
    db = Database(mongo_url, f"timeouts_{uuid.uuid4().hex[:8]}", operation_timeout_ms=1_000)
    try:
        docs = db["docs"]
        await docs.insert_one({"_id": "a", "n": 0})
        # Work inside a transaction takes the same deadline per operation and commits.
        await db.in_transaction(
            lambda s: docs.update_one({"_id": "a"}, {"$inc": {"n": 1}}, session=s)
        )
        async with db.client.start_session() as holder:
            await holder.start_transaction()
            await docs.update_one({"_id": "a"}, {"$set": {"held": True}}, session=holder)
            started = time.monotonic()
            with pytest.raises(PyMongoError):
                await docs.update_one({"_id": "a"}, {"$set": {"blocked": True}})
            waited = time.monotonic() - started
            await holder.abort_transaction()
        assert 0.5 <= waited < 5.0, waited
        assert (await docs.find_one({"_id": "a"}))["n"] == 1
    finally:
        await db.client.drop_database(db.db.name)
        await db.close()
