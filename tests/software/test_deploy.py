"""Deploying a release on a real simulated site: the software service with the real host,
fault and config services and real agents that download, verify and install it."""

from __future__ import annotations

import pytest

from roost_shared.catalog import AlarmClear, AlarmSet, Severity
from roost_shared.events import Envelope
from tests.support.events import Listener
from tests.support.releases import build
from tests.support.site import Site, open_site, where
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

GZIP = {"Content-Type": "application/gzip"}
HOOKS_OK = {"install": "echo installing $0", "activate": "echo active", "rollback": "echo back"}


async def upload(site: Site, tmp_path, release_id: str, version: str, **kw) -> dict:
    data = build(tmp_path, release_id, version, site.release_key, **kw)
    async with site.client(site.software) as http:
        r = await http.post("/v1/releases", content=data, headers=GZIP)
        assert r.status_code == 201, r.text
        return r.json()


async def reported(site: Site, hostnames: list[str]) -> None:
    """Every agent has told the software service what it runs (at its start)."""

    async def probe():
        async with site.client(site.software) as http:
            hosts = (await http.get("/v1/hosts")).json()["hosts"]
        return {h["hostname"] for h in hosts} >= set(hostnames)

    await eventually(probe, timeout=30, what="every agent's software report")


async def deploy_state(site: Site, check, what: str, within: float = 60) -> dict:
    async def probe():
        async with site.client(site.software) as http:
            r = await http.get("/v1/deploy")
        return r.json() if r.status_code == 200 and check(r.json()) else None

    return await eventually(probe, timeout=within, what=what, interval=0.1)


def host_of(deployment: dict, hostname: str) -> dict:
    return next(h for h in deployment["hosts"] if h["hostname"] == hostname)


async def lock(site: Site, hostname: str) -> None:
    async with site.client(site.host) as http:
        r = await http.post(f"/v1/hosts/{hostname}/actions", json={"action": "lock"})
        assert r.status_code == 200, r.text
        await where(http, hostname, lambda d: d["administrative"] == "locked", "locked")


async def test_precheck_deploy_a_locked_host_rollback_and_forget(stack, tmp_path):
    async with open_site(stack, tmp_path, 2, software=True) as site:
        events = await Listener.on(await stack.bus(), "software.*.changed")
        await reported(site, ["controller-0", "worker-0"])
        rel = await upload(
            site, tmp_path, "app-1.1.0", "1.1.0", applies_to=["worker"], hooks=HOOKS_OK
        )
        assert rel["state"] == "available"
        async with site.client(site.software) as http, site.client(site.fault) as fault:
            # Every check passes; controller-0 is not a worker: no check is about it.
            r = await http.post("/v1/deploy/precheck", json={"release": "app-1.1.0"})
            assert r.status_code == 200, r.text
            pre = r.json()
            assert pre["ok"] is True, [c for c in pre["checks"] if not c["ok"]]
            names = {(c["check"], c["host"]) for c in pre["checks"]}
            assert names == {
                ("release-state", None),
                ("dependencies", None),
                ("version", None),
                ("alarms", None),
                ("reachable", "worker-0"),
                ("disk", "worker-0"),
            }

            # A management-affecting alarm on the host fails the alarm check, and the start.
            bus = await stack.bus()
            alarm = AlarmSet(
                alarm_id="100.101",
                entity_instance_id="host=worker-0.sensor=cpu",
                severity=Severity.major,
                reason_text="test: too hot",
                mgmt_affecting=True,
            )
            await bus.publish([Envelope.of(alarm, source="test")])

            async def alarm_check_fails():
                r = await http.post("/v1/deploy/precheck", json={"release": "app-1.1.0"})
                checks = {c["check"]: c for c in r.json()["checks"]}
                return r.json() if not checks["alarms"]["ok"] else None

            pre = await eventually(alarm_check_fails, timeout=15, what="the alarm check fails")
            assert pre["ok"] is False
            assert [c["check"] for c in pre["checks"] if not c["ok"]] == ["alarms"]
            assert "100.101 host=worker-0.sensor=cpu" in pre["checks"][3]["reason"]
            r = await http.post("/v1/deploy", json={"release": "app-1.1.0"})
            assert r.status_code == 409, r.text
            assert [e["field"] for e in r.json()["errors"]] == ["precheck.alarms"]
            clear = AlarmClear(alarm_id="100.101", entity_instance_id="host=worker-0.sensor=cpu")
            await bus.publish([Envelope.of(clear, source="test")])

            async def passes():
                r = await http.post("/v1/deploy/precheck", json={"release": "app-1.1.0"})
                return r.json()["ok"]

            await eventually(passes, timeout=15, what="the precheck passes again")

            # Start: the workers only, pending; one deployment at a time.
            r = await http.post("/v1/deploy", json={"release": "app-1.1.0"})
            assert r.status_code == 201, r.text
            dep = r.json()
            assert dep["release"] == "app-1.1.0" and dep["state"] == "deploying"
            assert [(h["hostname"], h["state"]) for h in dep["hosts"]] == [("worker-0", "pending")]
            assert host_of(dep, "worker-0")["running_version"] == "1.0.0"
            assert (await http.get("/v1/releases/app-1.1.0")).json()["state"] == "deploying"
            assert (await http.post("/v1/deploy", json={"release": "app-1.1.0"})).status_code == 409
            assert (await http.delete("/v1/releases/app-1.1.0")).status_code == 409

            # Not in the deployment (a controller); not locked.
            r = await http.post("/v1/deploy/hosts/controller-0")
            assert r.status_code == 422, r.text
            assert "personality controller" in r.json()["detail"]
            r = await http.post("/v1/deploy/hosts/worker-0")
            assert r.status_code == 409, r.text
            assert "lock it first" in r.json()["detail"]

            # Locked: the agent downloads (with its ticket), verifies, runs the hooks.
            await lock(site, "worker-0")
            r = await http.post("/v1/deploy/hosts/worker-0")
            assert r.status_code == 202, r.text
            assert r.json()["state"] == "installing"
            dep = await deploy_state(site, lambda d: d["state"] == "deployed", "deployed")
            w0 = host_of(dep, "worker-0")
            assert w0["state"] == "installed" and w0["running_version"] == "1.1.0", w0
            assert w0["agent_state"] == "installed"
            assert (await http.get("/v1/releases/app-1.1.0")).json()["state"] == "deployed"
            hosts = {h["hostname"]: h for h in (await http.get("/v1/hosts")).json()["hosts"]}
            assert hosts["worker-0"]["running_release"] == "app-1.1.0"
            assert hosts["worker-0"]["running_version"] == "1.1.0"
            assert hosts["controller-0"]["running_version"] == "1.0.0"
            # Installing again is a no-op.
            r = await http.post("/v1/deploy/hosts/worker-0")
            assert r.status_code == 202 and r.json()["state"] == "installed"

            # An older release uploaded now is unavailable; a deployed one cannot be deleted.
            old = await upload(site, tmp_path, "app-1.0.5", "1.0.5", applies_to=["worker"])
            assert old["state"] == "unavailable"
            assert (await http.delete("/v1/releases/app-1.1.0")).status_code == 409

            # Roll worker-0 back: the release is removing until it is back, then pending.
            r = await http.post("/v1/deploy/hosts/worker-0/rollback")
            assert r.status_code == 202, r.text
            dep = await deploy_state(
                site,
                lambda d: host_of(d, "worker-0")["state"] == "pending",
                "worker-0 rolled back",
            )
            assert dep["state"] == "deploying"
            assert host_of(dep, "worker-0")["running_version"] == "1.0.0"
            assert (await http.get("/v1/releases/app-1.1.0")).json()["state"] == "deploying"
            # Started and not finished: not forgotten.
            assert (await http.delete("/v1/deploy")).status_code == 409

            # Again, to the end; then the finished deployment is forgotten.
            r = await http.post("/v1/deploy/hosts/worker-0")
            assert r.status_code == 202, r.text
            await deploy_state(site, lambda d: d["state"] == "deployed", "deployed again")
            assert (await http.delete("/v1/deploy")).status_code == 204
            assert (await http.get("/v1/deploy")).status_code == 404
            assert (await http.get("/v1/releases/app-1.1.0")).json()["state"] == "deployed"
            # No host failed: no 900.021.
            alarms = (await fault.get("/v1/alarms")).json()["alarms"]
            assert not [a for a in alarms if a["alarm_id"] == "900.021"]
        await events.wait_for(
            "removing", type="software.release.changed", id="app-1.1.0", state="removing"
        )
        await events.wait_for(
            "installed", type="software.host.changed", hostname="worker-0", state="installed"
        )


async def test_failed_install_raises_900_021(stack, tmp_path):
    async with open_site(stack, tmp_path, 2, software=True) as site:
        await reported(site, ["controller-0", "worker-0"])
        await upload(
            site,
            tmp_path,
            "bad-1.1.0",
            "1.1.0",
            hooks={"install": "echo 'disk on fire' >&2; exit 3"},
        )
        async with site.client(site.software) as http, site.client(site.fault) as fault:
            r = await http.post("/v1/deploy", json={"release": "bad-1.1.0"})
            assert r.status_code == 201, r.text
            assert {h["hostname"] for h in r.json()["hosts"]} == {"controller-0", "worker-0"}
            await lock(site, "worker-0")
            r = await http.post("/v1/deploy/hosts/worker-0")
            assert r.status_code == 202, r.text
            dep = await deploy_state(
                site, lambda d: host_of(d, "worker-0")["state"] == "failed", "worker-0 failed"
            )
            w0 = host_of(dep, "worker-0")
            assert "disk on fire" in w0["reason"], w0
            assert w0["running_version"] == "1.0.0" and w0["agent_state"] == "failed"
            assert dep["state"] == "deploying"

            async def alarm():
                alarms = (await fault.get("/v1/alarms")).json()["alarms"]
                found = [a for a in alarms if a["alarm_id"] == "900.021"]
                return found[0] if found else None

            raised = await eventually(alarm, timeout=15, what="alarm 900.021")
            assert raised["entity_instance_id"] == "host=worker-0"
            assert raised["severity"] == "major"
            assert "disk on fire" in raised["reason_text"]
            # A failed, started deployment is not forgotten.
            assert (await http.delete("/v1/deploy")).status_code == 409
