"""The host state machine: StarlingX mtce's rules for actions on a host, without any I/O.

A host has three states (``administrative``, ``operational``, ``availability``) plus a ``task``
text. :func:`decide` checks an operator action against the host (and, for locks, against the
other controllers) and returns the transition it causes, or raises :class:`Refused` with the
reason. Timed steps (the unlock in-test, a reboot, a power-on) are a transition now plus a
``Step`` that :func:`complete_step` finishes later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from roost_host.models import Action, Administrative, Availability, Operational

#: The task shown while a timed step runs (StarlingX shows e.g. "Testing" during in-test).
TASKS = {
    "intest": "Testing",
    "reboot": "Rebooting",
    "reset": "Resetting",
    "reinstall": "Reinstalling",
    "power-on": "Powering-on",
    "power-off": "Powering-off",
}

#: Steps that go through the host's BMC when it has one (``reboot`` asks the host itself).
BMC_STEPS = {"power-on": "on", "power-off": "off", "reset": "reset", "reinstall": "cycle"}
BMC_DONE = "bmc-done"
BMC_FAILED = "bmc-failed"

#: Reason codes written to the timeline and ``host.state.changed``.
OPERATOR = "operator-request"
FORCED_LAST_CONTROLLER = "forced-last-controller"
INTEST_PASSED = "intest-passed"
STEP_DONE = "step-complete"
STEP_RESTARTED = "step-restarted"
LEARNED = "learned"
PROVISIONED = "provisioned"


@dataclass(frozen=True, slots=True)
class State:
    administrative: Administrative
    operational: Operational
    availability: Availability
    task: str = ""

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> State:
        return cls(
            Administrative(doc["administrative"]),
            Operational(doc["operational"]),
            Availability(doc["availability"]),
            doc.get("task") or "",
        )

    def fields(self) -> dict[str, str]:
        return {
            "administrative": self.administrative.value,
            "operational": self.operational.value,
            "availability": self.availability.value,
        }

    def __str__(self) -> str:
        text = f"{self.administrative}-{self.operational}-{self.availability}"
        return f"{text} ({self.task})" if self.task else text


#: Where a host starts when config tells us about it: locked and disabled, like a freshly
#: added StarlingX host; ``online`` once config has provisioned it (its agent has applied its
#: configuration, so it runs), ``offline`` before that (discovered, provisioning, failed).
def initial_state(install_state: str | None) -> State:
    availability = Availability.online if install_state == "provisioned" else Availability.offline
    return State(Administrative.locked, Operational.disabled, availability)


@dataclass(frozen=True, slots=True)
class Transition:
    """What an action or a step does: the new state, why, and what runs next (if anything)."""

    to: State
    cause: str
    reason: str
    step: str | None = None  # a timed step to finish later (``TASKS`` key)

    @property
    def raises_lock_alarm(self) -> bool:
        return self.to.administrative is Administrative.locked


class Refused(Exception):
    """The action is not allowed in the host's current state; ``str()`` is the reason."""

    def __init__(self, reason: str, state: State) -> None:
        super().__init__(reason)
        self.reason = reason
        self.state = state


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the rules need to know about the host acted on."""

    hostname: str | None
    personality: str | None
    state: State
    #: Whether an IPMI BMC is configured: power actions then go through it (a timed step that
    #: calls the BMC) instead of being simulated.
    bmc: bool = False


def unlocked_enabled(state: State) -> bool:
    return (
        state.administrative is Administrative.unlocked and state.operational is Operational.enabled
    )


def _locked_state(current: State) -> State:
    """Lock → locked-disabled-online, or -offline/-power-off if the host was not reachable."""
    if current.availability in (Availability.failed, Availability.offline):
        availability = Availability.offline
    elif current.availability is Availability.power_off:
        availability = Availability.power_off
    else:
        availability = Availability.online
    return State(Administrative.locked, Operational.disabled, availability)


def decide(
    action: Action,
    host: HostFacts,
    *,
    other_controllers: Iterable[State] = (),
    reason: str = "",
) -> Transition:
    """Check ``action`` against StarlingX's rules; the transition it causes, or ``Refused``.

    ``other_controllers`` are the states of every *other* controller (the last unlocked-enabled
    controller cannot be locked, only force-locked).
    """
    s = host.state
    name = host.hostname or "this host"

    def refuse(why: str) -> Refused:
        return Refused(f"cannot {action.value} {name}: {why} (current state: {s})", s)

    if not host.hostname or not host.personality:
        raise refuse("it has no hostname and personality yet; provision it in config first")
    note = f": {reason}" if reason else ""

    if action in (Action.lock, Action.force_lock):
        if s.administrative is not Administrative.unlocked:
            raise refuse("it is already locked")
        code = OPERATOR
        if (
            host.personality == "controller"
            and unlocked_enabled(s)
            and not any(unlocked_enabled(o) for o in other_controllers)
        ):
            if action is Action.lock:
                raise refuse(
                    "it is the last unlocked-enabled controller; locking it would leave the "
                    "system without a controller (force-lock overrides)"
                )
            code = FORCED_LAST_CONTROLLER
        return Transition(_locked_state(s), f"{action.value} requested{note}", code)

    if s.task:
        raise refuse(f"an operation is in progress ({s.task})")

    if action is Action.unlock:
        if s.administrative is not Administrative.locked:
            raise refuse("it is already unlocked")
        if s.availability is Availability.power_off:
            raise refuse("it is powered off; power it on first")
        if s.availability is Availability.offline:
            raise refuse("it is offline; it must be online to run its in-test")
        to = State(
            Administrative.unlocked, Operational.disabled, Availability.intest, TASKS["intest"]
        )
        return Transition(to, f"unlock requested{note}", OPERATOR, step="intest")

    # Everything else acts on a locked host only.
    if s.administrative is not Administrative.locked:
        raise refuse("it is unlocked; lock it first")

    if action is Action.power_on:
        if s.availability is not Availability.power_off:
            raise refuse("it is not powered off")
        to = State(s.administrative, s.operational, Availability.offline, TASKS["power-on"])
        return Transition(to, f"power-on requested{note}", OPERATOR, step="power-on")

    if s.availability is Availability.power_off:
        raise refuse("it is powered off; power it on first")

    if action is Action.power_off:
        if host.bmc:
            to = State(s.administrative, s.operational, s.availability, TASKS["power-off"])
            return Transition(to, f"power-off requested{note}", OPERATOR, step="power-off")
        to = State(s.administrative, s.operational, Availability.power_off)
        return Transition(to, f"power-off requested{note}", OPERATOR)

    if action is Action.reboot and s.availability is not Availability.online:
        raise refuse("it is offline and cannot be asked to reboot; reset it instead")
    step = action.value  # reboot, reset or reinstall: down now, back online when done
    to = State(s.administrative, s.operational, Availability.offline, TASKS[step])
    return Transition(to, f"{action.value} requested{note}", OPERATOR, step=step)


def complete_step(step: str, s: State) -> Transition:
    """The end of a timed step. In this version the in-test passes once its time is up (later
    versions check heartbeats during it); a reboot, reset, reinstall or power-on brings the host
    back online."""
    if step == "intest":
        to = State(Administrative.unlocked, Operational.enabled, Availability.available)
        return Transition(to, "in-test passed", INTEST_PASSED)
    to = State(s.administrative, s.operational, Availability.online)
    return Transition(to, f"{step} complete; host is online", STEP_DONE)


def restart_step(step: str, s: State) -> Transition:
    """A timed step interrupted by a host-service restart starts again from the beginning: what
    it observed before the restart is gone, so it is not trusted."""
    return Transition(
        s, f"{step} restarted after a host service restart", STEP_RESTARTED, step=step
    )


def provisioned(s: State) -> Transition | None:
    """Config provisioned the host: a locked offline host comes online (its agent runs)."""
    if s.administrative is Administrative.locked and s.availability is Availability.offline:
        if not s.task:
            return Transition(
                State(s.administrative, s.operational, Availability.online),
                "provisioned by config",
                PROVISIONED,
            )
    return None


# Heartbeats, failures and recovery ------------------------------------------------------------

HEARTBEAT_LOST = "heartbeat-lost"
HEARTBEAT_LOST_POWER_OFF = "heartbeat-lost-power-off"
HEARTBEAT_LOST_UNCONFIRMED = "heartbeat-lost-bmc-unconfirmed"
HEARTBEAT_RESTORED = "heartbeat-restored"
PATH_LOST = "heartbeat-path-lost"
PATH_RESTORED = "heartbeat-path-restored"
MNFA_HOLD = "mnfa-hold"
INTEST_FAILED = "intest-failed"
RECOVERY_FENCE = "recovery-fence"
RECOVERY_FENCED = "recovery-fenced"
RECOVERY_POWER_ON = "recovery-power-on"
RECOVERY_RETURNED = "recovery-host-returned"
RECOVERY_RETRY = "recovery-retry"
RECOVERY_GAVE_UP = "recovery-gave-up"
RECOVERY_WAITING = "recovery-waiting"

#: Tasks shown while auto-recovery works on a failed host.
RECOVERY_TASKS = {
    "fence": "Recovering: fencing",
    "power-on": "Recovering: powering on",
    "boot": "Recovering: waiting for host",
    "wait": "Recovering: waiting for host",
    "backoff": "Recovering: retry pending",
}


def monitored(s: State) -> bool:
    """Unlocked-enabled hosts are failed on heartbeat loss; others are not (locked hosts just go
    offline, hosts in a timed step or in recovery are the step's business)."""
    return unlocked_enabled(s) and not s.task


def degraded(s: State, causes: list[str]) -> Transition | None:
    """An enabled host with at least one degrade cause is ``degraded``, without any ``available``
    (``causes`` are words like "management network (UDP) heartbeat lost")."""
    if not monitored(s):
        return None
    if causes and s.availability is Availability.available:
        to = State(s.administrative, s.operational, Availability.degraded)
        return Transition(to, "degraded: " + "; ".join(causes), PATH_LOST)
    if not causes and s.availability is Availability.degraded:
        to = State(s.administrative, s.operational, Availability.available)
        return Transition(to, "every heartbeat path is healthy again", PATH_RESTORED)
    return None


def failed(s: State, reason: str, cause: str) -> Transition | None:
    """Heartbeat lost on every path: an unlocked host fails (unlocked-disabled-failed); a locked
    online host just goes offline (nothing runs on it; nothing to recover)."""
    if s.administrative is Administrative.locked:
        if s.availability is Availability.online and not s.task:
            to = State(s.administrative, s.operational, Availability.offline)
            return Transition(to, cause, reason)
        return None
    if not monitored(s):
        return None
    to = State(Administrative.unlocked, Operational.disabled, Availability.failed)
    return Transition(to, cause, reason)


def back_online(s: State) -> Transition | None:
    """A locked host that went offline on heartbeat loss is heard again."""
    if (
        s.administrative is Administrative.locked
        and s.availability is Availability.offline
        and not s.task
    ):
        to = State(s.administrative, s.operational, Availability.online)
        return Transition(to, "heartbeats heard again", HEARTBEAT_RESTORED)
    return None


def intest_failed(s: State, why: str) -> Transition:
    to = State(Administrative.unlocked, Operational.disabled, Availability.failed)
    return Transition(to, f"in-test failed: {why}", INTEST_FAILED)


def recovery_task(s: State, phase: str, cause: str, reason: str) -> Transition:
    """A failed host's recovery moves on (the states stay; the task tells the phase)."""
    return Transition(
        State(s.administrative, s.operational, s.availability, RECOVERY_TASKS.get(phase, "")),
        cause,
        reason,
    )


def recovered_to_intest(cause: str, reason: str) -> Transition:
    """The failed host heartbeats again: run the in-test before enabling it."""
    to = State(Administrative.unlocked, Operational.disabled, Availability.intest, TASKS["intest"])
    return Transition(to, cause, reason, step="intest")


def gave_up(s: State, why: str) -> Transition:
    to = State(s.administrative, Operational.disabled, Availability.failed)
    return Transition(to, f"auto-recovery gave up: {why}", RECOVERY_GAVE_UP)


def power_step_done(step: str, s: State, *, waits_for_agent: bool) -> Transition:
    """A power step the BMC carried out: off → ``power-off``; on, reset, reinstall → the host
    boots: ``offline`` until its agent is heard (the monitor brings it online), or ``online``
    at once for a host whose agent was never heard (nothing to wait for)."""
    if step == "power-off":
        to = State(s.administrative, s.operational, Availability.power_off)
        return Transition(to, "BMC reports power off", BMC_DONE)
    availability = Availability.offline if waits_for_agent else Availability.online
    to = State(s.administrative, s.operational, availability)
    tail = "; waiting for its agent" if waits_for_agent else ""
    return Transition(to, f"{step} done through the BMC{tail}", BMC_DONE)


def power_step_failed(step: str, s: State, previous: Availability, why: str) -> Transition:
    """The BMC could not do it: back to where the host was, task cleared, the reason kept."""
    to = State(s.administrative, s.operational, previous)
    return Transition(to, f"{step} failed: {why}", BMC_FAILED)
