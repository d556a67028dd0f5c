from roost_shared.paging import after


def test_after_builds_strict_keyset_filter():
    f = after([("rank", 1), ("name", -1), ("uuid", 1)], {"rank": 2, "name": "m", "uuid": "u"})
    assert f == {
        "$or": [
            {"rank": {"$gt": 2}},
            {"rank": 2, "name": {"$lt": "m"}},
            {"rank": 2, "name": "m", "uuid": {"$gt": "u"}},
        ]
    }
