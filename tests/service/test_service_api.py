"""The service service as a real process: service groups through the API (JSON and YAML),
refusals naming their fields, roles, paging, leases, and ``service.group.*`` on the bus."""

from __future__ import annotations

import yaml

from roost_service.lease import INDEXES, LeaseStore
from roost_shared.db import Database
from tests.service.test_service_logic import group
from tests.support.events import Listener
from tests.support.problems import problem
from tests.support.waiting import eventually


async def test_groups_crud_events_and_roles(stack):
    svc = stack.start("service")
    bus = await stack.bus()
    events = await Listener.on(bus, "service.group.*")
    async with svc.client(stack.tokens.admin) as http, svc.client(stack.tokens.reader) as ro:
        r = await http.put("/v1/service-groups/gateway", json=group())
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["name"] == "gateway" and created["state"] == "unplaced"
        assert created["start_order"] == ["db", "api", "web"] and created["slots"] == ["active"]
        assert created["version"] == 1
        assert created["services"][1]["probe"]["url"] == "http://127.0.0.1:8080/health"

        # Readers read; only admins change.
        # The controller may have placed it meanwhile (here: failed, no hosts known).
        placed = {"state", "state_reason"}
        shown = (await ro.get("/v1/service-groups/gateway")).json()
        assert {k: v for k, v in shown.items() if k not in placed} == {
            k: v for k, v in created.items() if k not in placed
        }
        assert (await ro.put("/v1/service-groups/x", json=group())).status_code == 403
        assert (await ro.delete("/v1/service-groups/gateway")).status_code == 403
        async with svc.client(None) as anon:
            assert (await anon.get("/v1/service-groups")).status_code == 401

        # The same declaration again changes nothing; a different one is an update.
        r = await http.put("/v1/service-groups/gateway", json=group())
        assert r.status_code == 200 and r.json()["version"] == 1
        changed = group(failure_policy={"max_restarts": 5})
        r = await http.put("/v1/service-groups/gateway", json=changed)
        assert r.status_code == 200, r.text
        updated = r.json()
        assert updated["version"] == 2 and updated["uuid"] == created["uuid"]
        assert updated["failure_policy"]["max_restarts"] == 5

        # YAML, as `sm-group-add FILE` will send it.
        doc = group(
            name="edge",
            redundancy={"model": "n-plus-m", "active": 2, "standby": 1},
            members={"hosts": ["worker-0", "worker-1", "worker-2"]},
            preferred=["worker-1"],
        )
        r = await http.put(
            "/v1/service-groups/edge",
            content=yaml.safe_dump(doc),
            headers={"Content-Type": "application/yaml"},
        )
        assert r.status_code == 201, r.text
        assert r.json()["slots"] == ["active-0", "active-1"]

        # Paging by name.
        for name in ("a-1", "a-2", "a-3"):
            body = group(redundancy={"model": "n"}, members={"selector": {"zone": name}})
            body["preferred"] = []
            assert (await http.put(f"/v1/service-groups/{name}", json=body)).status_code == 201
        first = (await ro.get("/v1/service-groups", params={"limit": 2})).json()
        assert [g["name"] for g in first["service_groups"]] == ["a-1", "a-2"]
        rest = (await ro.get(first["next"])).json()
        assert [g["name"] for g in rest["service_groups"]] == ["a-3", "edge"]
        last = (await ro.get(rest["next"])).json()
        assert [g["name"] for g in last["service_groups"]] == ["gateway"]
        assert last["next"] is None

        # Leases: never granted yet, read-only view.
        leases = (await ro.get("/v1/service-groups/edge/leases")).json()["leases"]
        assert [(x["slot"], x["holder"], x["token"], x["held"]) for x in leases] == [
            ("active-0", None, 0, False),
            ("active-1", None, 0, False),
        ]

        r = await http.delete("/v1/service-groups/gateway")
        assert r.status_code == 204
        problem(await ro.get("/v1/service-groups/gateway"), 404, "path.name")
        problem(await http.delete("/v1/service-groups/gateway"), 404, "path.name")
        problem(await ro.get("/v1/service-groups/gateway/leases"), 404, "path.name")

    declarations = ("service.group.created", "service.group.updated", "service.group.deleted")

    def declared() -> list[dict]:
        # service.group.changed (state transitions of the placed groups) arrive too.
        return [e for e in events.got if e["type"] in declarations]

    async def all_events():
        return len(declared()) >= 7 and declared()

    await eventually(all_events, what="7 service.group declaration events")
    kinds = [(e["type"], e["data"]["name"], e["data"]["version"]) for e in declared()]
    gateway = [k for k in kinds if k[1] == "gateway"]
    assert gateway == [
        ("service.group.created", "gateway", 1),
        ("service.group.updated", "gateway", 2),
        ("service.group.deleted", "gateway", 2),
    ]
    assert len(events.of("service.group.created")) == 5
    edge = next(e["data"] for e in declared() if e["data"]["name"] == "edge")
    assert edge["redundancy"] == "n-plus-m" and edge["active"] == 2 and edge["standby"] == 1
    assert edge["member_hosts"] == ["worker-0", "worker-1", "worker-2"]
    assert edge["services"] == ["db", "api", "web"] and edge["state"] == "unplaced"


async def test_bad_declarations_are_refused_naming_the_field(stack):
    svc = stack.start("service")
    async with svc.client(stack.tokens.admin) as http:
        cyclic = group()
        cyclic["services"][0]["depends_on"] = ["web"]
        body = problem(
            await http.put("/v1/service-groups/gw", json=cyclic), 422, "body.services.0.depends_on"
        )
        assert "dependency cycle: db -> web -> api -> db" in body["detail"]
        assert body["error_message"]["faultstring"] == body["detail"]

        # Several problems at once: each named.
        bad = group(members={"hosts": ["controller-0"]}, preferred=["worker-9"])
        bad["services"][1]["depends_on"] = ["cache"]
        body = problem(await http.put("/v1/service-groups/gw", json=bad), 422, "body.members.hosts")
        fields = {e["field"] for e in body["errors"]}
        assert fields == {"body.members.hosts", "body.preferred.0", "body.services.1.depends_on"}

        too_few = group(
            redundancy={"model": "n-plus-m", "active": 2, "standby": 0},
            members={"hosts": ["worker-0"]},
            preferred=[],
        )
        body = problem(
            await http.put("/v1/service-groups/gw", json=too_few), 422, "body.redundancy"
        )
        assert "needs 2 member hosts" in body["detail"]

        shell = group()
        shell["services"][0]["start"] = ["/usr/bin/db --data /var/db"]
        problem(await http.put("/v1/service-groups/gw", json=shell), 422, "body.services.0.start")
        probe = group()
        probe["services"][0]["probe"] = {"type": "ping"}
        body = problem(
            await http.put("/v1/service-groups/gw", json=probe), 422, "body.services.0.probe"
        )
        assert "ping" in body["detail"]

        # YAML: the same rules and field names; broken YAML and non-mappings are refused too.
        yaml_headers = {"Content-Type": "application/yaml"}
        r = await http.put(
            "/v1/service-groups/gw", content=yaml.safe_dump(cyclic), headers=yaml_headers
        )
        problem(r, 422, "body.services.0.depends_on")
        r = await http.put("/v1/service-groups/gw", content="a: [1, 2", headers=yaml_headers)
        problem(r, 422, "body")
        r = await http.put("/v1/service-groups/gw", content="- 1\n- 2\n", headers=yaml_headers)
        problem(r, 422, "body")
        r = await http.put(
            "/v1/service-groups/gw", content="x", headers={"Content-Type": "text/plain"}
        )
        problem(r, 422, "body")
        r = await http.put("/v1/service-groups/Bad_Name", json=group())
        problem(r, 422, "path.name")
        r = await http.put("/v1/service-groups/gw", json=group(name="other"))
        problem(r, 422, "body.name")
        # Nothing was stored.
        assert (await http.get("/v1/service-groups")).json()["service_groups"] == []


async def test_member_hosts_are_checked_against_the_config_service(stack):
    config = stack.start("config")
    svc = stack.start(
        "service",
        ROOST_CONFIG_SERVICE_URL=config.url,
        ROOST_CONFIG_SERVICE_TOKEN=stack.tokens.peers["service"],
    )
    async with config.client(stack.tokens.admin) as cfg:
        for i, name in enumerate(("controller-0", "controller-1")):
            body = {
                "hostname": name,
                "personality": "controller",
                "mgmt_mac": f"02:00:00:00:10:0{i}",
            }
            assert (await cfg.post("/v1/hosts", json=body)).status_code == 201
    async with svc.client(stack.tokens.admin) as http:
        r = await http.put("/v1/service-groups/gw", json=group())
        assert r.status_code == 201, r.text
        unknown = group(members={"hosts": ["controller-0", "worker-7"]})
        body = problem(
            await http.put("/v1/service-groups/gw", json=unknown), 422, "body.members.hosts.1"
        )
        assert "unknown host 'worker-7'" in body["detail"]


async def test_leases_endpoint_shows_holders_and_tokens(stack):
    svc = stack.start("service")
    async with svc.client(stack.tokens.admin) as http:
        assert (await http.put("/v1/service-groups/gw", json=group())).status_code == 201
    # Leases are granted by the service's own logic (later: placement); write one directly.
    db = Database(stack.mongo_url, svc.env["ROOST_DATABASE"])
    await db.connect(10)
    await db.ensure_indexes(INDEXES)
    try:
        lease = await LeaseStore(db).acquire("gw", "active", "controller-0", ttl_s=60)
        assert lease is not None
    finally:
        await db.close()
    async with svc.client(stack.tokens.reader) as ro:
        leases = (await ro.get("/v1/service-groups/gw/leases")).json()["leases"]
        assert len(leases) == 1
        assert leases[0]["holder"] == "controller-0" and leases[0]["token"] == 1
        assert leases[0]["held"] is True and leases[0]["expires_at"]
