"""Two software-service replicas on one database, each with its own disk (issue 9): whatever
one is given, the other serves (releases, archives, download tickets); two deployment starts at
once give one deployment; a strategy whose leader is killed mid-stage is finished by the other.

Agents download from the URL in their install command; here every replica's public URL is the
second replica's, as a Kubernetes Service may route an agent to either: a ticket signed by one
replica is checked by the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from roost_shared.releases import generate_key
from roost_sim.ports import free_port
from roost_software.releases import sign_ticket
from roost_software.tickets import SECRETS, TICKET_KEY_ID
from tests.support.problems import problem
from tests.support.releases import build, release_archive
from tests.support.site import Site, open_site, where
from tests.support.stack import ServiceUnderTest
from tests.support.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(300)]

GZIP = {"Content-Type": "application/gzip"}
HOOKS_OK = {"install": "echo installing $0", "activate": "echo active", "rollback": "echo back"}


def another_replica(
    stack: Any, first: ServiceUnderTest, state_dir: Path, port: int | None = None
) -> ServiceUnderTest:
    """A second process of ``first``'s service on its database, with a disk of its own."""
    svc = ServiceUnderTest(
        first.name,
        {**first.env, "ROOST_STATE_DIR": str(state_dir)},
        stack.workdir / "logs" / f"{first.env['ROOST_DATABASE']}-1.log",
        port=port or free_port(),
    )
    stack.services.append(svc)
    return svc.start()


async def leading(svc: ServiceUnderTest) -> bool:
    try:
        async with svc.client(None) as http:
            r = await http.get("/readyz")
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and bool(r.json()["checks"].get("leader"))


async def test_a_release_uploaded_to_one_replica_is_served_by_the_other(stack, tmp_path):
    pem, public = generate_key()
    db = f"roost_software_{uuid.uuid4().hex[:8]}"
    group = [
        stack.start(
            "software",
            database=db,
            replica=i,
            ROOST_RELEASE_PUBLIC_KEYS=json.dumps([public]),
            ROOST_STATE_DIR=str(tmp_path / f"replica-{i}"),  # no disk in common
        )
        for i in range(2)
    ]
    first, second = group
    # Incompressible: an archive of 3 chunks and a bit.
    archive = build(tmp_path, "rep-1", "1.1.0", pem, files={"blob": os.urandom(3_300_000)})
    assert len(archive) > 3 * 1024 * 1024
    async with first.client(stack.tokens.admin) as http:
        r = await http.post("/v1/releases", content=archive, headers=GZIP)
        assert r.status_code == 201, r.text
    client = AsyncMongoClient(stack.mongo_url)
    try:
        doc = await client[db][SECRETS].find_one({"_id": TICKET_KEY_ID})
    finally:
        await client.close()
    assert doc is not None
    key = bytes(doc["key"])
    expires = int(time.time()) + 600
    ticket = f"{expires}.{sign_ticket(key, 'rep-1', expires)}"
    path = "/v1/releases/rep-1/archive"
    for svc in group:
        async with svc.client(stack.tokens.reader) as ro, svc.client(None) as anon:
            listed = (await ro.get("/v1/releases")).json()["releases"]
            assert [x["id"] for x in listed] == ["rep-1"]
            r = await ro.get(path)
            assert r.status_code == 200, r.text
            assert r.content == archive and r.headers["content-length"] == str(len(archive))
            # The ticket key is the site's, not the process's: one ticket opens both.
            r = await anon.get(path, params={"ticket": ticket})
            assert r.status_code == 200 and r.content == archive
            assert (await anon.get(path, params={"ticket": ticket + "x"})).status_code == 403
    # Neither replica keeps anything on its disk.
    assert not (tmp_path / "replica-0" / "releases").exists()
    # Deleted through the second, gone from the first.
    async with second.client(stack.tokens.admin) as http:
        assert (await http.delete("/v1/releases/rep-1")).status_code == 204
    async with first.client(stack.tokens.reader) as ro:
        problem(await ro.get(path), 404, "path.id")


async def upload(site: Site, svc: ServiceUnderTest, data: bytes) -> dict[str, Any]:
    async with site.client(svc) as http:
        r = await http.post("/v1/releases", content=data, headers=GZIP)
        assert r.status_code == 201, r.text
        return r.json()


async def reported(site: Site, svc: ServiceUnderTest, hostnames: list[str]) -> None:
    async def probe() -> bool:
        async with site.client(svc) as http:
            hosts = (await http.get("/v1/hosts")).json()["hosts"]
        return {h["hostname"] for h in hosts} >= set(hostnames)

    await eventually(probe, timeout=30, what="every agent's software report")


async def test_two_deploy_starts_at_once_make_one_deployment(stack, tmp_path):
    port = free_port()
    env = {"ROOST_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    async with open_site(stack, tmp_path, 2, software=True, software_env=env) as site:
        first = site.software
        second = another_replica(stack, first, tmp_path / "replica-1", port)
        await reported(site, second, ["controller-0", "worker-0"])
        archive = build(
            tmp_path, "app-1.1.0", "1.1.0", site.release_key, applies_to=["worker"], hooks=HOOKS_OK
        )
        await upload(site, second, archive)

        async def start(svc: ServiceUnderTest) -> httpx.Response:
            async with site.client(svc) as http:
                return await http.post("/v1/deploy", json={"release": "app-1.1.0"})

        answers = await asyncio.gather(start(first), start(second))
        assert sorted(r.status_code for r in answers) == [201, 409], [r.text for r in answers]
        loser = next(r for r in answers if r.status_code == 409)
        problem(loser, 409, "body.release")
        won = next(r for r in answers if r.status_code == 201).json()
        for svc in (first, second):
            async with site.client(svc) as http:
                assert (await http.get("/v1/deploy")).json()["uuid"] == won["uuid"]

        # Installed through the first replica: its command's ticket takes worker-0's agent to
        # the second replica (the public URL), which checks it and serves the archive.
        async with site.client(site.host) as http:
            r = await http.post("/v1/hosts/worker-0/actions", json={"action": "lock"})
            assert r.status_code == 200, r.text
            await where(http, "worker-0", lambda d: d["administrative"] == "locked", "locked")
        async with site.client(first) as http:
            r = await http.post("/v1/deploy/hosts/worker-0")
            assert r.status_code == 202, r.text

            async def deployed() -> dict[str, Any] | None:
                doc = (await http.get("/v1/deploy")).json()
                host = next(h for h in doc["hosts"] if h["hostname"] == "worker-0")
                assert host["state"] != "failed", host
                return doc if doc["state"] == "deployed" else None

            doc = await eventually(deployed, timeout=60, interval=0.2, what="deployed")
        assert doc["release"] == "app-1.1.0"


async def test_a_strategy_survives_a_sigkill_of_the_leader_replica(stack, tmp_path):
    port = free_port()
    env = {"ROOST_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    async with open_site(stack, tmp_path, 3, software=True, software_env=env) as site:
        first = site.software
        await eventually(lambda: leading(first), timeout=15, what="the first replica leading")
        second = another_replica(stack, first, tmp_path / "replica-1", port)
        await reported(site, second, ["controller-0", "worker-0", "worker-1"])
        archive = release_archive(tmp_path / "r", "roost-1.1.0", "1.1.0", key=site.release_key)
        await upload(site, second, archive)
        async with site.client(second) as sw:
            body = {"release": "roost-1.1.0", "controller_apply_type": "ignore"}
            r = await sw.post("/v1/strategy", json=body)
            assert r.status_code == 201, r.text
            assert [st["hosts"] for st in r.json()["stages"]] == [
                [],
                ["worker-0"],
                ["worker-1"],
                [],
            ]
            # Applied through the standby: the leader's executor picks it up.
            assert (await sw.post("/v1/strategy/apply")).status_code == 202

            async def in_worker_0() -> dict[str, Any] | None:
                doc = (await sw.get("/v1/strategy")).json()
                assert doc["state"] == "applying", doc
                stage = doc["stages"][1]
                started = any(s["state"] != "initial" for s in stage["steps"])
                return doc if doc["current_stage"] == 1 and started else None

            await eventually(in_worker_0, timeout=60, interval=0.05, what="worker-0's stage")
            assert await leading(first) and not await leading(second)
            await asyncio.to_thread(first.kill)
            await eventually(lambda: leading(second), timeout=15, what="the survivor leading")

            async def finished() -> dict[str, Any] | None:
                doc = (await sw.get("/v1/strategy")).json()
                return doc if doc["state"] in ("applied", "apply-failed", "aborted") else None

            doc = await eventually(finished, timeout=180, interval=0.2, what="strategy done")
            assert doc["state"] == "applied", doc["reason"]
            hosts = (await sw.get("/v1/hosts")).json()["hosts"]
        versions = {h["hostname"]: h["running_version"] for h in hosts}
        assert versions["worker-0"] == versions["worker-1"] == "1.1.0", versions
        async with site.client(site.host) as http:
            for h in ("worker-0", "worker-1"):
                view = (await http.get(f"/v1/hosts/{h}")).json()
                assert (view["administrative"], view["availability"]) == ("unlocked", "available")
