"""Routing among targets: latency tracking, circuit breaking, strategy and budget selection."""

from ._breaker import CircuitBreaker
from ._latency import LatencyTracker
from ._selection import HealthBook, Selection, TargetHealth, TargetSelector

__all__ = [
    "CircuitBreaker",
    "HealthBook",
    "LatencyTracker",
    "Selection",
    "TargetHealth",
    "TargetSelector",
]
