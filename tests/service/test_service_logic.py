"""Service group validation without I/O: each refusal names its field and says why."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from roost_service import logic
from roost_service.models import ServiceGroupSpec


def group(**changes: Any) -> dict[str, Any]:
    """A valid active-standby group, with ``changes`` applied on top."""
    body: dict[str, Any] = {
        "redundancy": {"model": "active-standby"},
        "members": {"hosts": ["controller-0", "controller-1"]},
        "preferred": ["controller-0"],
        "failure_policy": {"max_restarts": 2, "window_s": 30, "on_exhausted": "fail"},
        "services": [
            {"name": "db", "start": ["/usr/bin/db", "--data", "/var/db"]},
            {
                "name": "api",
                "start": ["/usr/bin/api"],
                "stop": ["/usr/bin/api", "--stop"],
                "probe": {"type": "http", "url": "http://127.0.0.1:8080/health"},
                "depends_on": ["db"],
            },
            {
                "name": "web",
                "start": ["/usr/bin/web"],
                "probe": {"type": "tcp", "port": 443, "period_s": 0.2, "timeout_s": 0.1},
                "depends_on": ["api", "db"],
            },
        ],
    }
    body.update(copy.deepcopy(changes))
    return body


def problems(body: dict[str, Any], name: str = "gw") -> list[tuple[str, str]]:
    """(field, message) for everything wrong with ``body``: pydantic's field errors (with
    the API's ``body.`` prefix) or, when those pass, the group rules."""
    try:
        spec = ServiceGroupSpec.model_validate(body)
    except ValidationError as exc:
        return [(".".join(["body", *map(str, e["loc"])]), e["msg"]) for e in exc.errors()]
    return [(p.field, p.message) for p in logic.check_group(name, spec)]


def only(body: dict[str, Any], field: str, *words: str) -> None:
    found = problems(body)
    assert [f for f, _ in found] == [field], found
    for word in words:
        assert word in found[0][1], found


def test_a_valid_group_is_accepted_with_its_start_order_and_slots():
    spec = ServiceGroupSpec.model_validate(group())
    assert logic.check_group("gw", spec) == []
    assert logic.start_order(spec.services) == ["db", "api", "web"]
    assert logic.slots(spec) == ["active"]
    npm = ServiceGroupSpec.model_validate(
        group(
            redundancy={"model": "n-plus-m", "active": 2, "standby": 1},
            members={"hosts": ["w-0", "w-1", "w-2"]},
            preferred=[],
        )
    )
    assert logic.check_group("gw", npm) == [] and logic.slots(npm) == ["active-0", "active-1"]
    every = ServiceGroupSpec.model_validate(
        group(redundancy={"model": "n"}, members={"selector": {"role": "edge"}})
    )
    assert logic.check_group("gw", every) == [] and logic.slots(every) == []


def test_start_order_follows_dependencies_not_declaration():
    spec = ServiceGroupSpec.model_validate(
        group(
            services=[
                {"name": "c", "start": ["c"], "depends_on": ["b"]},
                {"name": "b", "start": ["b"], "depends_on": ["a"]},
                {"name": "a", "start": ["a"]},
                {"name": "d", "start": ["d"]},
            ]
        )
    )
    assert logic.start_order(spec.services) == ["a", "b", "c", "d"]


def test_dependency_cycles_are_named():
    body = group()
    body["services"][0]["depends_on"] = ["web"]  # db -> web -> api -> db
    found = problems(body)
    assert found == [("body.services.0.depends_on", "dependency cycle: db -> web -> api -> db")]
    body = group()
    body["services"][0]["depends_on"] = ["db"]
    only(body, "body.services.0.depends_on", "db -> db")


def test_unknown_and_repeated_dependencies():
    body = group()
    body["services"][1]["depends_on"] = ["db", "cache"]
    only(body, "body.services.1.depends_on", "unknown service 'cache'")
    body = group()
    body["services"][2]["depends_on"] = ["db", "db"]
    only(body, "body.services.2.depends_on", "listed twice")


def test_duplicate_service_names():
    body = group()
    body["services"][2]["name"] = "db"
    body["services"][2]["depends_on"] = []
    only(body, "body.services.2.name", "duplicate service name 'db'")


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        (
            {"members": {"hosts": ["controller-0"]}, "preferred": []},
            "body.members.hosts",
            ("active-standby needs 2",),
        ),
        (
            {
                "redundancy": {"model": "n-plus-m", "active": 2, "standby": 1},
                "members": {"hosts": ["controller-0", "controller-1"]},
            },
            "body.redundancy",
            ("needs 3 member hosts",),
        ),
        (
            {"redundancy": {"model": "n-plus-m", "standby": 1}},
            "body.redundancy.active",
            ("needs 'active'",),
        ),
        (
            {"redundancy": {"model": "active-standby", "active": 2}},
            "body.redundancy.active",
            ("only n-plus-m",),
        ),
        ({"redundancy": {"model": "2n"}}, "body.redundancy.model", ("active-standby",)),
        ({"preferred": ["worker-9"]}, "body.preferred.0", ("not one of members.hosts",)),
        ({"members": {}}, "body.members", ("exactly one of",)),
        (
            {"members": {"hosts": ["controller-0"], "selector": {"a": "b"}}},
            "body.members",
            ("exactly one of",),
        ),
        (
            {"members": {"hosts": ["controller-0", "controller-0"]}},
            "body.members",
            ("listed twice",),
        ),
        ({"members": {"hosts": ["Controller_0"]}}, "body.members.hosts.0", ("pattern",)),
        ({"failure_policy": {"max_restarts": -1}}, "body.failure_policy.max_restarts", ()),
        ({"failure_policy": {"window_s": 0}}, "body.failure_policy.window_s", ()),
        (
            {"failure_policy": {"on_exhausted": "explode"}},
            "body.failure_policy.on_exhausted",
            ("degrade",),
        ),
        ({"services": []}, "body.services", ()),
        ({"name": "other"}, "body.name", ("differs from the name in the path",)),
    ],
)
def test_impossible_redundancy_and_bad_members_and_policy(changes, field, words):
    only(group(**changes), field, *words)


@pytest.mark.parametrize(
    ("service", "field", "words"),
    [
        ({"start": []}, "body.services.0.start", ("at least 1",)),
        ({"start": "/usr/bin/db --data"}, "body.services.0.start", ("list",)),
        ({"start": ["/usr/bin/db --data /var/db"]}, "body.services.0.start", ("whitespace",)),
        ({"start": [" "]}, "body.services.0.start", ("empty",)),
        ({"start": ["db", "a\x00b"]}, "body.services.0.start", ("NUL",)),
        ({"stop": []}, "body.services.0.stop", ()),
        ({"probe": {"type": "ping"}}, "body.services.0.probe", ("ping", "process")),
        ({"probe": {"type": "http"}}, "body.services.0.probe.http.url", ("required",)),
        ({"probe": {"type": "http", "url": "ftp://x"}}, "body.services.0.probe.http.url", ()),
        ({"probe": {"type": "tcp", "port": 0}}, "body.services.0.probe.tcp.port", ()),
        ({"probe": {"type": "script", "argv": []}}, "body.services.0.probe.script.argv", ()),
        (
            {"probe": {"type": "process", "period_s": 1, "timeout_s": 2}},
            "body.services.0.probe.process",
            ("exceeds period_s",),
        ),
        ({"name": "Bad Name"}, "body.services.0.name", ("pattern",)),
        ({"restart": "always"}, "body.services.0.restart", ("not permitted",)),
    ],
)
def test_bad_commands_and_probes_name_their_field(service, field, words):
    body = group()
    body["services"][0].update(service)
    found = problems(body)
    assert field in [f for f, _ in found], found
    message = dict(found)[field]
    for word in words:
        assert word in message, found
