"""Prometheus metrics, one registry per app (tests build many apps in one process).

Counters the data path updates live here; what backends count themselves (batch sizes,
queue depth, upstream calls) is read at scrape time by :class:`BackendCollector`, so the
hot path never touches Prometheus objects and ``backends`` never imports ``gateway``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from prism.backends import Backend, LocalBackend, RemoteStats

from .cache import CacheStats
from .in_flight import InFlight

#: label sets one :class:`Children` remembers before it starts over
CHILDREN_MAX = 4096

_M = TypeVar("_M", Counter, Histogram)


class Children(Generic[_M]):
    """A labelled metric's children by label values, each looked up in Prometheus once:
    ``labels()`` (str() of every value, a lock, a dict) costs more than the increment
    itself, and the data path counts a few of them per request."""

    def __init__(self, metric: _M) -> None:
        self.metric: _M = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            if len(self._children) >= CHILDREN_MAX:  # label values are bounded; this is a guard
                self._children.clear()
            child = self._children[values] = self.metric.labels(*values)
        return child


LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "prism_requests",
            "Requests answered, by door, route, model, version, target and outcome",
            ["door", "route", "model", "version", "target", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "prism_request_latency_seconds",
            "End-to-end latency inside the gateway",
            ["door", "route", "model", "version", "target"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.backend_latency = Histogram(
            "prism_backend_latency_seconds",
            "Time spent in the backend, per target",
            ["target"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.cache = Counter(
            "prism_cache_lookups", "Cache lookups per input, by result", ["result"], registry=r
        )
        self.errors = Counter("prism_errors", "Errors by code", ["code"], registry=r)
        self.upstream_errors = Counter(
            "prism_upstream_errors", "Failed calls to a target", ["target", "code"], registry=r
        )
        #: the children the data path counts on, looked up once per label set
        self.requests_of = Children(self.requests)
        self.latency_of = Children(self.latency)
        self.cache_of = Children(self.cache)
        self.errors_of = Children(self.errors)
        self.backend_latency_of = Children(self.backend_latency)
        self.policy_reloads = Counter(
            "prism_policy_reloads", "Policy reload attempts by result", ["result"], registry=r
        )
        self.policy_valid = Gauge(
            "prism_policy_last_reload_ok", "1 when the last policy reload succeeded", registry=r
        )

    def count_in_flight(self) -> InFlight:
        """The counter behind ``prism_in_flight_requests``; its middleware goes in the app."""
        counter = InFlight()
        self.registry.register(InFlightCollector(counter))
        return counter

    def watch_backends(self, source: Callable[[], Iterable[tuple[str, Backend]]]) -> None:
        """Export the stats of the backends ``source()`` lists (target key, backend)."""
        self.registry.register(BackendCollector(source))

    def watch_cache(self, stats: Callable[[], CacheStats]) -> None:
        """Export the response cache's own counters (the cache keeps them; no copy here)."""
        self.registry.register(CacheCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CacheCollector(Collector):
    """Cache store failures, read from :class:`CacheStats` at scrape time."""

    def __init__(self, stats: Callable[[], CacheStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "prism_cache_errors", "Cache store failures (requests served uncached)"
        )
        errors.add_metric([], self.stats().errors)
        yield errors


class InFlightCollector(Collector):
    """Requests being served now, read from :class:`InFlight` at scrape time."""

    def __init__(self, counter: InFlight) -> None:
        self.counter = counter

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "prism_in_flight_requests",
            "Requests this process is serving now (probes and scrapes excluded): the "
            "autoscaling signal",
        )
        gauge.add_metric([], self.counter.count)
        yield gauge


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class BackendCollector(Collector):
    """Batcher and upstream statistics, collected from the live backends at scrape time."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, Backend]]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        sizes = HistogramMetricFamily(
            "prism_batch_size", "Inputs per model forward", labels=["target"]
        )
        depth = GaugeMetricFamily(
            "prism_queue_depth", "Inputs waiting in a local model's batcher", labels=["target"]
        )
        refused = CounterMetricFamily(
            "prism_batcher_inputs",
            "Inputs a batcher did not compute: rejected (queue full) or dropped (caller left)",
            labels=["target", "outcome"],
        )
        calls = CounterMetricFamily(
            "prism_upstream_calls",
            "Calls to a remote upstream by outcome (ok or an error code)",
            labels=["target", "outcome"],
        )
        latency = SummaryMetricFamily(
            "prism_upstream_call_seconds", "Duration of calls to an upstream", labels=["target"]
        )
        healthy = GaugeMetricFamily(
            "prism_upstream_healthy", "1 when the last probe or call reached it", labels=["target"]
        )
        for target, backend in self.source():
            if isinstance(backend, LocalBackend):
                stats = backend.stats
                buckets, running = [], 0
                for bound in BATCH_BUCKETS:
                    running += sum(
                        n for size, n in stats.sizes.items() if bound // 2 < size <= bound
                    )
                    buckets.append((str(bound), running))
                buckets.append(("+Inf", stats.batches))
                sizes.add_metric([target], buckets, sum_value=stats.inputs)
                depth.add_metric([target], backend.queue_depth)
                refused.add_metric([target, "rejected"], stats.rejected)
                refused.add_metric([target, "dropped"], stats.dropped)
            elif isinstance(rs := getattr(backend, "stats", None), RemoteStats):
                # HTTP remotes, and the gRPC one (which is not an httpx RemoteBackend)
                for outcome, n in sorted(rs.calls.items()):
                    calls.add_metric([target, outcome], n)
                latency.add_metric([target], rs.latency_count, rs.latency_s_sum)
                up = bool(getattr(backend, "healthy", False))
                healthy.add_metric([target], 1.0 if up else 0.0)
        yield from (sizes, depth, refused, calls, latency, healthy)
