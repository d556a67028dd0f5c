"""Rolling software updates end to end: the real config, host, fault, service and software
services, a simulated fleet of 1 controller and 4 workers with real agents and IPMI BMCs, an
application group active/standby on worker-0 and worker-1 watched every 5 ms from the kernel.

The release's hooks are real shell scripts: they write the version into each host's state
directory, which the tests read back; a reboot-required release really restarts each agent.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.releases import release_archive
from tests.support.sm import Sm, open_sm
from tests.support.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(420)]

HOSTS = ["controller-0", "worker-0", "worker-1", "worker-2", "worker-3"]
FINAL = ("applied", "apply-failed", "aborted")


async def upload(http: httpx.AsyncClient, archive: bytes) -> dict[str, Any]:
    r = await http.post(
        "/v1/releases", content=archive, headers={"Content-Type": "application/gzip"}
    )
    assert r.status_code == 201, r.text
    return r.json()


async def strategy(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get("/v1/strategy")
    assert r.status_code == 200, r.text
    return r.json()


async def finished(http: httpx.AsyncClient, within: float = 180) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        doc = await strategy(http)
        return doc if doc["state"] in FINAL else None

    return await eventually(done, timeout=within, interval=0.2, what="the strategy to finish")


async def in_stage(http: httpx.AsyncClient, index: int, within: float = 120) -> dict[str, Any]:
    """Wait until the strategy works on stage ``index`` (or later)."""

    async def there() -> dict[str, Any] | None:
        doc = await strategy(http)
        assert doc["state"] not in FINAL, f"the strategy ended {doc['state']}: {doc['reason']}"
        at = doc["current_stage"]
        return doc if at is not None and at >= index else None

    return await eventually(there, timeout=within, interval=0.05, what=f"stage {index}")


def running_version(s: Sm, host: str) -> str | None:
    fleet = s.site.fleet
    sim = next(h for h in fleet.hosts() if h.hostname == host)
    path: Path = fleet.host_dir(sim) / "running-version"
    return path.read_text().strip() if path.exists() else None


async def reported_versions(http: httpx.AsyncClient) -> dict[str, str]:
    r = await http.get("/v1/hosts")
    assert r.status_code == 200, r.text
    return {h["hostname"]: h["running_version"] for h in r.json()["hosts"]}


async def alarms(s: Sm) -> list[dict[str, Any]]:
    async with s.site.client(s.site.fault) as http:
        r = await http.get("/v1/alarms")
        assert r.status_code == 200, r.text
        return r.json()["alarms"]


def no_long_outage(s: Sm, since: float) -> None:
    """The application kept serving: never two actives (the watchers), and no moment without
    an active longer than one swact (asserted < 1 s; a swact here takes ~50-100 ms)."""
    gap = s.watch.longest_gap(since)
    assert gap < 1.0, f"the application was down for {gap:.2f} s"


async def test_serial_rollout_with_reboots_survives_software_and_host_service_restarts(
    stack, tmp_path
):
    async with open_sm(stack, tmp_path, count=5, software=True) as s:
        site = s.site
        async with site.client(site.software) as sw:
            await upload(
                sw,
                release_archive(
                    tmp_path / "r1", "roost-1.1.0", "1.1.0", reboot=True, key=site.release_key
                ),
            )
            r = await sw.post("/v1/strategy", json={"release": "roost-1.1.0"})
            assert r.status_code == 201, r.text
            plan = r.json()
            assert [st["hosts"] for st in plan["stages"]] == [
                [],
                ["controller-0"],
                ["worker-0"],
                ["worker-1"],
                ["worker-2"],
                ["worker-3"],
                [],
            ]
            since = time.monotonic()
            r = await sw.post("/v1/strategy/apply")
            assert r.status_code == 202, r.text

            # A second strategy while this one applies is refused, nothing changed.
            r = await sw.post("/v1/strategy", json={"release": "roost-1.1.0"})
            assert r.status_code == 409 and "exists (applying)" in r.json()["detail"]

            # Kill the software service in the middle of worker-0's stage; start it again.
            await in_stage(sw, 2)
            await asyncio.to_thread(site.software.kill)
        await asyncio.to_thread(site.software.start)
        async with site.client(site.software) as sw:
            # And the host service (its locks, unlocks, states) during worker-2's stage: the
            # step waits for it and runs again.
            await in_stage(sw, 4)
            await asyncio.to_thread(site.host.kill)
            await asyncio.to_thread(site.host.start)
            doc = await finished(sw)
            assert doc["state"] == "applied", doc["reason"]
            versions = await reported_versions(sw)
        assert all(versions[h] == "1.1.0" for h in HOSTS), versions
        assert all(running_version(s, h) == "1.1.0" for h in HOSTS)
        no_long_outage(s, since)
        # Every host is back in service, the group has its active and its standby.
        async with site.client(site.host) as http:
            for h in HOSTS:
                view = (await http.get(f"/v1/hosts/{h}")).json()
                assert (view["administrative"], view["availability"]) == ("unlocked", "available")
        roles = sorted(p.role for p in s.watch.procs())
        assert roles == ["active", "standby"]


async def test_parallel_rollout_abort_then_resume_and_a_failed_install(stack, tmp_path):
    async with open_sm(stack, tmp_path, count=5, software=True) as s:
        site = s.site
        async with site.client(site.software) as sw:
            await upload(
                sw, release_archive(tmp_path / "r1", "roost-1.1.0", "1.1.0", key=site.release_key)
            )
            body = {
                "release": "roost-1.1.0",
                "worker_apply_type": "parallel",
                "max_parallel_worker_hosts": 2,
            }
            r = await sw.post("/v1/strategy", json=body)
            assert r.status_code == 201, r.text
            workers = [st["hosts"] for st in r.json()["stages"] if st["name"] == "workers"]
            assert len(workers) == 2, workers
            for stage in workers:  # never both members of the group at once
                assert not {"worker-0", "worker-1"} <= set(stage)
            since = time.monotonic()
            assert (await sw.post("/v1/strategy/apply")).status_code == 202

            # Abort while the controller is updated: its stage finishes, then it stops.
            await in_stage(sw, 1)
            r = await sw.post("/v1/strategy/abort")
            assert r.status_code == 202, r.text
            doc = await finished(sw)
            assert doc["state"] == "aborted"
            assert doc["stages"][1]["state"] == "done"
            assert all(st["state"] == "initial" for st in doc["stages"][2:])
            versions = await reported_versions(sw)
            assert versions["controller-0"] == "1.1.0" and versions["worker-0"] != "1.1.0"

            # Resume: it finishes the rest.
            assert (await sw.post("/v1/strategy/apply")).status_code == 202
            doc = await finished(sw)
            assert doc["state"] == "applied", doc["reason"]
            assert all(v == "1.1.0" for v in (await reported_versions(sw)).values())
            no_long_outage(s, since)
            assert (await sw.delete("/v1/strategy")).status_code == 204

            # A release whose install fails on worker-2 stops the strategy with the alarm and
            # leaves the fleet consistent: worker-2 locked on the old version, later hosts
            # untouched, earlier ones updated.
            archive = release_archive(
                tmp_path / "r2",
                "roost-1.2.0",
                "1.2.0",
                requires=("roost-1.1.0",),
                fail_on=("worker-2",),
                key=site.release_key,
            )
            await upload(sw, archive)
            r = await sw.post("/v1/strategy", json={"release": "roost-1.2.0"})
            assert r.status_code == 201, r.text
            assert (await sw.post("/v1/strategy/apply")).status_code == 202
            doc = await finished(sw)
            assert doc["state"] == "apply-failed"
            assert "worker-2" in doc["reason"] and "no space left" in doc["reason"]
            versions = await reported_versions(sw)
            assert versions["worker-1"] == "1.2.0" and versions["worker-2"] == "1.1.0"
            assert versions["worker-3"] == "1.1.0"
            assert running_version(s, "worker-2") == "1.1.0"  # its rollback hook ran

            # Without stop-on-failure the failed host is left (locked) and the others go on.
            assert (await sw.delete("/v1/strategy")).status_code == 204
            body = {"release": "roost-1.2.0", "stop_on_failure": False}
            r = await sw.post("/v1/strategy", json=body)
            assert r.status_code == 201, r.text
            assert [st["hosts"] for st in r.json()["stages"][1:-1]] == [["worker-2"], ["worker-3"]]
            assert (await sw.post("/v1/strategy/apply")).status_code == 202
            doc = await finished(sw)
            assert doc["state"] == "apply-failed" and "worker-2" in doc["reason"]
            assert [st["state"] for st in doc["stages"][1:-1]] == ["failed", "done"]
            assert (await reported_versions(sw))["worker-3"] == "1.2.0"

        async def raised() -> bool:
            ids = {(a["alarm_id"], a["entity_instance_id"]) for a in await alarms(s)}
            return ("900.103", "system=roost.strategy=sw-deploy") in ids and any(
                i == "900.021" and "worker-2" in e for i, e in ids
            )

        await eventually(raised, timeout=10, what="alarms 900.103 and 900.021 (worker-2)")
        async with site.client(site.host) as http:
            view = (await http.get("/v1/hosts/worker-2")).json()
            assert view["administrative"] == "locked"
            view = (await http.get("/v1/hosts/worker-3")).json()
            assert view["administrative"] == "unlocked"
