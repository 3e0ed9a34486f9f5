"""Sticky arm assignment: the same unit lands in the same arm, in every process, every day.

A unit (``routing.unit``, e.g. a user id) is hashed with the experiment's salt into one of
:data:`BUCKETS` buckets with SHA-256 (Python's ``hash`` is salted per process). Arms own
cumulative bucket ranges in the order the policy lists them, so while the weights keep their
sum (write them as percentages), changing 90/10 to 80/20 moves exactly the units in buckets
8000-8999 and nobody else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from ..ids import random_hex
from ..policy import Experiment

BUCKETS = 10_000


def bucket_of(salt: str, unit: str) -> int:
    """0 <= bucket < BUCKETS, a pure function of (salt, unit)."""
    digest = hashlib.sha256(f"{salt}\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class ArmRange:
    arm: str
    #: buckets [start, end) belong to this arm
    start: int
    end: int


def arm_ranges(experiment: Experiment) -> list[ArmRange]:
    """Cumulative bucket ranges by weight, in the policy's arm order."""
    total = sum(arm.weight for arm in experiment.arms.values())
    out: list[ArmRange] = []
    cumulative = 0.0
    start = 0
    for name, arm in experiment.arms.items():
        cumulative += arm.weight
        # rounding the cumulative edge (not each width) keeps the edges where they were
        # when a later arm's weight changes
        end = round(BUCKETS * cumulative / total)
        out.append(ArmRange(name, start, end))
        start = end
    return out


def control_arm(experiment: Experiment) -> str:
    return experiment.control or next(iter(experiment.arms))


@dataclass(frozen=True)
class Assignment:
    arm: str
    bucket: int
    unit: str
    #: the arm the hash chose, when it is stopped and the control serves instead
    stopped_arm: str | None = None


def assign(
    name: str, experiment: Experiment, unit: str | None, stopped: Collection[str] = ()
) -> Assignment:
    """The arm for ``unit`` (a random unit when None: a one-off, non-sticky assignment)."""
    unit = unit if unit is not None else "anon-" + random_hex()
    bucket = bucket_of(experiment.salt or name, unit)
    chosen = next(r.arm for r in arm_ranges(experiment) if r.start <= bucket < r.end)
    if chosen in stopped:
        return Assignment(control_arm(experiment), bucket, unit, stopped_arm=chosen)
    return Assignment(chosen, bucket, unit)
