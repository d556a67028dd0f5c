"""Two replicas of the service service on one database: operator actions sent to either take
effect once, through the leader only (``roost_service/commands.py``), and the group keeps one
active when the leader replica is killed.

The site test runs the watchers of :mod:`tests.support.sm` (the group's processes every 5 ms,
the API every ~20 ms) and fails if either ever saw two actives.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_replicas import leading, replicas, the_leader
from tests.support.problems import problem
from tests.support.sm import GROUP, group_state, open_sm
from tests.support.stack import ServiceUnderTest
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

#: A leader takeover (ttl + renew, ~2 s) well inside the activity lease (4 s, agents step down
#: 0.5 s before it): the active keeps running while the replicas change hands.
FAST_LEADER = {"ROOST_LEADER_TTL_S": "1.5", "ROOST_LEADER_RENEW_S": "0.5"}


def second_replica(stack: Any, first: ServiceUnderTest) -> ServiceUnderTest:
    """Another process of ``first``'s service on its database, with the same settings (the same
    service-link port: only the leader binds it)."""
    env = {k: v for k, v in first.env.items() if k not in ("ROOST_DATABASE", "ROOST_STATE_DIR")}
    return stack.start("service", database=first.env["ROOST_DATABASE"], replica=1, **env)


async def test_actions_through_the_standby_replica_run_once_on_the_leader_and_survive_its_death(
    stack, tmp_path: Path
) -> None:
    # An activity lease of 8 s: the takeover (~2 s) leaves the active's agent grants in time
    # even on a loaded machine, so the active must not move at all.
    async with open_sm(stack, tmp_path, ROOST_ACTIVITY_TTL_S="8", **FAST_LEADER) as s:
        group = [s.site.service, second_replica(stack, s.site.service)]
        leader = await the_leader(group)
        standby = next(r for r in group if r is not leader)
        before = s.watch.active()[0]
        assert before.host == "worker-0"
        async with standby.client(s.site.token) as http:
            # A swact sent to the replica that does not lead: one switch, token + 1.
            since = time.monotonic()
            r = await http.post(f"/v1/service-groups/{GROUP}/swact")
            asked = time.monotonic() - since
            assert r.status_code == 200, r.text
            assert r.json()["active_host"] == "worker-1", r.text
            print(f"\nswact through the standby replica answered in {asked * 1000:.0f} ms")
            new = await s.active_on("worker-1", token_above=before.token)
            assert new.token == before.token + 1
            await eventually(lambda: group_state(s, "active"), timeout=20, what="standby back")
            assert [h for h in s.watch.switches(since) if h] == ["worker-1"], s.watch.history
            (lease,) = (await http.get(f"/v1/service-groups/{GROUP}/leases")).json()["leases"]
            assert (lease["holder"], lease["token"]) == ("worker-1", before.token + 1)

            # The leader's refusals come back through the standby as they are.
            r = await http.post(f"/v1/service-groups/{GROUP}/members/worker-7/lock")
            problem(r, 422, "path.host")
            r = await http.post(f"/v1/service-groups/{GROUP}/members/worker-0/lock")
            assert r.status_code == 200, r.text
            assert r.json()["locked_members"] == ["worker-0"]
            r = await http.post(f"/v1/service-groups/{GROUP}/swact")
            assert r.status_code == 409, r.text
            assert "no healthy standby" in r.json()["detail"]
            r = await http.post(f"/v1/service-groups/{GROUP}/members/worker-0/unlock")
            assert r.status_code == 200, r.text
            await eventually(lambda: group_state(s, "active"), timeout=20, what="unlocked back")

        # The leader replica dies (SIGKILL): the other takes over, the group keeps its active
        # (the watchers fail the test on any moment with two).
        killed_at = time.monotonic()
        leader.kill()
        await eventually(lambda: leading(standby), timeout=15, what="the standby replica leads")
        async with standby.client(s.site.token) as http:
            s.http = http  # the API watcher and the helpers ask the survivor from now on
            await eventually(lambda: group_state(s, "active"), timeout=20, what="group active")
            active = s.watch.active()
            assert [p.host for p in active] == ["worker-1"], active
            assert s.watch.switches(killed_at) == [], s.watch.history  # not even a gap
            since = time.monotonic()
            r = await http.post(f"/v1/service-groups/{GROUP}/swact")
            assert r.status_code == 200, r.text
            asked = time.monotonic() - since
            print(f"swact through the new leader answered in {asked * 1000:.0f} ms")
            back = await s.active_on("worker-0", token_above=active[0].token)
            assert back.token == active[0].token + 1
            await eventually(lambda: group_state(s, "active"), timeout=20, what="standby back")
            assert [h for h in s.watch.switches(since) if h] == ["worker-0"], s.watch.history


def _group(hosts: list[str]) -> dict[str, Any]:
    return {
        "redundancy": {"model": "active-standby"},
        "members": {"hosts": hosts},
        "services": [{"name": "web", "start": ["/bin/true"]}],
    }


async def test_an_action_no_leader_takes_is_refused_with_503_and_never_runs_later(
    stack,
) -> None:
    group = replicas(stack, "service", ROOST_ACTION_WAIT_S="1", **FAST_LEADER)
    leader = await the_leader(group)
    standby = next(r for r in group if r is not leader)
    async with standby.client(stack.tokens.admin) as http:
        r = await http.put("/v1/service-groups/g", json=_group(["worker-0", "worker-1"]))
        assert r.status_code == 201, r.text
        # Refusals and results of the leader, asked through the standby.
        r = await http.post("/v1/service-groups/g/restart", json={"service": "db", "host": "x"})
        problem(r, 422, "body.service")
        r = await http.post("/v1/service-groups/nope/swact")
        problem(r, 404)
        r = await http.post("/v1/service-groups/g/disable")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "disabled"
        r = await http.post("/v1/service-groups/g/enable")
        assert r.status_code == 200, r.text
        assert r.json()["state"] != "disabled"

        # The leader freezes: nobody runs the action within its wait; 503, nothing done.
        os.kill(leader.proc.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            started = time.monotonic()
            r = await http.post("/v1/service-groups/g/disable")
            problem(r, 503)
            assert r.headers["retry-after"] == "3"
            assert "nothing was done" in r.json()["detail"]
            assert time.monotonic() - started < 5
        finally:
            os.kill(leader.proc.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        # Whoever leads next never runs it: a later action runs, the expired one did not.
        await the_leader(group)
        r = await http.post("/v1/service-groups/g/members/worker-1/lock")
        assert r.status_code == 200, r.text
        assert r.json()["locked_members"] == ["worker-1"]
        assert r.json()["state"] != "disabled", r.text
