"""A BMC password is write-only: never in a response, an event, a command or a log line, and
stored only encrypted."""

from __future__ import annotations

import uuid
from pathlib import Path

from cryptography.fernet import Fernet
from pymongo import AsyncMongoClient

from tests.config.helpers import Agent, host_where, new_mac, tap, tap_events
from tests.support.waiting import eventually


async def test_bmc_password_never_leaks_and_is_encrypted_at_rest(stack, start_config):
    config = start_config()
    bus = await stack.bus()
    events = await tap_events(bus, "#")
    mac = new_mac()
    agent_commands = await tap(bus, "roost.commands", "agent." + mac.replace(":", ""))
    first, second = f"Pw-{uuid.uuid4().hex}", f"Pw-{uuid.uuid4().hex}"
    seen: list[str] = []  # every response body
    async with config.client(stack.tokens.admin) as http:

        async def call(method: str, path: str, **kw):
            r = await http.request(method, path, **kw)
            seen.append(r.text)
            return r

        r = await call(
            "POST",
            "/v1/hosts",
            json={
                "hostname": "controller-0",
                "personality": "controller",
                "mgmt_mac": mac,
                "bmc_type": "ipmi",
                "bmc_address": "10.10.10.3",
                "bmc_port": 16230,
                "bmc_username": "root",
                "bmc_password": first,
            },
        )
        assert r.status_code == 201, r.text
        host = r.json()
        assert host["bmc_password_set"] is True and host["bmc_username"] == "root"
        assert host["bmc_port"] == 16230
        assert "bmc_password" not in host
        # Change it, also through a refused request that carries a password.
        r = await call("PATCH", "/v1/hosts/controller-0", json={"bmc_password": second})
        assert r.status_code == 200
        r = await call(
            "PATCH",
            "/v1/hosts/controller-0",
            json={"bmc_type": "none", "bmc_password": second},
        )
        assert r.status_code == 422
        r = await call(
            "POST",
            "/v1/hosts",
            json={
                "hostname": "worker-9",
                "personality": "worker",
                "mgmt_mac": new_mac(),
                "bmc_type": "redfish",
                "bmc_password": first,
            },
        )
        assert r.status_code == 422
        await call("PUT", "/v1/hosts/controller-0/labels", json={"labels": {"a": "b"}})
        for path in (
            "/v1/hosts",
            "/v1/hosts/controller-0",
            "/v1/hosts/controller-0/config",
            "/v1/hosts/controller-0/parameters",
            "/v1/system",
            "/openapi.json",
        ):
            assert (await call("GET", path)).status_code == 200

        # The agent takes it from there: events, commands and alarms flow.
        agent = Agent(bus, mac, hostname="controller-0")
        await agent.announce(config_applied=0)
        await agent.applied(2)
        await host_where(http, "controller-0", lambda h: h["config_applied"] == 2, "applied")

        async def enough_traffic():
            return len(events.of_type("config.host.updated")) >= 2 and len(agent_commands.raw) >= 2

        await eventually(enough_traffic, what="events and commands on the bus")

    for password in (first, second):
        for body in seen:
            assert password not in body
        for raw in events.raw + agent_commands.raw:
            assert password not in raw
        log_text = config.log_path.read_text()
        assert "controller-0" in log_text, "the log file is the one the service writes"
        assert password not in log_text

    # At rest: only ciphertext, which the service's key decrypts to the current password.
    client = AsyncMongoClient(stack.mongo_url, tz_aware=True)
    try:
        db = client[config.env["ROOST_DATABASE"]]
        docs = await db["hosts"].find({}).to_list()
        dumped = repr(docs) + repr(await db["outbox"].find({}).to_list())
        assert first not in dumped and second not in dumped
        [doc] = [d for d in docs if d["hostname"] == "controller-0"]
        assert "bmc_password" not in doc
        key_file = Path(config.env["ROOST_STATE_DIR"]) / "config-secret.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert Fernet(key_file.read_bytes()).decrypt(doc["bmc_password_enc"].encode()) == (
            second.encode()
        )
        # Events carry the BMC's port, user and ciphertext (for the host service, which holds
        # the same key), never the password itself.
        latest = events.of_type("config.host.updated")[-1]["data"]
        assert latest["bmc_port"] == 16230 and latest["bmc_username"] == "root"
        assert latest["bmc_password_enc"] == doc["bmc_password_enc"]
    finally:
        await client.close()
