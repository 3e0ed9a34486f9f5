"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "prism_requests",
            "Requests answered, by door, route, model, version and outcome",
            ["door", "route", "model", "version", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "prism_request_latency_seconds",
            "End-to-end latency inside the gateway",
            ["door", "route", "model", "version"],
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
        self.cache_errors = Counter(
            "prism_cache_errors", "Cache store failures (served uncached)", registry=r
        )
        self.errors = Counter("prism_errors", "Errors by code", ["code"], registry=r)
        self.upstream_errors = Counter(
            "prism_upstream_errors", "Failed calls to a target", ["target", "code"], registry=r
        )
        self.policy_reloads = Counter(
            "prism_policy_reloads", "Policy reload attempts by result", ["result"], registry=r
        )
        self.policy_valid = Gauge(
            "prism_policy_last_reload_ok", "1 when the last policy reload succeeded", registry=r
        )
        self.batch_size = Histogram(
            "prism_batch_size",
            "Inputs per model forward",
            ["target"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.queue_depth = Gauge(
            "prism_queue_depth", "Inputs waiting in a local model's batcher", ["target"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
