"""Fault domain rules without I/O."""

from datetime import UTC, datetime

import pytest

from roost_fault import logic
from roost_shared.catalog import AlarmClear, AlarmSet, LogWrite, Severity
from roost_shared.problems import Invalid

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def set_(entity="host=a", alarm_id="100.101", severity="major", **kw):
    return AlarmSet(
        alarm_id=alarm_id,
        entity_instance_id=entity,
        severity=Severity(severity),
        reason_text=kw.pop("reason_text", "r"),
        **kw,
    )


def test_raise_creates_alarm_logs_and_notifies():
    out = logic.apply([(set_(), T0, None)], {}, set(), set())
    doc = out.alarms[("100.101", "host=a")]
    assert doc["severity"] == "major" and doc["alarm_state"] == "set"
    assert [e["state"] for e in out.event_log] == ["set"]
    assert [n.kind for n in out.notices] == ["raised"]
    assert out.new_alarm_ids == {"100.101": "r"}


def test_raise_again_updates_same_alarm_and_notifies_change_once():
    first = logic.apply([(set_(), T0, None)], {}, set(), {"100.101"})
    current = {k: v for k, v in first.alarms.items() if v}
    again = logic.apply(
        [(set_(severity="critical"), T0, None), (set_(severity="critical"), T0, None)],
        current,
        set(),
        {"100.101"},
    )
    doc = again.alarms[("100.101", "host=a")]
    assert doc["uuid"] == current[("100.101", "host=a")]["uuid"]
    assert doc["severity"] == "critical"
    # Both sets are logged; only the real change is told to subscribers.
    assert len(again.event_log) == 2
    assert [(n.kind, n.previous_severity) for n in again.notices] == [("changed", "major")]


def test_clear_removes_and_logs_and_clear_of_nothing_is_quiet():
    raised = logic.apply([(set_(), T0, None)], {}, set(), set()).alarms
    out = logic.apply(
        [(AlarmClear(alarm_id="100.101", entity_instance_id="host=a"), T0, None)],
        raised,
        set(),
        set(),
    )
    assert out.alarms == {("100.101", "host=a"): None}
    assert [e["state"] for e in out.event_log] == ["clear"]
    assert [n.kind for n in out.notices] == ["cleared"]
    quiet = logic.apply(
        [(AlarmClear(alarm_id="100.101", entity_instance_id="host=b"), T0, None)], {}, set(), set()
    )
    assert quiet.alarms == {} and quiet.event_log == [] and quiet.notices == []


def test_clear_without_alarm_id_clears_every_alarm_of_the_entity():
    cmds = [
        (set_(alarm_id="100.101"), T0, None),
        (set_(alarm_id="100.103"), T0, None),
        (set_(entity="host=b"), T0, None),
    ]
    current = {k: v for k, v in logic.apply(cmds, {}, set(), set()).alarms.items() if v}
    out = logic.apply([(AlarmClear(entity_instance_id="host=a"), T0, None)], current, set(), set())
    assert sorted(k for k, v in out.alarms.items() if v is None) == [
        ("100.101", "host=a"),
        ("100.103", "host=a"),
    ]


def test_suppression_applies_only_when_allowed():
    hidden = logic.apply([(set_(), T0, None)], {}, {"100.101"}, set()).alarms[("100.101", "host=a")]
    assert hidden["suppression_status"] == "suppressed"
    shown = logic.apply([(set_(suppression=False), T0, None)], {}, {"100.101"}, set())
    assert shown.alarms[("100.101", "host=a")]["suppression_status"] == "unsuppressed"


def test_customer_log_goes_to_event_log_only():
    out = logic.apply(
        [
            (
                LogWrite(event_log_id="200.021", entity_instance_id="host=a", reason_text="x"),
                T0,
                None,
            )
        ],
        {},
        set(),
        set(),
    )
    assert out.alarms == {} and out.notices == []
    assert out.event_log[0]["state"] == "log"


def test_subscription_filters_and_their_query_agree():
    notice = logic.apply(
        [(set_(alarm_id="200.005", severity="minor"), T0, None)], {}, set(), set()
    ).notices[0]
    alarm = notice.to_model().model_dump(mode="json")
    subs = [
        ({}, True),
        ({"severities": ["minor"], "alarm_id_prefixes": ["200."]}, True),
        ({"severities": ["critical"]}, False),
        ({"alarm_id_prefixes": ["100.", "200.00"]}, True),
        ({"alarm_id_prefixes": ["100."]}, False),
    ]
    for sub, wanted in subs:
        assert logic.matches(sub, alarm) is wanted, sub
    assert logic.subscription_query(
        {"severities": ["minor"], "alarm_id_prefixes": ["2.0", "1"]}
    ) == {
        "alarm.suppressed": {"$ne": True},
        "alarm.severity": {"$in": ["minor"]},
        "alarm.alarm_id": {"$regex": r"^(?:2\.0|1)"},
    }
    assert not logic.matches({}, {**alarm, "suppressed": True})
    assert logic.matches({"include_suppressed": True}, {**alarm, "suppressed": True})


def test_summary_status():
    assert logic.summary_status(0, 0, 0) == "OK"
    assert logic.summary_status(0, 0, 1) == "degraded"
    assert logic.summary_status(1, 5, 5) == "critical"


def test_query_filter_is_substring_eq_and_names_bad_fields():
    f = logic.query_filter(
        ["severity", "uuid"], ["eq", "eq"], ["maj", "u1"], logic.ALARM_QUERY_FIELDS
    )
    assert f == {"severity": {"$regex": "maj"}, "uuid": "u1"}
    with pytest.raises(Invalid) as bad_field:
        logic.query_filter(["colour"], ["eq"], ["red"], logic.ALARM_QUERY_FIELDS)
    assert bad_field.value.field == "q.field" and "colour" in str(bad_field.value)
    with pytest.raises(Invalid) as bad_op:
        logic.query_filter(["severity"], ["ne"], ["major"], logic.ALARM_QUERY_FIELDS)
    assert bad_op.value.field == "q.op"


def test_event_time_bounds_accept_fm_forms():
    f = logic.query_filter(
        ["start", "end"],
        ["eq", "eq"],
        ["20160131 10:23:45", "2017-12-25T00:00:00"],
        logic.EVENT_QUERY_FIELDS,
    )
    assert f["timestamp"]["$gte"] == datetime(2016, 1, 31, 10, 23, 45, tzinfo=UTC)
    with pytest.raises(Invalid):
        logic.parse_time("yesterday", field="q.value")


def test_only_the_raiser_or_an_operator_changes_or_clears_an_alarm():
    raised = logic.apply([(set_(), T0, "host")], {}, set(), set()).alarms
    current = {k: v for k, v in raised.items() if v}
    assert current[("100.101", "host=a")]["raised_by"] == "host"

    forged = logic.apply(
        [
            (AlarmClear(alarm_id="100.101", entity_instance_id="host=a"), T0, "config"),
            (set_(severity="minor"), T0, "config"),
            (AlarmClear(entity_instance_id="host=a"), T0, "config"),
        ],
        current,
        set(),
        set(),
    )
    assert forged.alarms == {} and forged.notices == []
    assert [by for _, by in forged.refused] == ["config", "config"]

    by_raiser = logic.apply(
        [(AlarmClear(entity_instance_id="host=a"), T0, "host")], current, set(), set()
    )
    assert by_raiser.alarms == {("100.101", "host=a"): None}
    by_operator = logic.apply(
        [(AlarmClear(alarm_id="100.101", entity_instance_id="host=a"), T0, None)],
        current,
        set(),
        set(),
    )
    assert by_operator.alarms == {("100.101", "host=a"): None}
