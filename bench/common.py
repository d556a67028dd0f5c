"""What every benchmark shares: the result record, the table printer and the JSON writer."""

from __future__ import annotations

import json
import platform
import statistics
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    cpus = len(__import__("os").sched_getaffinity(0))
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
