"""A/B experiments: sticky assignment, shared outcome counters, guardrails, shadow traffic."""

from ._assignment import BUCKETS, ArmRange, Assignment, arm_ranges, assign, bucket_of, control_arm
from ._counters import (
    LATENCY_EDGES_MS,
    ArmCounts,
    CounterStore,
    GuardState,
    MemoryCounterStore,
    RedisCounterStore,
)
from ._engine import ExperimentEngine
from ._feedback import FEEDBACK_TTL_S, FeedbackLedger
from ._shadow import ShadowMirror, cosine_similarities
from ._stats import two_proportion_z, welch_t

__all__ = [
    "BUCKETS",
    "FEEDBACK_TTL_S",
    "LATENCY_EDGES_MS",
    "ArmCounts",
    "ArmRange",
    "Assignment",
    "CounterStore",
    "ExperimentEngine",
    "FeedbackLedger",
    "GuardState",
    "MemoryCounterStore",
    "RedisCounterStore",
    "ShadowMirror",
    "arm_ranges",
    "assign",
    "bucket_of",
    "control_arm",
    "cosine_similarities",
    "two_proportion_z",
    "welch_t",
]
