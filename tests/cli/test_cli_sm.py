"""``roost sm-*``, run as real processes against a real service service (and, for placement,
fake agents on the bus as in tests/service/test_service_placement.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from roost_sim.ports import free_port
from tests.service.placing import (
    active_on,
    hosts_known,
    placed,
    until_state,
)
from tests.service.placing import group as placed_group
from tests.support.cli import RoostRunner
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow


class Roost(RoostRunner):
    """``roost --service-url URL ...``."""

    url_flag = "--service-url"


def declaration(name: str = "gateway", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "redundancy": {"model": "active-standby"},
        "members": {"hosts": ["controller-0", "controller-1"]},
        "preferred": ["controller-1"],
        "failure_policy": {"max_restarts": 2, "window_s": 30, "on_exhausted": "fail"},
        "services": [
            {"name": "db", "start": ["/usr/bin/db", "--data", "/var/db"]},
            {
                "name": "api",
                "start": ["/usr/bin/api"],
                "probe": {"type": "http", "url": "http://127.0.0.1:8080/health"},
                "depends_on": ["db"],
            },
        ],
    }
    body.update(changes)
    return body


def write_yaml(path: Path, body: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return str(path)


async def test_group_add_list_show_delete_and_errors(stack, tmp_path: Path) -> None:
    svc = stack.start("service")
    roost = Roost(svc.url, stack.tokens.admin, tmp_path)
    gateway = write_yaml(tmp_path / "gateway.yaml", declaration())

    added = await roost.ok("sm-group-add", gateway)
    assert added.out.strip() == "Service group gateway created (version 1)."
    again = await roost.js("sm-group-add", gateway)
    assert again["result"] == "unchanged" and again["version"] == 1
    changed = declaration(
        failure_policy={"max_restarts": 5, "window_s": 30, "on_exhausted": "fail"}
    )
    updated = await roost.ok("sm-group-add", write_yaml(tmp_path / "gateway.yaml", changed))
    assert updated.out.strip() == "Service group gateway updated (version 2)."
    # JSON from stdin, the name from --name.
    edge = {k: v for k, v in declaration("edge").items() if k != "name"}
    from_stdin = await roost.js("sm-group-add", "-", "--name", "edge", stdin=json.dumps(edge))
    assert from_stdin["result"] == "created" and from_stdin["name"] == "edge"

    # A dependency cycle: one line naming the field and the cycle, nothing stored.
    cyclic = declaration("loop")
    cyclic["services"][0]["depends_on"] = ["api"]
    cycle_file = write_yaml(tmp_path / "loop.yaml", cyclic)
    refused = await roost("sm-group-add", cycle_file)
    assert refused.code == 1 and refused.out == ""
    line = refused.error_line
    assert line.startswith("roost: error: 422 body.services.") and ".depends_on: " in line, line
    assert "dependency cycle: " in line and "db" in line and "api" in line, line
    as_json = await roost("--format", "json", "sm-group-add", cycle_file)
    assert as_json.code == 1 and as_json.error_line == line
    problem = as_json.json()
    assert problem["status"] == 422 and problem["errors"][0]["field"] in line
    no_name = await roost("sm-group-add", "-", stdin=yaml.safe_dump(edge))
    assert no_name.code == 2 and "--name" in no_name.error_line
    not_yaml = await roost("sm-group-add", "-", stdin="name: [unclosed\n")
    assert not_yaml.code == 2 and "neither JSON nor YAML" in not_yaml.error_line

    listed, table, shown, shown_table = await asyncio.gather(
        roost.js("sm-list"),
        roost.ok("sm-list"),
        roost.js("sm-show", "gateway"),
        roost.ok("sm-show", "gateway"),
    )
    assert [g["name"] for g in listed["service_groups"]] == ["edge", "gateway"]
    gw = listed["service_groups"][1]
    assert gw["redundancy"]["model"] == "active-standby" and gw["version"] == 2
    assert "instances" in gw and "active_host" in gw
    paged = await roost.js("sm-list", ROOST_PAGE_SIZE="1")
    assert [g["name"] for g in paged["service_groups"]] == ["edge", "gateway"]
    assert [g["name"] for g in (await roost.js("sm-list", "--limit", "1"))["service_groups"]] == [
        "edge"
    ]
    for text in ("Name", "Active Host", "edge", "gateway", "active-standby"):
        assert text in table.out
    assert shown["start_order"] == ["db", "api"] and shown["failure_policy"]["max_restarts"] == 5
    assert [x["slot"] for x in shown["leases"]] == ["active"]
    assert isinstance(shown["instances"], list)
    for text in (
        "controller-0, controller-1",
        "restart up to 5 times within 30.0 s, then fail over (on exhausted: fail)",
        "Services (start order)",
        "http http://127.0.0.1:8080/health",
        "Instances",
        "Leases",
    ):
        assert text in shown_table.out, shown_table.out

    unknown = await roost("sm-show", "nope")
    assert unknown.code == 5 and unknown.out == ""
    assert unknown.error_line.startswith("roost: error: 404 ") and "nope" in unknown.error_line

    deleted = await roost.ok("sm-group-delete", "edge")
    assert deleted.out.strip() == "Service group edge deleted."
    again_deleted = await roost("sm-group-delete", "edge")
    assert again_deleted.code == 5 and "edge" in again_deleted.error_line
    assert await roost.js("sm-group-delete", "gateway") == {"deleted": "gateway"}
    assert (await roost.js("sm-list")) == {"service_groups": []}

    reader = Roost(svc.url, stack.tokens.reader, tmp_path)
    forbidden = await reader("sm-group-add", gateway)
    assert forbidden.code == 4 and "admin token" in forbidden.error_line

    down = Roost(f"http://127.0.0.1:{free_port()}", stack.tokens.admin, tmp_path)
    unreachable = await down("sm-list")
    assert unreachable.code == 3 and unreachable.out == ""
    assert unreachable.error_line.startswith("roost: error: cannot reach the service service at ")


async def _route_exists(http: httpx.AsyncClient, path: str, body: Any = None) -> bool:
    """False while the endpoint is not built: 405, or the router's own 404 (not a problem
    about the group or host)."""
    r = await http.post(path, json=body)
    if r.status_code == 405:
        return False
    return not (r.status_code == 404 and r.json().get("detail") == "Not Found")


async def test_placed_group_list_show_swact_and_actions(stack, tmp_path: Path) -> None:
    svc, _, agents = await placed(stack)
    roost = Roost(svc.url, stack.tokens.admin, tmp_path)
    async with svc.client(stack.tokens.admin) as http:
        await eventually(lambda: hosts_known(http), timeout=10, what="hosts learnt")
        path = write_yaml(tmp_path / "gw.yaml", {"name": "gw", **placed_group()})
        assert (await roost.ok("sm-group-add", path)).out.startswith("Service group gw created")
        await until_state(http, "active")

        listed, table, shown, shown_table = await asyncio.gather(
            roost.js("sm-list"),
            roost.ok("sm-list"),
            roost.js("sm-show", "gw"),
            roost.ok("sm-show", "gw"),
        )
        [gw] = listed["service_groups"]
        assert gw["state"] == "active" and gw["active_host"] == "controller-1"
        assert {(i["host"], i["service"], i["state"]) for i in gw["instances"]} == {
            ("controller-1", "db", "enabled-active"),
            ("controller-1", "api", "enabled-active"),
            ("controller-0", "db", "enabled-standby"),
            ("controller-0", "api", "enabled-standby"),
        }
        assert "controller-1: enabled-active" in table.out
        assert "controller-0: enabled-standby" in table.out
        [lease] = shown["leases"]
        assert lease["holder"] == "controller-1" and lease["held"] is True
        tokens = {i["token"] for i in shown["instances"] if i["role"] == "active"}
        assert tokens == {lease["token"]}
        assert shown["start_order"] == ["db", "api"]
        for text in ("enabled-active", "enabled-standby", "controller-1", "yes"):
            assert text in shown_table.out

        swact = await roost.ok("sm-swact", "gw")
        assert swact.out.strip() == "Service group gw: active host is now controller-0."
        await eventually(lambda: active_on(http, "controller-0"), timeout=10, what="swact")
        await until_state(http, "active")

        # Without a healthy standby: one line with the service's reason.
        await agents["controller-1"].report("gw.db.controller-1", "failed", "restarts exhausted")
        await until_state(http, "degraded")
        refused = await roost("sm-swact", "gw")
        assert refused.code == 1 and refused.out == ""
        assert refused.error_line.startswith("roost: error: 409 ")
        assert "no healthy standby" in refused.error_line

        # Plain service name → its group; ambiguous names and unknown ones are refused.
        other = write_yaml(tmp_path / "other.yaml", declaration("other"))
        await roost.ok("sm-group-add", other)
        ambiguous = await roost("sm-restart", "db", "--host", "controller-0")
        assert ambiguous.code == 2 and "gw, other" in ambiguous.error_line
        missing = await roost("sm-restart", "nosuch", "--host", "controller-0")
        assert missing.code == 5 and "nosuch" in missing.error_line
        clash = await roost("sm-restart", "gw.db", "--group", "other", "--host", "controller-0")
        assert clash.code == 2 and "--group" in clash.error_line
        await roost.ok("sm-group-delete", "other")

        unknown_group = await roost("sm-swact", "nope")
        assert unknown_group.code == 5 and "nope" in unknown_group.error_line


async def test_restart_lock_and_enable(stack, tmp_path: Path) -> None:
    """The endpoints being built in the service service: exercised once they answer."""
    svc, _, _ = await placed(stack)
    roost = Roost(svc.url, stack.tokens.admin, tmp_path)
    async with svc.client(stack.tokens.admin) as http:
        restart_route = await _route_exists(
            http, "/v1/service-groups/nosuch/restart", {"service": "db", "host": "controller-0"}
        )
        lock_route = await _route_exists(
            http, "/v1/service-groups/nosuch/members/controller-0/lock"
        )
        disable_route = await _route_exists(http, "/v1/service-groups/nosuch/disable")
        if not (restart_route or lock_route or disable_route):
            pytest.skip("restart, lock/unlock and disable/enable are not built yet")
        await eventually(lambda: hosts_known(http), timeout=10, what="hosts learnt")
        path = write_yaml(tmp_path / "gw.yaml", {"name": "gw", **placed_group()})
        await roost.ok("sm-group-add", path)
        await until_state(http, "active")

        if restart_route:
            restarted = await roost.js("sm-restart", "api", "--host", "controller-0")
            assert (restarted["service"], restarted["host"]) == ("api", "controller-0")
            text = await roost.ok("sm-restart", "gw.api", "--host", "controller-0")
            assert text.out.strip() == "Restart of gw.api on controller-0 requested."
            bad_host = await roost("sm-restart", "gw.api", "--host", "worker-99")
            assert bad_host.code != 0 and "worker-99" in bad_host.error_line

        if lock_route:
            locked = await roost.js("sm-lock", "gw", "controller-0")
            assert locked["name"] == "gw"

            async def left(host: str) -> bool:
                shown = await roost.js("sm-show", "gw")
                return all(i["role"] is None for i in shown["instances"] if i["host"] == host)

            await eventually(lambda: left("controller-0"), timeout=10, what="member locked")
            unlocked = await roost.ok("sm-unlock", "gw", "controller-0")
            assert unlocked.out.startswith("controller-0 unlocked in service group gw")
            stranger = await roost("sm-lock", "gw", "worker-9")
            assert stranger.code == 1 and stranger.out == ""
            line = stranger.error_line
            assert line.startswith("roost: error: 422 ") and "worker-9" in line, line
            unknown = await roost("sm-lock", "nope", "controller-0")
            assert unknown.code == 5 and "nope" in unknown.error_line

        if disable_route:
            disabled = await roost.js("sm-disable", "gw")
            assert disabled["name"] == "gw"

            async def state_is(state: str) -> bool:
                [group] = (await roost.js("sm-list"))["service_groups"]
                return group["state"] == state

            await eventually(lambda: state_is("disabled"), timeout=10, what="group disabled")
            enabled = await roost.ok("sm-enable", "gw")
            assert enabled.out.startswith("Service group gw enabled (state: ")
            unknown = await roost("sm-disable", "nope")
            assert unknown.code == 5 and "nope" in unknown.error_line

    if not (restart_route and lock_route and disable_route):
        pytest.skip(
            "not built yet in the service service: "
            + ", ".join(
                name
                for name, there in (
                    ("restart", restart_route),
                    ("lock/unlock", lock_route),
                    ("disable/enable", disable_route),
                )
                if not there
            )
        )
