"""Prometheus metrics, one registry per process owned by the app's lifespan (no module globals)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """A registry plus memoised metric constructors, so modules can ask for a metric by name."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # RSS and CPU seconds: the "light" budget
        PlatformCollector(registry=self.registry)
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        """A ``roost_<name>_total`` counter."""
        return self._get(Counter, name, doc, labels)  # type: ignore[return-value]

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        """A ``roost_<name>`` gauge."""
        return self._get(Gauge, name, doc, labels)  # type: ignore[return-value]

    def histogram(self, name: str, doc: str, labels: Sequence[str] = ()) -> Histogram:
        """A ``roost_<name>`` histogram with latency buckets from 1 ms to 10 s."""
        return self._get(Histogram, name, doc, labels, buckets=LATENCY_BUCKETS)  # type: ignore[return-value]

    def _get(self, kind: type, name: str, doc: str, labels: Sequence[str], **kw: object):
        metric = self._metrics.get(name)
        if metric is None:
            metric = kind(f"roost_{name}", doc, list(labels), registry=self.registry, **kw)
            self._metrics[name] = metric
        return metric

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
