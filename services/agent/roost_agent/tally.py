"""Counters without prometheus_client: the agent has no HTTP server and a tight memory budget.

:class:`Tally` offers the part of :class:`roost_shared.metrics.Metrics` that the bus uses
(``counter``/``gauge``/``histogram`` with ``labels(...)``), keeps plain numbers, and renders them
in Prometheus text format for node_exporter's textfile collector (``state_dir/metrics.prom``).
Histograms keep only count and sum.
"""

from __future__ import annotations

from collections.abc import Sequence


class _Child:
    __slots__ = ("count", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.count = 0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value

    def observe(self, value: float) -> None:
        self.value += value
        self.count += 1


class _Metric:
    def __init__(self, name: str, doc: str, kind: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.kind, self.label_names = name, doc, kind, tuple(labels)
        self.children: dict[tuple[str, ...], _Child] = {}

    def labels(self, *values: object) -> _Child:
        key = tuple(str(v) for v in values)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = _Child()
        return child

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def value(self, *values: object) -> float:
        child = self.children.get(tuple(str(v) for v in values))
        return child.value if child else 0.0

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} {self.kind}"]
        for key, child in sorted(self.children.items()):
            labels = ",".join(f'{n}="{v}"' for n, v in zip(self.label_names, key, strict=True))
            braces = f"{{{labels}}}" if labels else ""
            if self.kind == "summary":
                lines.append(f"{self.name}_sum{braces} {child.value}")
                lines.append(f"{self.name}_count{braces} {child.count}")
            else:
                lines.append(f"{self.name}{braces} {child.value}")
        return lines


class Tally:
    """A Metrics look-alike: ``roost_<name>_total`` counters, ``roost_<name>`` gauges."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._metrics: dict[str, _Metric] = {}

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> _Metric:
        return self._get(f"roost_{name}_total", doc, "counter", labels)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> _Metric:
        return self._get(f"roost_{name}", doc, "gauge", labels)

    def histogram(self, name: str, doc: str, labels: Sequence[str] = ()) -> _Metric:
        return self._get(f"roost_{name}", doc, "summary", labels)

    def _get(self, name: str, doc: str, kind: str, labels: Sequence[str]) -> _Metric:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = _Metric(name, doc, kind, labels)
        return metric

    def exposition(self) -> bytes:
        lines = [line for m in self._metrics.values() for line in m.render()]
        return ("\n".join(lines) + "\n").encode()
