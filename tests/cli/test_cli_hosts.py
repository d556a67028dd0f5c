"""The ``roost`` host and system commands, run as real processes against a real config service."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from roost_sim.ports import free_port
from tests.config.helpers import Agent, new_mac
from tests.support.cli import RoostRunner, Run
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

SECRET = "s3cret-BMC-pw"


class Roost(RoostRunner):
    """``roost --config-url URL ...``."""

    url_flag = "--config-url"

    def allowed_err(self, args: tuple[str, ...], err: str) -> bool:
        # host-list also asks the host service for states; none runs here, which it says in
        # one line (and still lists config's columns).
        note = "roost: note: no host states (cannot reach the host service"
        return (args[-1] == "host-list" or "host-list" in args) and (
            err.startswith(note) and len(err.strip().splitlines()) == 1
        )


@pytest.fixture
def roost(stack, tmp_path: Path) -> Roost:
    config = stack.start(
        "config",
        ROOST_STATE_DIR=str(tmp_path / "state"),
        ROOST_CONFIG_GRACE_S="1",
        ROOST_DRIFT_CHECK_PERIOD_S="0.2",
    )
    return Roost(config.url, stack.tokens.admin, tmp_path)


async def test_hosts_labels_config_and_system(roost: Roost) -> None:
    worker_mac, controller_mac = new_mac(), new_mac()
    bmc = ["--bmc-type", "ipmi", "--bmc-address", "10.0.0.9", "--bmc-username", "root"]
    worker, controller = await asyncio.gather(
        roost.js(
            "host-add", "--hostname", "worker-1", "--personality", "worker",
            "--mgmt-mac", worker_mac.upper(), "--mgmt-ip", "192.168.204.21",
            "--location", "rack-1", *bmc, "--bmc-password-stdin",
            stdin=f"{SECRET}\n",
        ),
        roost.js(
            "host-add", "--hostname", "controller-0", "--personality", "controller",
            "--mgmt-mac", controller_mac, *bmc, ROOST_BMC_PASSWORD=SECRET,
        ),
    )  # fmt: skip
    assert worker["hostname"] == "worker-1" and worker["mgmt_mac"] == worker_mac
    assert worker["bmc_password_set"] is True and controller["bmc_password_set"] is True
    assert worker["install_state"] == "provisioning" and worker["config_target"] == 1

    (
        listed,
        paged,
        limited,
        table,
        by_name,
        by_uuid,
        shown_table,
        config,
        config_table,
    ) = await asyncio.gather(
        roost.js("host-list"),
        roost.js("host-list", ROOST_PAGE_SIZE="1"),
        roost.js("host-list", "--limit", "1"),
        # Wide enough that rich never shortens a column (random data and the note about the
        # host service can make the rows wider than a terminal).
        roost.ok("host-list", COLUMNS="1000"),
        roost.js("host-show", "worker-1"),
        roost.js("host-show", worker["uuid"]),
        roost.ok("host-show", "worker-1"),
        roost.js("host-config-show", "worker-1"),
        roost.ok("host-config-show", "worker-1"),
    )
    uuids = {worker["uuid"], controller["uuid"]}
    assert {h["uuid"] for h in listed["hosts"]} == uuids
    assert {h["uuid"] for h in paged["hosts"]} == uuids  # every page, one host at a time
    assert len(limited["hosts"]) == 1
    # The data through JSON (never truncated); the table only for its layout.
    by_uuid_listed = {h["uuid"]: h for h in listed["hosts"]}
    listed_worker = by_uuid_listed[worker["uuid"]]
    assert listed_worker["hostname"] == "worker-1"
    assert listed_worker["mgmt_mac"] == worker_mac
    assert listed_worker["mgmt_ip"] == "192.168.204.21"
    assert listed_worker["install_state"] == "provisioning"
    assert (listed_worker["config_target"], listed_worker["config_applied"]) == (1, 0)
    assert listed_worker["config_status"] == "out-of-date"
    assert by_uuid_listed[controller["uuid"]]["hostname"] == "controller-0"
    for text in ("Hostname", "Mgmt MAC", "worker-1", "controller-0", "1/0 out-of-date"):
        assert text in table.out
    assert "…" not in table.out  # nothing shortened
    assert by_name == by_uuid and by_name["location"] == "rack-1"
    assert "bmc_password_set" in shown_table.out and "rack-1" in shown_table.out
    assert config["config_target"] == 1 and config["config_applied"] == 0
    assert config["config_status"] == "out-of-date" and config["out_of_date"] is True
    assert config["desired"]["hostname"] == "worker-1"
    assert "Desired configuration (version 1)" in config_table.out
    for run in (table, shown_table, config_table):
        assert SECRET not in run.out
    assert SECRET not in json.dumps([listed, by_name, config])

    updated = await roost.js(
        "host-update", "worker-1", "--hostname", "worker-2", "--location", "rack-2"
    )
    assert updated["hostname"] == "worker-2" and updated["location"] == "rack-2"
    assert updated["config_target"] == 2

    assigned = await roost.js("host-label-assign", "worker-2", "zone=a", "tier=gold")
    assert assigned["labels"] == {"zone": "a", "tier": "gold"}
    kept = await roost.js("host-label-assign", "worker-2", "zone=b")
    assert kept["labels"] == {"zone": "b", "tier": "gold"}
    removed, missing, label_table, bad_pair = await asyncio.gather(
        roost.js("host-label-remove", "worker-2", "tier"),
        roost("host-label-remove", "worker-2", "nope"),
        roost.ok("host-show", "worker-2"),
        roost("host-label-assign", "worker-2", "novalue"),
    )
    assert removed["labels"] == {"zone": "b"}
    assert missing.code == 5 and "has no label nope" in missing.error_line
    assert "zone=b" in label_table.out
    assert bad_pair.code == 2 and "key=value" in bad_pair.error_line

    system = await roost.js(
        "system-modify", "--name", "edge-1", "--timezone", "Europe/Paris",
        "--dns-servers", "8.8.8.8,1.1.1.1", "--ntp-servers", "pool.ntp.org",
        "--description", "lab",
    )  # fmt: skip
    assert system["name"] == "edge-1" and system["dns_servers"] == ["8.8.8.8", "1.1.1.1"]
    shown, system_table, after = await asyncio.gather(
        roost.js("system-show"),
        roost.ok("system-show"),
        roost.js("host-config-show", "worker-2"),
    )
    assert shown["timezone"] == "Europe/Paris" and shown["ntp_servers"] == ["pool.ntp.org"]
    assert "8.8.8.8, 1.1.1.1" in system_table.out and "edge-1" in system_table.out
    assert (
        after["desired"]["system"]["timezone"] == "Europe/Paris"
    )  # the system change reached the host
    assert after["config_target"] > updated["config_target"]

    deleted = await roost.ok("host-delete", "worker-2")
    assert "worker-2" in deleted.out
    gone = await roost("host-show", "worker-2")
    assert gone.code == 5
    assert gone.error_line == "roost: error: 404 Host worker-2 could not be found."


async def test_discovered_host_is_provisioned_and_reports_inventory(stack, roost: Roost) -> None:
    bus = await stack.bus()
    mac = new_mac()
    agent = Agent(bus, mac, hostname="localhost")
    await agent.announce()

    async def discovered() -> list[dict]:
        hosts = (await roost.js("host-list", "--install-state", "discovered"))["hosts"]
        return [h for h in hosts if h["mgmt_mac"] == mac]

    [host] = await eventually(discovered, what="the announced host in host-list")
    assert host["hostname"] is None and host["reported_hostname"] == "localhost"
    listed = await roost.ok("host-list")
    assert "(localhost)" in listed.out and "discovered" in listed.out
    unconfigured = await roost.ok("host-config-show", host["uuid"])
    assert "No desired configuration yet" in unconfigured.out

    # Provision it by its MAC (a discovered host has no hostname to name it by).
    provisioned = await roost.js(
        "host-update", mac, "--hostname", "worker-9", "--personality", "worker"
    )
    assert provisioned["uuid"] == host["uuid"]
    assert provisioned["install_state"] == "provisioning" and provisioned["config_target"] == 1

    no_inventory = await roost("host-inventory", "worker-9")
    assert no_inventory.code == 5 and "not reported its inventory" in no_inventory.error_line

    await agent.applied(1)
    await agent.inventory(memory_mb=32768, disks=2)

    async def settled() -> dict | None:
        config = await roost.js("host-config-show", "worker-9")
        return config if config["config_status"] == "up-to-date" else None

    async def inventory() -> Run | None:
        run = await roost("--format", "json", "host-inventory", "worker-9")
        return run if run.code == 0 else None

    config, inv = await asyncio.gather(
        eventually(settled, what="worker-9 up to date"),
        eventually(inventory, what="worker-9's inventory"),
    )
    assert config["config_applied"] == 1 and config["out_of_date"] is False
    body = inv.json()
    assert body["memory_mb"] == 32768 and len(body["disks"]) == 2
    assert body["ports"][0]["mac"] == mac
    shown, inv_table = await asyncio.gather(
        roost.js("host-show", "worker-9"), roost.ok("host-inventory", "worker-9")
    )
    assert shown["install_state"] == "provisioned"
    for text in ("Xeon D-2187NT", "32768", "/dev/nvme1n1", "eno1", "PCI Devices"):
        assert text in inv_table.out


async def test_errors_are_one_line_with_exit_codes(roost: Roost) -> None:
    mac = new_mac()
    await roost.ok(
        "host-add", "--hostname", "worker-1", "--personality", "worker", "--mgmt-mac", mac
    )
    down = Roost(f"http://127.0.0.1:{free_port()}", roost.token, roost.home)
    (
        duplicate,
        duplicate_mac,
        invalid,
        unknown,
        unknown_mac,
        unreachable,
        nothing,
        half_bmc,
        personality_change,
        both_passwords,
    ) = await asyncio.gather(
        roost("host-add", "--hostname", "worker-1", "--personality", "worker",
              "--mgmt-mac", new_mac()),
        roost("host-add", "--hostname", "worker-2", "--personality", "worker", "--mgmt-mac", mac),
        roost("host-add", "--hostname", "Bad_Name", "--personality", "worker",
              "--mgmt-mac", new_mac()),
        roost("host-show", "no-such-host"),
        roost("host-update", new_mac(), "--location", "x"),
        down("host-list"),
        roost("host-update", "worker-1"),
        roost("host-update", "worker-1", "--bmc-type", "redfish", "--bmc-address", "10.0.0.1"),
        roost("host-update", "worker-1", "--personality", "storage"),
        roost("host-update", "worker-1", "--bmc-password", "x", "--bmc-password-stdin",
              stdin="y\n"),
    )  # fmt: skip
    assert duplicate.code == 1
    assert duplicate.error_line.startswith("roost: error: 409 ")
    assert "hostname 'worker-1' is already used" in duplicate.error_line
    assert duplicate_mac.code == 1 and "409" in duplicate_mac.error_line
    assert "mgmt_mac" in duplicate_mac.error_line
    assert invalid.code == 1
    assert invalid.error_line.startswith("roost: error: 422 body.hostname: ")
    assert "RFC 1123" in invalid.error_line
    assert unknown.code == 5
    assert unknown.error_line == "roost: error: 404 Host no-such-host could not be found."
    assert unknown_mac.code == 5 and "no host has management MAC" in unknown_mac.error_line
    assert unreachable.code == 3
    assert "cannot reach the config service" in unreachable.error_line
    assert nothing.code == 2 and "nothing to change" in nothing.error_line
    assert half_bmc.code == 1 and half_bmc.error_line.startswith("roost: error: 422 ")
    assert "bmc_username is missing" in half_bmc.error_line
    assert personality_change.code == 1
    assert personality_change.error_line.startswith(
        "roost: error: 409 the personality of a host cannot change (worker)"
    )

    assert both_passwords.code == 2 and "not both" in both_passwords.error_line
