"""Config domain rules without I/O: input rules, desired configuration and versions, agent
reports, drift, announcements."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from roost_config import logic
from roost_config.logic import (
    ALARM_CONFIG_FAILURE,
    ALARM_CONFIG_OUT_OF_DATE,
    ConfigStatus,
    InstallState,
)
from roost_shared.catalog import AlarmClear, AlarmSet
from roost_shared.refs import normalise_mac

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SYSTEM = {
    "name": "edge-1",
    "mode": "simplex",
    "timezone": "UTC",
    "dns_servers": ["10.0.0.53"],
    "ntp_servers": ["pool.ntp.org"],
    "description": "for people",
}


def host(**kw):
    base = {
        "uuid": "u-1",
        "hostname": "worker-1",
        "personality": "worker",
        "mgmt_mac": "52:54:00:00:00:01",
        "install_state": InstallState.discovered.value,
        "config_target": 0,
        "config_applied": 0,
        "labels": {},
        "parameters": {},
    }
    return {**base, **kw}


# Input rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", ["52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef", "525400abcdef", "5254.00ab.cdef"]
)
def test_macs_are_normalised_to_lower_case_colon_form(raw):
    assert normalise_mac(raw) == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize("raw", ["52:54:00:ab:cd", "zz:54:00:ab:cd:ef", "", "52:54:00:ab:cd:ef:00"])
def test_bad_macs_are_refused(raw):
    with pytest.raises(ValueError):
        normalise_mac(raw)


@pytest.mark.parametrize("name", ["controller-0", "w1", "a" * 63])
def test_good_hostnames(name):
    assert logic.check_hostname(name) == name


@pytest.mark.parametrize("name", ["Controller-0", "-a", "a-", "a_b", "a.b", "a" * 64, ""])
def test_bad_hostnames(name):
    with pytest.raises(ValueError):
        logic.check_hostname(name)


def test_labels_are_bounded():
    assert logic.check_labels({"zone": "a", "k8s.io/role": "edge"}) == {
        "zone": "a",
        "k8s.io/role": "edge",
    }
    with pytest.raises(ValueError, match="at most 64"):
        logic.check_labels({f"k{i}": "v" for i in range(65)})
    with pytest.raises(ValueError, match="label key"):
        logic.check_labels({"k" * 64: "v"})
    with pytest.raises(ValueError, match="label key"):
        logic.check_labels({"Upper": "v"})
    with pytest.raises(ValueError, match="label key"):  # ``$`` alone would let a newline end it
        logic.check_labels({"zone\n": "v"})
    with pytest.raises(ValueError, match="255"):
        logic.check_labels({"k": "v" * 256})


def test_parameters_are_bounded_scalars():
    assert logic.check_parameters({"mtu": 9000, "debug": True, "x.y": "z"})
    with pytest.raises(ValueError, match="string, number or boolean"):
        logic.check_parameters({"nested": {"a": 1}})
    with pytest.raises(ValueError, match="parameter key"):
        logic.check_parameters({"Bad Key": 1})
    with pytest.raises(ValueError, match="parameter key"):
        logic.check_parameters({"mtu\n": 1})


def test_servers():
    assert logic.check_servers(["10.0.0.1", "2001:DB8::1"], names_allowed=False) == [
        "10.0.0.1",
        "2001:db8::1",
    ]
    assert logic.check_servers(["pool.ntp.org"], names_allowed=True) == ["pool.ntp.org"]
    with pytest.raises(ValueError, match="IP address"):
        logic.check_servers(["pool.ntp.org"], names_allowed=False)
    with pytest.raises(ValueError, match="at most 3"):
        logic.check_servers(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"], names_allowed=False)


@pytest.mark.parametrize(
    ("kind", "address", "user", "password", "field"),
    [
        ("none", None, None, False, None),
        ("ipmi", "10.0.0.9", "admin", True, None),
        ("ipmi", None, "admin", True, "bmc_address"),
        ("redfish", "bmc-1", None, True, "bmc_username"),
        ("ipmi", "10.0.0.9", "admin", False, "bmc_password"),
        ("none", "10.0.0.9", None, False, "bmc_type"),
        (None, None, None, True, "bmc_type"),
    ],
)
def test_bmc_fields_come_all_together_or_not_at_all(kind, address, user, password, field):
    problem = logic.bmc_problem(kind, address, user, password)
    assert (problem[0] if problem else None) == field
    if problem:
        assert field in problem[1]


def test_a_bmc_port_needs_a_bmc():
    assert logic.bmc_problem("ipmi", "127.0.0.1", "admin", True, port=16230) is None
    problem = logic.bmc_problem("none", None, None, False, port=16230)
    assert problem is not None and problem[0] == "bmc_type" and "bmc_port" in problem[1]


# Desired configuration and versions ------------------------------------------------------------


def test_discovered_hosts_have_no_configuration():
    assert logic.desired_config(SYSTEM, host(hostname=None)) is None
    assert logic.desired_config(SYSTEM, host(personality=None)) is None
    assert logic.new_version(SYSTEM, host(personality=None), NOW) is None


def test_desired_config_is_system_plus_personality_plus_labels_plus_parameters():
    cfg = logic.desired_config(SYSTEM, host(labels={"zone": "a"}, parameters={"mtu": 9000}))
    assert cfg["system"] == {k: SYSTEM[k] for k in logic.SYSTEM_CONFIG_FIELDS}
    assert "description" not in cfg["system"]
    assert cfg["settings"]["kubernetes_role"] == "worker"
    assert cfg["labels"] == {"zone": "a"} and cfg["parameters"] == {"mtu": 9000}
    assert cfg["hostname"] == "worker-1" and cfg["subfunctions"] == ["worker"]


def test_first_version_provisions_and_only_real_changes_bump():
    h = host()
    first = logic.new_version(SYSTEM, h, NOW)
    assert first["config_target"] == 1
    assert first["install_state"] == InstallState.provisioning
    assert first["out_of_date_since"] == NOW
    h.update(first)
    assert logic.new_version(SYSTEM, h, NOW) is None, "same document, same version"
    later = NOW + timedelta(seconds=5)
    assert logic.new_version({**SYSTEM, "description": "x"}, h, later) is None
    second = logic.new_version({**SYSTEM, "timezone": "Europe/Paris"}, h, later)
    assert second["config_target"] == 2
    assert second["out_of_date_since"] == NOW, "the lag started with version 1"
    assert "install_state" not in second


def test_label_order_does_not_change_the_digest():
    a = logic.desired_config(SYSTEM, host(labels={"a": "1", "b": "2"}))
    b = logic.desired_config(SYSTEM, host(labels={"b": "2", "a": "1"}))
    assert logic.config_digest(a) == logic.config_digest(b)


# Agent reports ---------------------------------------------------------------------------------


def test_applied_moves_forward_and_provisions():
    h = host(install_state="provisioning", config_target=2, config_applied=0, out_of_date_since=NOW)
    fx = logic.on_applied(h, 1, True, None, NOW)
    assert fx.set == {"config_applied": 1}
    h.update(fx.set)
    fx = logic.on_applied(h, 2, True, None, NOW)
    assert fx.set["config_applied"] == 2
    assert fx.set["install_state"] == InstallState.provisioned
    assert fx.set["out_of_date_since"] is None
    h.update(fx.set)
    assert logic.config_status(h) == ConfigStatus.up_to_date


def test_applied_never_goes_backwards_nor_past_the_target():
    h = host(install_state="provisioned", config_target=3, config_applied=3)
    assert not logic.on_applied(h, 2, True, None, NOW).changed
    assert "config_applied" not in logic.on_applied(h, 4, True, None, NOW).set


def test_a_version_never_sent_raises_250_012_once_and_a_sane_report_clears_it():
    """A host claiming a version above the target would otherwise refuse every real one."""
    h = host(install_state="provisioned", config_target=3, config_applied=3)
    fx = logic.on_applied(h, 1_000_000, True, None, NOW)
    [alarm] = fx.alarms
    assert isinstance(alarm, AlarmSet) and alarm.alarm_id == logic.ALARM_CONFIG_AHEAD
    assert "1000000" in alarm.reason_text and fx.set == {"ahead_alarmed": True}
    h.update(fx.set)
    assert not logic.on_applied(h, 1_000_000, True, None, NOW).alarms, "raised once"
    fx = logic.on_applied(h, 3, True, None, NOW)
    assert [(type(a), a.alarm_id) for a in fx.alarms] == [(AlarmClear, logic.ALARM_CONFIG_AHEAD)]


def test_repeated_forgeries_raise_250_011_at_the_threshold_and_not_for_every_one():
    h = host()
    times = [NOW + timedelta(seconds=i) for i in range(4)]
    alarms = []
    for t in times:
        fx = logic.on_refused(
            h, "unsigned", "service.instance.assign", t, threshold=3, window_s=120
        )
        h.update(fx.set)
        alarms.append([a.alarm_id for a in fx.alarms])
    assert alarms == [[], [], [logic.ALARM_FORGED_COMMANDS], []]  # then at most once a minute
    assert h["forgeries_total"] == 4 and len(h["forgeries"]) == 3
    later = NOW + timedelta(seconds=65)  # a minute after the alarm, still within the window
    fx = logic.on_refused(h, "bad-signature", "config.apply", later, threshold=3, window_s=120)
    assert [a.alarm_id for a in fx.alarms] == [logic.ALARM_FORGED_COMMANDS]
    assert "refused 5 forged" in fx.alarms[0].reason_text


def test_forgeries_spread_beyond_the_window_raise_nothing():
    h = host()
    for i in range(5):
        t = NOW + timedelta(minutes=11 * i)
        fx = logic.on_refused(h, "unsigned", "config.apply", t, threshold=3, window_s=600)
        h.update(fx.set)
        assert not fx.alarms


def test_failure_raises_200_011_and_success_clears_it():
    h = host(install_state="provisioning", config_target=1, config_applied=0)
    fx = logic.on_applied(h, 1, False, "disk full", NOW)
    assert fx.set["install_state"] == InstallState.failed
    [alarm] = fx.alarms
    assert isinstance(alarm, AlarmSet) and alarm.alarm_id == ALARM_CONFIG_FAILURE
    assert alarm.entity_instance_id == "host=worker-1" and "disk full" in alarm.reason_text
    h.update(fx.set)
    assert logic.config_status(h) == ConfigStatus.failed
    fx = logic.on_applied(h, 1, True, None, NOW)
    assert fx.set["install_state"] == InstallState.provisioned
    assert [type(a) for a in fx.alarms] == [AlarmClear]
    assert fx.alarms[0].alarm_id == ALARM_CONFIG_FAILURE


def test_drift_alarm_after_grace_and_clear_when_caught_up():
    h = host(config_target=2, config_applied=1, out_of_date_since=NOW)
    assert not logic.drift_action(h, NOW + timedelta(seconds=9), 10).alarms
    fx = logic.drift_action(h, NOW + timedelta(seconds=10), 10)
    [alarm] = fx.alarms
    assert (
        alarm.alarm_id == ALARM_CONFIG_OUT_OF_DATE and alarm.entity_instance_id == "host=worker-1"
    )
    assert alarm.timestamp == NOW
    h.update(fx.set)
    assert not logic.drift_action(h, NOW + timedelta(seconds=30), 10).alarms, "raised once"
    fx = logic.on_applied(h, 2, True, None, NOW)
    assert [a.alarm_id for a in fx.alarms] == [ALARM_CONFIG_OUT_OF_DATE]
    assert isinstance(fx.alarms[0], AlarmClear)
    # The loop also clears an alarm left behind.
    left = host(config_target=2, config_applied=2, drift_alarmed=True)
    assert isinstance(logic.drift_action(left, NOW, 10).alarms[0], AlarmClear)


def test_announcements():
    owner = host(uuid="u-1", hostname="worker-1")
    renamed = host(uuid="u-2", hostname="worker-2", mgmt_mac="52:54:00:00:00:02")
    # Unknown MAC, unused name: new.
    assert logic.classify_announcement(None, "localhost", None).kind == "new"
    # Known MAC under another assigned name (operator renamed it): fine.
    assert logic.classify_announcement(renamed, "old-name", None).kind == "known"
    assert logic.classify_announcement(renamed, "worker-1", owner).kind == "known"
    # Unknown MAC claiming an assigned name: conflict, never merged.
    verdict = logic.classify_announcement(None, "worker-1", owner)
    assert verdict.kind == "conflict" and verdict.conflict_with == "worker-1"
    discovered = host(uuid="u-3", hostname=None, personality=None)
    assert logic.classify_announcement(discovered, "worker-1", owner).kind == "conflict"
    # A host announcing its own assigned name.
    assert logic.classify_announcement(owner, "worker-1", owner).kind == "known"


def test_host_record_carries_the_bmc_password_only_as_ciphertext():
    record = logic.host_record(
        host(bmc_password_enc="gAAAA...", bmc_username="root", bmc_port=16231)
    )
    dumped = record.model_dump()
    assert dumped["bmc_password_enc"] == "gAAAA..." and dumped["bmc_username"] == "root"
    assert dumped["bmc_port"] == 16231
    assert not any("password" in k and k != "bmc_password_enc" for k in dumped)
    assert "gAAAA" not in repr(record)  # not even the ciphertext in reprs and logs
