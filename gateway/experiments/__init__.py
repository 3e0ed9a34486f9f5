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
from ._report import HOW_TO_READ
from ._sequential import RatioMoments, always_valid_factor, always_valid_p, holm, ratio_mean_var
from ._shadow import ShadowMirror, cosine_similarities
from ._stats import two_proportion_z, welch_t
from ._units import CLUSTERS, UNIT_BITS, unit_hash

__all__ = [
    "BUCKETS",
    "CLUSTERS",
    "FEEDBACK_TTL_S",
    "HOW_TO_READ",
    "LATENCY_EDGES_MS",
    "UNIT_BITS",
    "ArmCounts",
    "ArmRange",
    "Assignment",
    "CounterStore",
    "ExperimentEngine",
    "FeedbackLedger",
    "GuardState",
    "MemoryCounterStore",
    "RatioMoments",
    "RedisCounterStore",
    "ShadowMirror",
    "always_valid_factor",
    "always_valid_p",
    "arm_ranges",
    "assign",
    "bucket_of",
    "control_arm",
    "cosine_similarities",
    "holm",
    "ratio_mean_var",
    "two_proportion_z",
    "unit_hash",
    "welch_t",
]
