"""What every benchmark shares: the result record, the table printer, the JSON writer and the
run's own RabbitMQ vhost."""

from __future__ import annotations

import atexit
import json
import os
import platform
import statistics
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
#: The run's broker passwords (one file per user) and its users' site suffix, inherited by
#: every process a run starts.
PASSWORDS_ENV = "ROOST_BROKER_PASSWORDS_DIR"
SITE_ENV = "ROOST_BROKER_SITE"


def machine() -> str:
    cpus = len(os.sched_getaffinity(0))
    return f"{platform.node()} {platform.machine()} {cpus} cpu python {platform.python_version()}"


@dataclass
class Result:
    metric: str
    value: float
    unit: str
    peer: str | None = None
    peer_value: float | None = None
    ratio: float | None = None
    machine: str = ""
    when: str = ""


def result(
    metric: str,
    value: float,
    unit: str,
    peer: str | None = None,
    peer_value: float | None = None,
    higher_is_better: bool = True,
) -> Result:
    """One figure; with a peer, ``ratio`` is how many times better Roost is (>1 is better)."""
    ratio = None
    if peer_value not in (None, 0) and value:
        ratio = value / peer_value if higher_is_better else peer_value / value
    return Result(
        metric,
        round(value, 3),
        unit,
        peer,
        None if peer_value is None else round(peer_value, 3),
        None if ratio is None else round(ratio, 2),
        machine(),
        datetime.now(UTC).isoformat(timespec="seconds"),
    )


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(name: str, results: list[Result]) -> None:
    """Print a table and write ``bench/results/<name>.json``."""
    header = (
        f"{'metric':<44} {'value':>12} {'unit':<8} {'peer':<14} {'peer value':>11} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        peer_value = "" if r.peer_value is None else f"{r.peer_value:.3f}"
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        print(
            f"{r.metric:<44} {r.value:>12.3f} {r.unit:<8} {r.peer or '':<14} "
            f"{peer_value:>11} {ratio:>6}"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(f"wrote {RESULTS / (name + '.json')}")


def bench_vhost(tmp: Path) -> tuple[str, str]:
    """A RabbitMQ vhost of the run's own and guest's URL for it: ``(name, amqp_url)``.

    Every consumer believes an event only from its owner's broker user, so the services and
    agents a run starts connect as their own ``roost-<service>.<site>`` / ``roost-agent.<site>``,
    as under ``make run``: the run is a broker site of its own (``b<hex>``, so a ``make run`` or
    a test session on the same broker keeps its users and passwords), its users are made once per
    process with their passwords in ``tmp/broker-users``, and ``ROOST_BROKER_PASSWORDS_DIR`` and
    ``ROOST_BROKER_SITE`` are set for every process the run starts. The vhost grants guest
    everything (the run's listeners and probes) and each of the site's users its own
    permissions. A run publishes its own events with ``roost_shared.producer.ProducerBus`` (each
    as its owner's user) and deletes the vhost itself (``rabbitmqctl delete_vhost``).
    """
    from roost_shared import brokerusers

    directory = Path(os.environ.get(PASSWORDS_ENV, tmp / "broker-users"))
    if not os.environ.get(SITE_ENV) or not directory.is_dir():
        site = f"b{uuid.uuid4().hex[:8]}"
        brokerusers.ensure(directory, [], site=site)
        os.environ[PASSWORDS_ENV] = str(directory)
        os.environ[SITE_ENV] = site
        atexit.register(brokerusers.remove, site)  # the run's users go with it
    name = f"roost-bench-{uuid.uuid4().hex[:8]}"
    brokerusers.add_vhost(name, directory, os.environ[SITE_ENV], admins=("guest",))
    return name, f"amqp://guest:guest@127.0.0.1:5672/{name}"
