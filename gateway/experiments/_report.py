"""An experiment's report: per-arm figures with 95% intervals, comparisons with the control
arm, and the sample-ratio check, computed from the shared totals (no I/O here)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..policy import Experiment
from ._assignment import arm_ranges, control_arm
from ._counters import ArmCounts, GuardState, finite
from ._stats import (
    mean_ci,
    mean_var,
    proportion_diff_ci,
    sample_ratio_test,
    two_proportion_z,
    welch_ci,
    welch_t,
)


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
        mean, var = mean_var(c.latency_sum_ms, c.latency_sq_ms, c.successes)
        q_mean, q_var = mean_var(c.quality_sum, c.quality_sq, c.quality_count)
        arms[arm_name] = {
            "version": arm.version,
            "definition": definitions.get(arm_name),
            "weight": arm.weight,
            "buckets": [ranges[arm_name].start, ranges[arm_name].end],
            "stopped": guard.stopped.get(arm_name),
            "assigned": c.assigned,
            "requests": c.requests,
            "errors": c.errors,
            "error_rate": finite(c.errors / c.requests, 5) if c.requests else None,
            "cached": c.cached,
            "latency_ms": {
                "mean": finite(mean) if c.successes else None,
                "mean_ci95": _interval(mean_ci(mean, var, c.successes)),
                "p50": finite(c.percentile_ms(50)),
                "p95": finite(c.percentile_ms(95)),
            },
            "quality": {
                "count": c.quality_count,
                "mean": finite(q_mean, 5) if c.quality_count else None,
                "mean_ci95": _interval(mean_ci(q_mean, q_var, c.quality_count), 5),
            },
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
        "comparison": [
            _compare(control, totals[control], a, totals[a])
            for a in experiment.arms
            if a != control
        ],
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
    """Is the split what the weights say? (chi-square on the assignments made since the
    split last changed; not while an arm is stopped: its units go to the control on purpose)."""
    if guard.stopped:
        return None
    arms = list(experiment.arms)
    test = sample_ratio_test(
        [totals[a].assigned for a in arms], [experiment.arms[a].weight for a in arms]
    )
    if test is None:
        return None
    return {
        "test": "chi-square goodness of fit (assigned requests vs weights)",
        "chi2": finite(test[0]),
        "p_value": _p(test[1]),
        # the usual SRM alarm level: a split this far off is a bug, not chance
        "mismatch": test[1] < 0.001,
    }


def _compare(control: str, a: ArmCounts, arm: str, b: ArmCounts) -> dict[str, Any]:
    """Treatment vs control: error rate (two-proportion z) and mean latency (Welch t)."""
    out: dict[str, Any] = {"arm": arm, "versus": control, "error_rate": None, "latency": None}
    z = two_proportion_z(a.errors, a.requests, b.errors, b.requests)
    if z is not None:
        diff = b.errors / b.requests - a.errors / a.requests
        out["error_rate"] = {
            "test": "two-proportion z",
            "difference": finite(diff, 5),
            "difference_ci95": _interval(
                proportion_diff_ci(a.errors, a.requests, b.errors, b.requests), 5
            ),
            "z": finite(z[0]),
            "p_value": _p(z[1]),
        }
    out["latency"] = _welch(
        "Welch t (mean latency, ms)",
        (a.latency_sum_ms, a.latency_sq_ms, a.successes),
        (b.latency_sum_ms, b.latency_sq_ms, b.successes),
        digits=3,
    )
    out["quality"] = _welch(
        "Welch t (mean feedback score)",
        (a.quality_sum, a.quality_sq, a.quality_count),
        (b.quality_sum, b.quality_sq, b.quality_count),
        digits=5,
    )
    return out


def _welch(
    test: str, a: tuple[float, float, int], b: tuple[float, float, int], digits: int
) -> dict[str, Any] | None:
    """Difference of means (b - a) with its 95% interval and Welch's t-test."""
    mean_a, var_a = mean_var(*a)
    mean_b, var_b = mean_var(*b)
    t = welch_t(mean_a, var_a, a[2], mean_b, var_b, b[2])
    if t is None:
        return None
    return {
        "test": test,
        "difference": finite(mean_b - mean_a, digits),
        "difference_ci95": _interval(welch_ci(mean_a, var_a, a[2], mean_b, var_b, b[2]), digits),
        "t": finite(t[0]),
        "df": finite(t[1], 1),
        "p_value": _p(t[2]),
    }
