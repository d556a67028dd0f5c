"""The strategy API as a real process (with a real host service, no hosts): planning, the
state rules of apply/abort/delete, refusals naming their field, and progress on the bus."""

from __future__ import annotations

from typing import Any

from tests.support.events import Listener
from tests.support.problems import problem
from tests.support.releases import release_archive
from tests.support.waiting import eventually


async def test_strategy_lifecycle_and_refusals(stack, tmp_path):
    host = stack.start("host")
    sw = stack.start(
        "software",
        ROOST_ALLOW_UNSIGNED_RELEASES="true",
        ROOST_HOST_URL=host.url,
        ROOST_PEER_TOKEN=stack.tokens.peers["software"],
    )
    bus = await stack.bus()
    progress = await Listener.on(bus, "software.strategy.changed")
    async with sw.client(stack.tokens.admin) as http, sw.client(stack.tokens.reader) as ro:
        # Nothing yet: a readable 404; unknown release, bad options: refused, nothing created.
        problem(await http.get("/v1/strategy"), 404)
        problem(await http.post("/v1/strategy", json={"release": "nope-1.0"}), 404)
        archive = release_archive(tmp_path / "r", "roost-1.1.0", "1.1.0")
        r = await http.post("/v1/releases", content=archive)
        assert r.status_code == 201, r.text
        bad = {"release": "roost-1.1.0", "max_parallel_worker_hosts": 1}
        problem(await http.post("/v1/strategy", json=bad), 422, "body.max_parallel_worker_hosts")
        bad = {"release": "roost-1.1.0", "worker_apply_type": "sideways"}
        problem(await http.post("/v1/strategy", json=bad), 422, "body.worker_apply_type")
        problem(await http.get("/v1/strategy"), 404)

        # Readers read, only admins plan or apply.
        assert (await ro.post("/v1/strategy", json={"release": "roost-1.1.0"})).status_code == 403

        r = await http.post("/v1/strategy", json={"release": "roost-1.1.0"})
        assert r.status_code == 201, r.text
        doc = r.json()
        assert doc["state"] == "ready-to-apply"
        assert [s["name"] for s in doc["stages"]] == ["deploy-start", "deploy-complete"]
        assert doc["steps_done"] == 0 and doc["steps_total"] == 3
        assert (await ro.get("/v1/strategy")).json()["uuid"] == doc["uuid"]

        # One at a time; abort only while applying.
        again = problem(await http.post("/v1/strategy", json={"release": "roost-1.1.0"}), 409)
        assert "exists (ready-to-apply)" in again["detail"]
        problem(await http.post("/v1/strategy/abort"), 409)

        # Apply: no hosts to update here, so it starts and completes the deployment.
        assert (await http.post("/v1/strategy/apply")).status_code == 202

        async def applied() -> dict[str, Any] | None:
            d = (await http.get("/v1/strategy")).json()
            return d if d["state"] in ("applied", "apply-failed") else None

        done = await eventually(applied, timeout=20, what="the strategy applied")
        assert done["state"] == "applied", done["reason"]
        assert done["steps_done"] == done["steps_total"] == 3
        problem(await http.post("/v1/strategy/apply"), 409)
        seen = await progress.wait_for(
            "software.strategy.changed applied", type="software.strategy.changed", state="applied"
        )
        assert seen["data"]["steps_done"] == 3

        # The release is being deployed now: a second strategy for it is possible only after
        # this one is deleted.
        assert (await http.delete("/v1/strategy")).status_code == 204
        problem(await http.get("/v1/strategy"), 404)
