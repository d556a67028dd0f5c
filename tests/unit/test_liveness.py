"""The heartbeat rules without I/O: when a host is probed, silent, or has lost one path."""

from __future__ import annotations

import random

from roost_host.liveness import Liveness, Path, Thresholds, mnfa_group

T = Thresholds()  # 100 ms period, probe at 200 ms, fail at 300 ms, probe timeout 150 ms


def beating(until: float, *, loss: float = 0.0, seed: int = 1) -> Liveness:
    """A host heard on UDP every 100 ms up to ``until`` (losing ``loss`` of them)."""
    rng = random.Random(seed)
    live = Liveness.new("02:00:00:00:00:01", 0.0)
    t = 0.0
    while t <= until:
        if rng.random() >= loss:
            live.heard(t, Path.udp, "boot-1")
        t += 0.1
    return live


def test_a_healthy_host_is_neither_probed_nor_silent():
    live = beating(5.0)
    a = live.assess(5.05, T)
    assert not (a.probe_due or a.silent or a.udp_lost or a.pending)


def test_udp_silence_probes_then_fails_only_when_the_probe_is_unanswered():
    live = beating(1.0)
    assert not live.assess(1.15, T).probe_due
    a = live.assess(1.2, T)
    assert a.probe_due and not a.silent
    live.probe(1.2)
    assert live.assess(1.25, T).pending
    # UDP silent past 300 ms but the probe is only 100 ms old: not yet.
    assert not live.assess(1.3, T).silent
    a = live.assess(1.36, T)
    assert a.silent and not a.udp_lost
    assert not live.alive_now(1.36, T)


def test_an_answered_probe_keeps_a_host_with_a_dead_udp_path_alive_but_degraded():
    live = beating(1.0)
    now = 1.2
    for _ in range(30):  # 4.5 s of UDP silence, probes answered on the bus within 5 ms
        a = live.assess(now, T)
        assert not a.silent
        if a.probe_due:
            live.probe(now)
            live.heard(now + 0.005, Path.bus, "boot-1")
        now += 0.15
    a = live.assess(now, T)
    assert a.udp_lost and not a.silent and not a.bus_lost


def test_bus_silence_alone_is_a_lost_bus_path_not_a_failure():
    live = Liveness.new("02:00:00:00:00:01", 0.0)
    for i in range(160):  # 16 s of UDP, no bus at all
        live.heard(i * 0.1, Path.udp, "boot-1")
    a = live.assess(16.0, T)
    assert a.bus_lost and not a.silent and not a.probe_due


def test_ten_percent_udp_loss_never_makes_a_host_silent_when_the_bus_answers():
    live = beating(0.0)
    rng = random.Random(7)
    t, silent, probes = 0.0, 0, 0
    while t < 600:  # ten minutes at 10 Hz
        t = round(t + 0.1, 6)
        if rng.random() >= 0.10:
            live.heard(t, Path.udp, "boot-1")
        for step in (0.0, 0.025, 0.05, 0.075):  # the monitor's ticks
            a = live.assess(t + step, T)
            silent += a.silent
            if a.probe_due:
                probes += 1
                live.probe(t + step)
                live.heard(t + step + 0.005, Path.bus, "boot-1")
    assert silent == 0
    assert 0 < probes < 600  # about one probe per 100 heartbeats


def test_a_new_boot_id_is_reported():
    live = beating(1.0)
    assert not live.heard(1.1, Path.udp, "boot-1")
    assert live.heard(1.2, Path.udp, "boot-2")


def test_a_returning_host_is_marked():
    live = beating(1.0)
    live.probe(1.2)
    assert live.assess(1.4, T).silent
    assert live.returned_at is None
    live.heard(2.0, Path.udp, "boot-2")
    assert live.returned_at == 2.0 and live.alive_now(2.0, T)


def test_multi_node_failure_avoidance_counts_silent_and_held_hosts():
    assert not mnfa_group(["a"], [], 2)
    assert mnfa_group(["a", "b"], [], 2)
    assert mnfa_group(["a"], ["b"], 2)
    assert not mnfa_group(["a"], ["a"], 2)
    assert not mnfa_group(["a", "b", "c"], [], 0)  # turned off
