"""An experiment's report: per-arm figures with 95% intervals, comparisons with the control
arm, and the sample-ratio check, computed from the shared totals (no I/O here).

Every interval and test treats the unit as the observation (``_sequential.py``): figures are
per-request means pooled over units, their variances come from the unit clusters by the
delta method. Each comparison carries a fixed-sample interval and p-value and an
always-valid one; the always-valid p-values, Holm-corrected across the experiment's
comparisons, decide ``significant``. :data:`HOW_TO_READ` is the report's own explanation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..policy import Experiment
from ._assignment import arm_ranges, control_arm
from ._counters import ArmCounts, E, GuardState, K, L, N, Q, S, finite
from ._sequential import (
    ALPHA,
    TUNING_UNITS,
    Difference,
    RatioMoments,
    always_valid_interval,
    difference,
    holm,
)
from ._stats import sample_ratio_test
from ._units import CLUSTERS

#: metric -> (numerator, denominator) of its per-cluster ratio, and its rounding
METRICS: dict[str, tuple[int, int, int]] = {
    "error_rate": (E, N, 5),
    "latency_ms": (L, K, 3),
    "quality": (S, Q, 5),
}

HOW_TO_READ = [
    "Each metric is a mean per request (error rate, mean latency of successful requests, "
    "mean feedback score), pooled over all of an arm's units.",
    "The unit (routing.unit) is the independent observation: a unit's requests are alike, so "
    "intervals come from per-unit totals (delta method), not from treating requests as "
    "independent. A request without a unit counts as a unit of its own.",
    "ci95 / difference_ci95 / p_value: fixed-sample figures, right only if you look once, at a "
    "sample size chosen in advance.",
    "always_valid: a 95% confidence sequence (Waudby-Smith et al. 2024) and its p-value: right "
    "however often you look, and whenever you stop. They are wider; that is the price of "
    "looking whenever you like.",
    "significant: the always-valid p-value after Holm's correction across all of the "
    "experiment's comparisons is at most 0.05. Stop when it says so (or when you have enough "
    "units); do not stop because a fixed-sample p-value dipped below 0.05.",
    "sample_ratio: distinct units per arm against the weights (chi-square); mismatch at "
    "p < 0.001 means assignment is broken and no other figure can be trusted.",
]


def build_report(
    name: str,
    experiment: Experiment,
    *,
    totals: Mapping[str, ArmCounts],
    split: Mapping[str, ArmCounts],
    guard: GuardState,
    definitions: Mapping[str, str],
    counters: str,
) -> dict[str, Any]:
    """``totals``: each arm's shared figures; ``split``: assignments under the current split
    (for the sample-ratio test); ``definitions``: what each arm serves; ``counters``: where
    the figures live (``redis``, ``memory`` or ``file``)."""
    control = control_arm(experiment)
    ranges = {r.arm: r for r in arm_ranges(experiment)}
    arms: dict[str, Any] = {}
    for arm_name, arm in experiment.arms.items():
        c = totals[arm_name]
        metrics = {m: _arm_metric(c, m) for m in METRICS}
        arms[arm_name] = {
            "version": arm.version,
            "definition": definitions.get(arm_name),
            "weight": arm.weight,
            "buckets": [ranges[arm_name].start, ranges[arm_name].end],
            "stopped": guard.stopped.get(arm_name),
            "assigned": c.assigned,
            "units": c.units,
            "requests": c.requests,
            "errors": c.errors,
            "error_rate": finite(c.errors / c.requests, 5) if c.requests else None,
            "cached": c.cached,
            "latency_ms": {
                "mean": finite(c.latency_sum_ms / c.successes) if c.successes else None,
                "mean_ci95": metrics["latency_ms"]["ci95"],
                "p50": finite(c.percentile_ms(50)),
                "p95": finite(c.percentile_ms(95)),
            },
            "quality": {
                "count": c.quality_count,
                "mean": finite(c.quality_sum / c.quality_count, 5) if c.quality_count else None,
                "mean_ci95": metrics["quality"]["ci95"],
            },
            "metrics": metrics,
            "shadow": {
                "requests": c.shadow_requests,
                "errors": c.shadow_errors,
                "cosine_mean": finite(c.cosine_sum / c.cosine_count, 5) if c.cosine_count else None,
                "cosine_count": c.cosine_count,
            },
        }
    cos_n = sum(t.cosine_count for t in totals.values())
    cos_sum = sum(t.cosine_sum for t in totals.values())
    return {
        "name": name,
        "route": experiment.route,
        "control": control,
        "shadow": experiment.shadow,
        "state": _state(experiment, control, guard),
        "guardrails": {**experiment.guardrails.model_dump(), "stopped": guard.stopped},
        "counters": counters,
        "arms": arms,
        "shadow_cosine": {
            "mean": finite(cos_sum / cos_n, 5) if cos_n else None,
            "count": cos_n,
        },
        "sample_ratio": _sample_ratio(experiment, split, guard),
        "comparison": _comparisons(experiment, control, totals),
        "statistics": {
            "unit": "routing.unit (a request without one is a unit of its own)",
            "clusters_per_arm": CLUSTERS,
            "alpha": ALPHA,
            "sequential": "asymptotic confidence sequence (Waudby-Smith et al. 2024), "
            f"tightest at {TUNING_UNITS} units",
            "multiple_comparisons": "Holm across the experiment's comparisons",
        },
        "how_to_read": HOW_TO_READ,
    }


def _p(value: float) -> float | None:
    """A p-value to three significant digits: 2.1e-09 stays readable, never rounds to 0."""
    return float(f"{value:.3g}") if math.isfinite(value) else None


def _interval(ci: tuple[float, float] | None, digits: int = 3) -> list[float | None] | None:
    return None if ci is None else [finite(ci[0], digits), finite(ci[1], digits)]


def _state(experiment: Experiment, control: str, guard: GuardState) -> str:
    """running; partly stopped (some arms stopped); control only (every other arm stopped)."""
    if not guard.stopped:
        return "running"
    others = [a for a in experiment.arms if a != control]
    return "control only" if all(a in guard.stopped for a in others) else "partly stopped"


def _sample_ratio(
    experiment: Experiment, totals: Mapping[str, ArmCounts], guard: GuardState
) -> dict[str, Any] | None:
    """Is the split what the weights say? (chi-square on the distinct units assigned since
    the split last changed, not requests: a unit's requests all go to one arm, so request
    counts vary far more than the test assumes; not while an arm is stopped: its units go to
    the control on purpose)."""
    if guard.stopped:
        return None
    arms = list(experiment.arms)
    test = sample_ratio_test(
        [totals[a].units for a in arms], [experiment.arms[a].weight for a in arms]
    )
    if test is None:
        return None
    return {
        "test": "chi-square goodness of fit (distinct units vs weights)",
        "units": {a: totals[a].units for a in arms},
        "chi2": finite(test[0]),
        "p_value": _p(test[1]),
        # the usual SRM alarm level: a split this far off is a bug, not chance
        "mismatch": test[1] < 0.001,
    }


def moments(counts: ArmCounts, metric: str) -> RatioMoments:
    """The metric's running sums over the arm's unit clusters."""
    num, den, _ = METRICS[metric]
    return RatioMoments.of([(row[num], row[den]) for row in counts.clusters.values()])


def error_rate_interval(counts: ArmCounts) -> tuple[float, float, float] | None:
    """(error rate, low, high): the always-valid 95% interval the guardrail reads."""
    return always_valid_interval(moments(counts, "error_rate"), counts.units)


def _arm_metric(counts: ArmCounts, metric: str) -> dict[str, Any]:
    digits = METRICS[metric][2]
    m = moments(counts, metric)
    est = m.estimate()
    seq = always_valid_interval(m, counts.units)
    if est is None or seq is None:
        return {"value": None, "ci95": None, "always_valid_ci95": None, "units": m.clusters}
    half = 1.959963984540054 * math.sqrt(est[1])
    return {
        "value": finite(est[0], digits),
        "ci95": _interval((est[0] - half, est[0] + half), digits),
        "always_valid_ci95": _interval((seq[1], seq[2]), digits),
        # clusters with data: the units behind the figure (collisions aside, below 1,024)
        "units": m.clusters,
    }


_TESTS = {
    "error_rate": "difference of error rates, z on unit-level delta-method variance",
    "latency_ms": "difference of mean latency (ms), z on unit-level delta-method variance",
    "quality": "difference of mean feedback score, z on unit-level delta-method variance",
}
#: the report's name for each metric's comparison
_COMPARED = {"error_rate": "error_rate", "latency_ms": "latency", "quality": "quality"}


def _comparisons(
    experiment: Experiment, control: str, totals: Mapping[str, ArmCounts]
) -> list[dict[str, Any]]:
    """Each arm against the control, metric by metric; Holm across all of them."""
    out: list[dict[str, Any]] = []
    cells: list[tuple[dict[str, Any], Difference]] = []
    a = totals[control]
    for arm in experiment.arms:
        if arm == control:
            continue
        b = totals[arm]
        row: dict[str, Any] = {"arm": arm, "versus": control}
        for metric, key in _COMPARED.items():
            d = difference(moments(a, metric), moments(b, metric), a.units + b.units)
            row[key] = None if d is None else _difference(metric, d)
            if d is not None:
                cells.append((row[key], d))
        out.append(row)
    adjusted = holm([d.always_valid_p for _, d in cells])
    for (cell, _), p in zip(cells, adjusted, strict=True):
        cell["p_value_holm"] = _p(p) if p is not None else None
        cell["significant"] = p is not None and p <= ALPHA
    for row in out:
        row["significant"] = [
            k for k in _COMPARED.values() if row[k] is not None and row[k]["significant"]
        ]
    return out


def _difference(metric: str, d: Difference) -> dict[str, Any]:
    digits = METRICS[metric][2]
    return {
        "test": _TESTS[metric],
        "difference": finite(d.difference, digits),
        "difference_ci95": _interval(d.ci95, digits),
        "z": finite(d.z),
        "p_value": _p(d.p_value),
        "always_valid": {
            "difference_ci95": _interval(d.always_valid_ci95, digits),
            "p_value": _p(d.always_valid_p),
        },
        "units": d.units,
    }
