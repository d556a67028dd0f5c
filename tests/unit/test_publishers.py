"""Who may publish what: the check every consumer makes of a message's broker user."""

from __future__ import annotations

import pytest

from roost_shared.brokerusers import definitions, password_hash, permissions
from roost_shared.publishers import AGENT_USER, SENDER_HEADER, refusal, sender_user

AGENT = "agent-020000000001"


@pytest.mark.parametrize(
    ("event_type", "user", "claimed"),
    [
        ("config.host.updated", "roost-config", None),
        ("host.state.changed", "roost-host", None),
        ("fault.alarm.raised", "roost-fault", None),
        ("fault.alarm.set", "roost-software", None),
        ("fault.alarm.clear", "roost-host", None),
        ("fault.log.write", "roost-dashboard", None),
        ("service.instance.assign", "roost-service", None),
        ("agent.inventory.reported", AGENT, "020000000001"),
        ("agent.inventory.reported", AGENT_USER, "020000000002"),
        # A site sharing its broker suffixes its users.
        ("config.host.updated", "roost-config.t1a2b", None),
        ("agent.inventory.reported", "roost-agent.t1a2b", "020000000002"),
        ("agent.inventory.reported", f"{AGENT}.t1a2b", "020000000001"),
    ],
)
def test_owners_are_believed(event_type: str, user: str, claimed: str | None) -> None:
    assert refusal(event_type, user, claimed) is None


@pytest.mark.parametrize(
    ("event_type", "user", "claimed", "why"),
    [
        ("config.host.updated", "roost-host", None, "belongs to the config service"),
        ("config.host.updated", "guest", None, "not a Roost service"),
        ("config.host.updated", None, None, "no broker user id"),
        ("config.host.updated", AGENT, None, "not a Roost service"),
        ("fault.alarm.raised", "roost-host", None, "belongs to the fault service"),
        ("fault.alarm.clear", AGENT_USER, None, "not a Roost service"),
        ("software.install", "roost-config", None, "belongs to the software service"),
        ("agent.inventory.reported", "roost-config", "020000000001", "is not an agent"),
        ("agent.inventory.reported", AGENT, "020000000002", "about host 020000000002"),
        ("agent.inventory.reported", AGENT, None, "about host none"),
        ("config.host.updated", "roost-nosuch", None, "not a Roost service"),
        ("config.host.updated", "roost-config.UPPER", None, "not a Roost service"),
    ],
)
def test_others_are_refused(event_type: str, user: str | None, claimed: str | None, why: str):
    reason = refusal(event_type, user, claimed)
    assert reason is not None and why in reason


def test_the_recorded_sender_counts_only_on_the_consumers_own_republish() -> None:
    forged = {SENDER_HEADER: "roost-config"}
    assert sender_user("roost-host", forged, own_user="roost-host") == "roost-config"
    assert sender_user("guest", forged, own_user="roost-host") == "guest"
    assert sender_user(None, forged, own_user="roost-host") is None
    assert sender_user("roost-host", {}, own_user="roost-host") == "roost-host"


def test_each_user_may_write_only_its_own_event_types() -> None:
    import re

    config = re.compile(permissions("roost-config")["topic"])
    assert config.match("config.host.updated") and config.match("fault.alarm.set")
    assert not config.match("host.state.changed") and not config.match("fault.alarm.raised")
    agents = re.compile(permissions(AGENT_USER)["topic"])
    assert agents.match("agent.inventory.reported") and not agents.match("fault.alarm.set")
    host_queues = re.compile(permissions("roost-host")["read"])
    assert host_queues.match("host.inventory") and not host_queues.match("config.agents")


def test_definitions_carry_hashes_not_passwords() -> None:
    defs = definitions({"roost-config": "s3cret"}, ["/"], admins=("guest",))
    assert "s3cret" not in str(defs)
    assert {p["user"] for p in defs["permissions"]} == {"roost-config", "guest"}
    # RabbitMQ's sha256 scheme: base64(salt + sha256(salt + password)).
    assert password_hash("s3cret", b"\x00\x01\x02\x03") == password_hash(
        "s3cret", b"\x00\x01\x02\x03"
    )
