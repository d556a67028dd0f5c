"""The ``roost`` CLI run as a real process against a real fault service."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from roost_shared.catalog import AlarmSet, Severity
from roost_shared.events import Envelope
from roost_sim.ports import free_port
from tests.support.cli import RoostRunner
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow


class Roost(RoostRunner):
    """``roost --fault-url URL ...``; without a token when given ``token=None``."""

    url_flag = "--fault-url"

    async def raise_alarm(self, alarm_id: str, entity: str, severity: str, reason: str) -> dict:
        run = await self.ok(
            "--format", "json", "alarm-raise", "--alarm-id", alarm_id, "--entity", entity,
            "--severity", severity, "--reason", reason,
        )  # fmt: skip
        return run.json()

    async def alarms(self, *args: str, **env: str) -> list[dict]:
        return (await self.ok("--format", "json", "alarm-list", *args, **env)).json()["alarms"]


@pytest.fixture
def roost(stack, tmp_path: Path) -> Roost:
    fault = stack.start("fault")
    return Roost(fault.url, stack.tokens.admin, tmp_path)


async def test_alarm_raise_list_summary_delete_and_event_log(roost: Roost) -> None:
    hot, down = await asyncio.gather(
        roost.raise_alarm("100.101", "host=w1", "major", "CPU too hot"),
        roost.raise_alarm("200.001", "host=w2", "critical", "host w2 is down"),
    )
    assert hot["severity"] == "major" and hot["uuid"]

    # Independent reads, run side by side to keep the test quick.
    (
        listed,
        only,
        by_query,
        paged,
        limited,
        table,
        summary,
        summary_table,
        shown,
    ) = await asyncio.gather(
        roost.alarms(),
        roost.alarms("--severity", "critical"),
        roost.alarms("-q", "entity_instance_id=host=w1"),
        roost.alarms("--severity", "major", ROOST_PAGE_SIZE="1"),
        roost.alarms("--limit", "1"),
        roost.ok("alarm-list", "--uuid"),
        roost.ok("--format", "json", "alarm-summary"),
        roost.ok("alarm-summary"),
        roost.ok("--format", "json", "alarm-show", hot["uuid"]),
    )
    assert [a["alarm_id"] for a in listed] == ["200.001", "100.101"]  # most severe first
    assert listed[1]["reason_text"] == "CPU too hot"
    assert "probable_cause" in listed[0]  # expanded: every field
    assert [a["uuid"] for a in only] == [down["uuid"]]
    assert [a["uuid"] for a in by_query] == [hot["uuid"]]
    # Fetching every page one alarm at a time keeps the filters.
    assert [a["uuid"] for a in paged] == [hot["uuid"]]
    assert len(limited) == 1
    assert "CPU too hot" in table.out and hot["uuid"] in table.out and "Alarm ID" in table.out
    counts = summary.json()
    assert [counts[k] for k in ("critical", "major", "minor", "warnings")] == [1, 1, 0, 0]
    assert counts["status"] == "critical"
    assert "Suppressed" in summary_table.out
    assert shown.json()["entity_instance_id"] == "host=w1"

    deleted = await roost.ok("alarm-delete", hot["uuid"])
    assert hot["uuid"] in deleted.out

    async def set_and_clear() -> list[dict]:
        events = (await roost.ok("--format", "json", "event-list", "--alarms")).json()
        mine = [e for e in events["event_log"] if e["entity_instance_id"] == "host=w1"]
        return mine if {e["state"] for e in mine} == {"set", "clear"} else []

    remaining, events, logs, events_table, gone = await asyncio.gather(
        roost.alarms(),
        eventually(set_and_clear, what="set and clear in the event log"),
        roost.ok("--format", "json", "event-list", "--logs"),
        roost.ok("event-list", "--alarms"),
        roost("alarm-delete", hot["uuid"]),
    )
    assert [a["uuid"] for a in remaining] == [down["uuid"]]
    assert [e["state"] for e in events] == ["clear", "set"]  # newest first
    # Only the API's own audit records (500.900: the alarm-delete above) are customer logs.
    assert {e["event_log_id"] for e in logs.json()["event_log"]} <= {"500.900"}
    assert "host=w1" in events_table.out
    assert gone.code != 0
    assert gone.error_line == f"roost: error: 404 Alarm {hot['uuid']} could not be found."
    event = (await roost.ok("--format", "json", "event-show", events[0]["uuid"])).json()
    assert event["event_log_id"] == "100.101" and event["state"] == "clear"


async def test_suppression_hides_alarms_and_marks_them(stack, roost: Roost) -> None:
    bus = await stack.bus()
    await bus.publish(
        [
            Envelope.of(
                AlarmSet(
                    alarm_id="100.101",
                    entity_instance_id="host=w1",
                    severity=Severity.major,
                    reason_text="CPU too hot",
                ),
                source="test",
            )
        ]
    )

    async def listed() -> list[dict]:
        return await roost.alarms()

    await asyncio.gather(
        eventually(listed, what="the alarm from the bus in alarm-list"),
        roost.raise_alarm("200.001", "host=w2", "minor", "fan slow"),
    )

    suppress = await roost.ok("event-suppress", "--alarm-id", "100.101")
    assert "suppressed" in suppress.out
    (
        visible,
        every,
        table,
        summary,
        with_hidden,
        entries,
        all_entries,
        unknown,
    ) = await asyncio.gather(
        roost.alarms(),
        roost.alarms("--include-suppressed", ROOST_PAGE_SIZE="1"),
        roost.ok("alarm-list", "--include-suppressed"),
        roost.ok("--format", "json", "alarm-summary"),
        roost.ok("--format", "json", "alarm-summary", "--include-suppressed"),
        roost.ok("--format", "json", "event-suppress-list"),
        roost.ok("event-suppress-list", "--include-unsuppressed"),
        roost("event-suppress", "--alarm-id", "100.101,999.999"),
    )
    assert [a["alarm_id"] for a in visible] == ["200.001"]
    assert sorted(a["alarm_id"] for a in every) == ["100.101", "200.001"]
    assert "S(100.101)" in table.out and "S(200.001)" not in table.out
    assert "200.001" in table.out
    counts = summary.json()
    assert counts["major"] == 0 and counts["suppressed"]["major"] == 1 and counts["minor"] == 1
    assert with_hidden.json()["major"] == 1
    assert [e["alarm_id"] for e in entries.json()["event_suppression"]] == ["100.101"]
    assert "200.001" in all_entries.out
    assert unknown.code != 0
    assert "unknown alarm id 999.999" in unknown.error_line

    await roost.ok("event-unsuppress", "--alarm-id", "100.101")
    assert sorted(a["alarm_id"] for a in await roost.alarms()) == ["100.101", "200.001"]


async def test_errors_credentials_and_subscriptions(stack, roost: Roost) -> None:
    down = Roost(f"http://127.0.0.1:{free_port()}", stack.tokens.admin, roost.home)
    creds = roost.home / "creds.json"
    creds.write_text(json.dumps({"admin_token": stack.tokens.admin, "reader_token": "x"}))
    xdg = roost.home / "xdg"
    (xdg / "roost").mkdir(parents=True)
    (xdg / "roost" / "credentials.json").write_text(json.dumps({"admin_token": stack.tokens.admin}))

    hot, added = await asyncio.gather(
        roost.raise_alarm("100.101", "host=w1", "major", "CPU too hot"),
        roost(
            "--format", "json", "subscription-add", "http://127.0.0.1:9/hook",
            "--severity", "critical,major", "--alarm-id-prefix", "200.",
            token=None, ROOST_CREDENTIALS=str(creds),
        ),
    )  # fmt: skip
    assert added.code == 0, added.err
    sub = added.json()
    assert sub["severities"] == ["critical", "major"] and sub["alarm_id_prefixes"] == ["200."]

    (
        unreachable,
        missing,
        reader,
        reader_list,
        unknown,
        bad_severity,
        bad_query,
        bad_field,
        via_xdg,
    ) = await asyncio.gather(
        down("alarm-list"),
        roost("alarm-list", token=None),
        roost("alarm-delete", hot["uuid"], token=stack.tokens.reader),
        roost.alarms(token=stack.tokens.reader),
        roost("alarm-show", "no-such-alarm"),
        roost("alarm-list", "--severity", "hot"),
        roost("alarm-list", "-q", "nonsense"),
        roost("alarm-list", "-q", "colour=red"),
        roost("subscription-list", token=None, XDG_CONFIG_HOME=str(xdg)),
    )
    assert unreachable.code == 3
    assert "cannot reach the fault service" in unreachable.error_line
    assert "connection refused" in unreachable.error_line

    assert missing.code == 4
    assert missing.error_line.startswith("roost: error: 401 missing token")
    assert "check the token" in missing.error_line

    assert reader.code == 4
    assert reader.error_line.startswith("roost: error: 403 ")
    assert "may not change anything" in reader.error_line
    assert [a["uuid"] for a in reader_list] == [hot["uuid"]]

    assert unknown.code == 5
    assert unknown.error_line == "roost: error: 404 Alarm no-such-alarm could not be found."

    assert bad_severity.code == 2
    assert "'hot' is not one of" in bad_severity.error_line
    assert bad_query.code == 2 and "--query" in bad_query.error_line
    assert bad_field.code == 1
    assert bad_field.error_line.startswith("roost: error: 422 ")
    assert "unknown query field 'colour'" in bad_field.error_line

    assert via_xdg.code == 0, via_xdg.err
    assert sub["uuid"] in via_xdg.out

    await roost.ok("subscription-delete", sub["uuid"])
    subs, again = await asyncio.gather(
        roost.ok("--format", "json", "subscription-list"),
        roost("subscription-delete", sub["uuid"]),
    )
    assert subs.json()["subscriptions"] == []
    assert again.code == 5 and "404" in again.error_line
