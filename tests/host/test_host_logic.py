"""The host state machine (roost_host.logic) without I/O: every StarlingX rule and its reason."""

from __future__ import annotations

import pytest

from roost_host import logic
from roost_host.logic import HostFacts, Refused, State
from roost_host.models import Action, Administrative, Availability, Operational

L, U = Administrative.locked, Administrative.unlocked
E, D = Operational.enabled, Operational.disabled
A = Availability

LOCKED_ONLINE = State(L, D, A.online)
LOCKED_OFFLINE = State(L, D, A.offline)
POWERED_OFF = State(L, D, A.power_off)
IN_SERVICE = State(U, E, A.available)
INTEST = State(U, D, A.intest, "Testing")


def host(state: State, personality: str = "worker", hostname: str | None = "worker-0"):
    return HostFacts(hostname, personality, state)


def refused(action: Action, facts: HostFacts, **kw) -> str:
    with pytest.raises(Refused) as info:
        logic.decide(action, facts, **kw)
    assert str(facts.state) in info.value.reason, "the reason names the current state"
    return info.value.reason


def test_unlock_runs_an_intest_then_enables():
    t = logic.decide(Action.unlock, host(LOCKED_ONLINE))
    assert t.to == State(U, D, A.intest, "Testing")
    assert t.step == "intest" and t.reason == logic.OPERATOR
    done = logic.complete_step("intest", t.to)
    assert done.to == State(U, E, A.available)
    assert done.reason == logic.INTEST_PASSED


def test_unlock_only_when_locked_and_reachable():
    assert "already unlocked" in refused(Action.unlock, host(IN_SERVICE))
    assert "power it on first" in refused(Action.unlock, host(POWERED_OFF))
    assert "offline" in refused(Action.unlock, host(LOCKED_OFFLINE))


def test_lock_goes_to_locked_disabled_online():
    t = logic.decide(Action.lock, host(IN_SERVICE))
    assert t.to == State(L, D, A.online)
    assert t.step is None and t.raises_lock_alarm


def test_lock_of_a_failed_host_goes_offline():
    assert logic.decide(Action.lock, host(State(U, D, A.failed))).to == LOCKED_OFFLINE


def test_lock_only_when_unlocked():
    assert "already locked" in refused(Action.lock, host(LOCKED_ONLINE))
    assert "already locked" in refused(Action.force_lock, host(LOCKED_ONLINE))


def test_lock_during_intest_cancels_it():
    t = logic.decide(Action.lock, host(INTEST))
    assert t.to == LOCKED_ONLINE and t.step is None


def test_last_unlocked_enabled_controller_cannot_be_locked():
    c0 = host(IN_SERVICE, "controller", "controller-0")
    reason = refused(Action.lock, c0, other_controllers=[LOCKED_ONLINE])
    assert "last unlocked-enabled controller" in reason and "force-lock" in reason


def test_a_controller_may_be_locked_when_another_is_in_service():
    c0 = host(IN_SERVICE, "controller", "controller-0")
    t = logic.decide(Action.lock, c0, other_controllers=[IN_SERVICE])
    assert t.to == LOCKED_ONLINE and t.reason == logic.OPERATOR


def test_force_lock_may_lock_the_last_controller_and_says_so():
    c0 = host(IN_SERVICE, "controller", "controller-0")
    t = logic.decide(Action.force_lock, c0, other_controllers=[], reason="maintenance window")
    assert t.to == LOCKED_ONLINE
    assert t.reason == logic.FORCED_LAST_CONTROLLER
    assert "maintenance window" in t.cause


def test_a_controller_still_in_test_is_not_the_last_enabled_one():
    c0 = host(INTEST, "controller", "controller-0")
    assert logic.decide(Action.lock, c0).to == LOCKED_ONLINE


@pytest.mark.parametrize("action", [Action.reboot, Action.reset, Action.reinstall])
def test_reboot_reset_reinstall_only_when_locked(action):
    assert "lock it first" in refused(action, host(IN_SERVICE))
    t = logic.decide(action, host(LOCKED_ONLINE))
    assert t.to == State(L, D, A.offline, logic.TASKS[action.value])
    assert t.step == action.value
    assert logic.complete_step(action.value, t.to).to == LOCKED_ONLINE


def test_reboot_needs_the_host_online_but_reset_does_not():
    assert "reset it instead" in refused(Action.reboot, host(LOCKED_OFFLINE))
    assert logic.decide(Action.reset, host(LOCKED_OFFLINE)).step == "reset"
    assert logic.decide(Action.reinstall, host(LOCKED_OFFLINE)).step == "reinstall"


def test_power_off_only_when_locked():
    assert "lock it first" in refused(Action.power_off, host(IN_SERVICE))
    assert logic.decide(Action.power_off, host(LOCKED_ONLINE)).to == POWERED_OFF
    assert "power it on first" in refused(Action.power_off, host(POWERED_OFF))


def test_power_on_only_when_powered_off():
    assert "not powered off" in refused(Action.power_on, host(LOCKED_ONLINE))
    t = logic.decide(Action.power_on, host(POWERED_OFF))
    assert t.to == State(L, D, A.offline, "Powering-on") and t.step == "power-on"
    assert logic.complete_step("power-on", t.to).to == LOCKED_ONLINE


@pytest.mark.parametrize("action", [Action.reboot, Action.reset, Action.reinstall])
def test_a_powered_off_host_must_be_powered_on_first(action):
    assert "power it on first" in refused(action, host(POWERED_OFF))


@pytest.mark.parametrize("action", list(Action))
def test_nothing_runs_on_a_host_without_hostname(action):
    reason = refused(action, host(LOCKED_ONLINE, personality=None, hostname=None))
    assert "no hostname" in reason


@pytest.mark.parametrize("action", [Action.reboot, Action.reset, Action.power_off, Action.unlock])
def test_nothing_else_runs_while_a_step_is_in_progress(action):
    rebooting = State(L, D, A.offline, "Rebooting")
    assert "in progress (Rebooting)" in refused(action, host(rebooting))


def test_initial_state_depends_on_provisioning():
    assert logic.initial_state("provisioned") == LOCKED_ONLINE
    assert logic.initial_state("discovered") == LOCKED_OFFLINE
    assert logic.initial_state("provisioning") == LOCKED_OFFLINE


def test_provisioning_brings_a_locked_offline_host_online_only():
    assert logic.provisioned(LOCKED_OFFLINE).to == LOCKED_ONLINE
    assert logic.provisioned(LOCKED_ONLINE) is None
    assert logic.provisioned(IN_SERVICE) is None
    assert logic.provisioned(State(L, D, A.offline, "Rebooting")) is None


def test_a_restarted_step_keeps_the_state_and_starts_again():
    t = logic.restart_step("intest", INTEST)
    assert t.to == INTEST and t.step == "intest" and t.reason == logic.STEP_RESTARTED
