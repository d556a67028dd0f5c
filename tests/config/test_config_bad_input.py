"""Bad input is refused with problem+json naming the field and nothing is stored; readers cannot
change anything; deleting an unlocked host is refused when the host service says so."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from roost_sim.ports import free_port
from tests.config.helpers import all_hosts, new_mac, tap_events
from tests.support.waiting import eventually


def _problem(r, status: int, field: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["errors"][0]["field"] == field, body
    assert field.removeprefix("body.") in body["detail"] or field in body["detail"], body
    return body


async def test_bad_input_names_the_field_and_stores_nothing(stack, start_config):
    config = start_config()
    bus = await stack.bus()
    events = await tap_events(bus, "config.#")
    mac = new_mac()
    good = {"hostname": "worker-1", "personality": "worker", "mgmt_mac": mac}
    async with config.client(stack.tokens.admin) as http:
        r = await http.post("/v1/hosts", json=good)
        assert r.status_code == 201
        worker = r.json()
        await eventually(lambda: _count(events, "config.host.added", 1), what="one added")

        # Invalid values: 422 naming the field.
        for field, value in (
            ("hostname", "Worker_1"),
            ("hostname", "a" * 64),
            ("personality", "router"),
            ("mgmt_mac", "52:54:00"),
            ("mgmt_ip", "300.1.1.1"),
            ("subfunctions", ["gpu"]),
        ):
            body = {**good, "hostname": "other", "mgmt_mac": new_mac(), field: value}
            _problem(
                await http.post("/v1/hosts", json=body),
                422,
                f"body.{field}" + (".0" if field == "subfunctions" else ""),
            )
        for missing in ("hostname", "personality", "mgmt_mac"):
            body = {k: v for k, v in good.items() if k != missing}
            _problem(await http.post("/v1/hosts", json=body), 422, f"body.{missing}")

        # Duplicates: 409 naming the field (a MAC in another spelling is the same MAC).
        dup_name = {**good, "mgmt_mac": new_mac()}
        body = _problem(await http.post("/v1/hosts", json=dup_name), 409, "body.hostname")
        assert body["error_message"]["faultstring"] == body["detail"]
        dup_mac = {**good, "hostname": "worker-2", "mgmt_mac": mac.upper().replace(":", "-")}
        _problem(await http.post("/v1/hosts", json=dup_mac), 409, "body.mgmt_mac")

        # BMC fields half given: 422 naming what is missing.
        other = {**good, "hostname": "worker-3", "mgmt_mac": new_mac()}
        for bmc, field in (
            ({"bmc_type": "ipmi", "bmc_address": "10.0.0.9"}, "body.bmc_username"),
            ({"bmc_type": "ipmi", "bmc_username": "root", "bmc_password": "x"}, "body.bmc_address"),
            (
                {"bmc_type": "redfish", "bmc_address": "bmc-3", "bmc_username": "root"},
                "body.bmc_password",
            ),
            (
                {"bmc_address": "10.0.0.9", "bmc_username": "root", "bmc_password": "x"},
                "body.bmc_type",
            ),
        ):
            _problem(await http.post("/v1/hosts", json={**other, **bmc}), 422, field)
        _problem(
            await http.patch("/v1/hosts/worker-1", json={"bmc_type": "ipmi"}),
            422,
            "body.bmc_address",
        )
        # The BMC port: 1..65535, and only with a BMC.
        full_bmc = {
            "bmc_type": "ipmi",
            "bmc_address": "10.0.0.9",
            "bmc_username": "root",
            "bmc_password": "x",
        }
        for port in (0, 65536, -1, "six-two-three"):
            body = {**other, **full_bmc, "bmc_port": port}
            _problem(await http.post("/v1/hosts", json=body), 422, "body.bmc_port")
            _problem(
                await http.patch("/v1/hosts/worker-1", json={"bmc_port": port}),
                422,
                "body.bmc_port",
            )
        _problem(
            await http.post("/v1/hosts", json={**other, "bmc_port": 16230}), 422, "body.bmc_type"
        )

        # Oversized or malformed labels: 422 naming labels.
        for labels in (
            {f"k{i}": "v" for i in range(65)},
            {"k" * 64: "v"},
            {"zone": "v" * 256},
            {"Zone": "a"},
        ):
            _problem(
                await http.post("/v1/hosts", json={**other, "labels": labels}), 422, "body.labels"
            )
            _problem(
                await http.put("/v1/hosts/worker-1/labels", json={"labels": labels}),
                422,
                "body.labels",
            )
        _problem(
            await http.put("/v1/hosts/worker-1/parameters", json={"parameters": {"a": {"b": 1}}}),
            422,
            "body.parameters",
        )
        # Hostname rules on PATCH too, and personality cannot change once assigned.
        _problem(
            await http.patch("/v1/hosts/worker-1", json={"hostname": "UPPER"}), 422, "body.hostname"
        )
        _problem(
            await http.patch("/v1/hosts/worker-1", json={"personality": "storage"}),
            409,
            "body.personality",
        )
        _problem(await http.patch("/v1/system", json={"mode": "quadruplex"}), 422, "body.mode")
        _problem(
            await http.patch("/v1/system", json={"timezone": "Mars/Olympus"}), 422, "body.timezone"
        )
        _problem(
            await http.patch("/v1/system", json={"dns_servers": ["dns.example"]}),
            422,
            "body.dns_servers",
        )
        assert (await http.get("/v1/hosts/nope")).status_code == 404

        # Nothing was stored or announced by any of it.
        hosts = await all_hosts(http)
        assert [h["hostname"] for h in hosts] == ["worker-1"]
        assert hosts[0]["updated_at"] == worker["updated_at"] and hosts[0]["labels"] == {}
        assert hosts[0]["config_target"] == 1
        system = (await http.get("/v1/system")).json()
        assert system["mode"] == "simplex" and system["timezone"] == "UTC"
        assert len(events.of_type("config.host.added")) == 1
        assert not events.of_type("config.host.updated")

    # Readers read but cannot change anything.
    async with config.client(stack.tokens.reader) as http:
        assert (await http.get("/v1/hosts")).status_code == 200
        for method, path, body in (
            ("POST", "/v1/hosts", {**good, "hostname": "x", "mgmt_mac": new_mac()}),
            ("PATCH", "/v1/hosts/worker-1", {"location": "rack 2"}),
            ("PUT", "/v1/hosts/worker-1/labels", {"labels": {}}),
            ("PUT", "/v1/hosts/worker-1/parameters", {"parameters": {}}),
            ("PATCH", "/v1/system", {"description": "x"}),
            ("DELETE", "/v1/hosts/worker-1", None),
        ):
            r = await http.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
    async with config.client(None) as http:
        assert (await http.get("/v1/hosts")).status_code == 401
    async with config.client(stack.tokens.admin) as http:
        assert [h["hostname"] for h in await all_hosts(http)] == ["worker-1"]


async def _count(tap, event_type: str, n: int) -> bool:
    return len(tap.of_type(event_type)) == n


class FakeHostService:
    """Answers GET /v1/hosts/{hostname} with the administrative state we choose."""

    def __init__(self) -> None:
        self.port = free_port()
        self.states: dict[str, str] = {}
        self.app = Starlette(routes=[Route("/v1/hosts/{hostname}", self._host)])
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None

    async def _host(self, request: Request) -> JSONResponse:
        name = request.path_params["hostname"]
        if name not in self.states:
            return JSONResponse({"detail": "not found"}, status_code=404)
        return JSONResponse({"hostname": name, "administrative": self.states[name]})

    async def start(self) -> None:
        cfg = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(cfg)
        self._task = asyncio.create_task(self._server.serve())
        server = self._server

        async def started() -> bool:
            return server.started

        await eventually(started, what="fake host service listening")

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._task


async def test_deleting_an_unlocked_host_is_refused(stack, start_config):
    hosts_svc = FakeHostService()
    await hosts_svc.start()
    try:
        config = start_config(ROOST_HOST_SERVICE_URL=f"http://127.0.0.1:{hosts_svc.port}")
        async with config.client(stack.tokens.admin) as http:
            for name in ("worker-1", "worker-2"):
                r = await http.post(
                    "/v1/hosts",
                    json={"hostname": name, "personality": "worker", "mgmt_mac": new_mac()},
                )
                assert r.status_code == 201
            hosts_svc.states.update({"worker-1": "unlocked", "worker-2": "locked"})
            _problem(await http.delete("/v1/hosts/worker-1"), 409, "administrative")
            assert (await http.get("/v1/hosts/worker-1")).status_code == 200
            assert (await http.delete("/v1/hosts/worker-2")).status_code == 204
            hosts_svc.states["worker-1"] = "locked"
            assert (await http.delete("/v1/hosts/worker-1")).status_code == 204
            assert await all_hosts(http) == []
    finally:
        await hosts_svc.stop()
