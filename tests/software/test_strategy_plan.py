"""Planning a strategy (pure): which hosts go together and which steps each stage has."""

from __future__ import annotations

import random

from roost_software.strategy_logic import HostPlan, batches, plan
from roost_software.strategy_models import StrategyCreate

HOSTS = [HostPlan("controller-0", "controller")] + [
    HostPlan(f"worker-{i}", "worker") for i in range(4)
]


def names(p) -> list[tuple[str, list[str]]]:
    return [(s["name"], s["hosts"]) for s in p.stages]


def test_serial_updates_controllers_first_then_one_worker_per_stage():
    p = plan(
        StrategyCreate(release="r"),
        hosts=HOSTS,
        applies_to=["controller", "worker"],
        up_to_date=[],
        reboot_required=True,
        groups={},
    )
    assert names(p) == [
        ("deploy-start", []),
        ("controllers", ["controller-0"]),
        ("workers", ["worker-0"]),
        ("workers", ["worker-1"]),
        ("workers", ["worker-2"]),
        ("workers", ["worker-3"]),
        ("deploy-complete", []),
    ]
    steps = [s["name"] for s in p.stages[2]["steps"]]
    assert steps == [
        "query-alarms",
        "lock-hosts",
        "install",
        "reboot",
        "unlock-hosts",
        "wait-hosts-available",
        "wait-alarms-clear",
    ]


def test_parallel_never_takes_both_members_of_a_group_down_together():
    groups = {"app": ["worker-0", "worker-1"], "db": ["worker-2", "worker-3"]}
    p = plan(
        StrategyCreate(release="r", worker_apply_type="parallel", max_parallel_worker_hosts=2),
        hosts=HOSTS,
        applies_to=["worker"],
        up_to_date=[],
        reboot_required=False,
        groups=groups,
    )
    worker_stages = [s["hosts"] for s in p.stages if s["name"] == "workers"]
    assert len(worker_stages) == 2 and all(len(s) == 2 for s in worker_stages)
    for stage in worker_stages:
        assert not {"worker-0", "worker-1"} <= set(stage)
        assert not {"worker-2", "worker-3"} <= set(stage)
    steps = [s["name"] for s in p.stages[1]["steps"]]
    assert "swact-services" in steps and "restore-services" in steps and "reboot" not in steps
    assert p.skipped["controller-0"] == "the release does not apply to controller hosts"


def test_hosts_already_running_the_release_and_ignored_types_are_left_out():
    p = plan(
        StrategyCreate(release="r", controller_apply_type="ignore"),
        hosts=HOSTS,
        applies_to=["controller", "worker"],
        up_to_date=["worker-1"],
        reboot_required=False,
        groups={},
    )
    assert [s["hosts"] for s in p.stages if s["name"] == "workers"] == [
        ["worker-0"],
        ["worker-2"],
        ["worker-3"],
    ]
    assert p.skipped == {
        "controller-0": "controller-apply-type is ignore",
        "worker-1": "already runs the release",
    }


def test_stop_start_does_not_swact_but_still_waits_for_services_to_come_back():
    p = plan(
        StrategyCreate(release="r", default_instance_action="stop-start"),
        hosts=HOSTS,
        applies_to=["worker"],
        up_to_date=[],
        reboot_required=False,
        groups={"app": ["worker-0", "worker-1"]},
    )
    steps = [s["name"] for s in p.stages[1]["steps"]]
    assert "swact-services" not in steps and "restore-services" in steps


def test_batches_respect_the_limit_and_every_group_at_random():
    rng = random.Random(7)
    for _ in range(200):
        hosts = [f"w{i}" for i in range(rng.randint(1, 40))]
        groups = {
            f"g{k}": rng.sample(hosts, min(len(hosts), rng.randint(1, 3)))
            for k in range(rng.randint(0, 15))
        }
        limit = rng.randint(1, 8)
        stages = batches(hosts, limit, groups)
        assert sorted(h for s in stages for h in s) == sorted(hosts)
        for stage in stages:
            assert len(stage) <= limit
            for members in groups.values():
                assert len(set(members) & set(stage)) <= 1 or len(set(members)) < 2
