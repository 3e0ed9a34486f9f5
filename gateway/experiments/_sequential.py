"""Unit-level estimates and intervals that stay valid however often someone looks.

**Per-request means over units (delta method).** Each metric is a ratio of sums: error rate
= errors / requests, mean latency = latency / successful requests, quality = scores' sum /
scores. Its observations are the unit clusters (``_units.py``): with cluster totals ``Y_c``
(numerator) and ``N_c`` (denominator), ``R = sum Y / sum N`` and, by the delta method
(Deng, Knoblich & Lu, "Applying the Delta Method in Metric Analytics", KDD 2018),

    Var(R) = m / (m - 1) * sum (Y_c - R N_c)^2 / (sum N)^2

over the ``m`` clusters with data. That needs only six running sums per arm and metric:
``m, sum Y, sum N, sum Y^2, sum N^2, sum Y N`` (:class:`RatioMoments`). It is the
cluster-robust variance of OLS on a treatment dummy with ``G / (G - 1)`` correction, which
is what the tests check against statsmodels.

**Always valid.** A fixed-sample 95% interval holds at one look decided in advance; looked
at after every batch and stopped when it excludes zero, it is wrong far more than 5% of the
time. Beside it we report the asymptotic confidence sequence of Waudby-Smith, Arbour,
Sinha, Kennedy & Ramdas, "Time-uniform central limit theory and asymptotic confidence
sequences" (Annals of Statistics, 2024; arXiv:2103.06476), Theorem 2.2: with ``t``
observations and the estimate's variance ``v = sigma^2 / t``,

    estimate +- sqrt(v) * sqrt((t rho^2 + 1) / (t rho^2) * (log(t rho^2 + 1) - 2 log alpha))

which covers the truth at every ``t`` simultaneously with probability ``1 - alpha``
(asymptotically). It is the normal-mixture boundary (Robbins 1970; Howard et al. 2021), so
its always-valid p-value is the mixture likelihood ratio's inverse, as in the mSPRT of
Johari, Pekelis & Walsh, "Always Valid Inference" (Operations Research, 2022). ``rho`` is
chosen so the sequence is tightest at :data:`TUNING_UNITS` units (their eq. for
``rho*``); any fixed choice keeps it valid, it only moves where it is narrowest. These
sequential figures decide "significant" and the error-rate guardrail.

**Several metrics.** Holm's step-down correction (Holm 1979) across all of an experiment's
comparisons keeps the chance of any false "significant" at 5%.

Everything here works on floats and on numpy arrays alike (the simulation test runs a
thousand experiments at once through these same functions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

#: the error rate every interval and test here is built for (95% intervals)
ALPHA = 0.05
#: units at which the confidence sequence is tightest (width grows slowly on either side)
TUNING_UNITS = 500
#: two-sided 97.5% normal quantile
Z95 = 1.959963984540054

F = TypeVar("F", float, "np.ndarray[Any, Any]")


@dataclass(frozen=True)
class RatioMoments:
    """Running sums over an arm's unit clusters for one ratio metric ``sum Y / sum N``."""

    clusters: int = 0
    sum_y: float = 0.0
    sum_n: float = 0.0
    sum_yy: float = 0.0
    sum_nn: float = 0.0
    sum_yn: float = 0.0

    @classmethod
    def of(cls, pairs: Sequence[tuple[float, float]]) -> RatioMoments:
        """From ``(Y_c, N_c)`` cluster totals (clusters without data are left out)."""
        used = [(y, n) for y, n in pairs if n > 0]
        return cls(
            len(used),
            sum(y for y, _ in used),
            sum(n for _, n in used),
            sum(y * y for y, _ in used),
            sum(n * n for _, n in used),
            sum(y * n for y, n in used),
        )

    def estimate(self) -> tuple[float, float] | None:
        """(ratio, its variance); None below two clusters with data."""
        if self.clusters < 2 or self.sum_n <= 0:
            return None
        r, v = ratio_mean_var(
            self.clusters, self.sum_y, self.sum_n, self.sum_yy, self.sum_nn, self.sum_yn
        )
        return float(r), float(v)


def ratio_mean_var(m: F, sum_y: F, sum_n: F, sum_yy: F, sum_nn: F, sum_yn: F) -> tuple[F, F]:
    """Delta-method ratio ``sum Y / sum N`` and its variance over ``m`` clusters (m >= 2)."""
    r = sum_y / sum_n
    residual_sq = sum_yy - 2 * r * sum_yn + r * r * sum_nn
    # rounding can take a zero-variance sum a hair below zero
    var = m / (m - 1) * np.maximum(residual_sq, 0.0) / (sum_n * sum_n)
    return r, var


def rho_squared(alpha: float = ALPHA, tuning_units: float = TUNING_UNITS) -> float:
    """The mixture's ``rho^2`` that makes the sequence tightest at ``tuning_units``
    (Waudby-Smith et al., section 3.3)."""
    a = -2 * math.log(alpha)
    return (a + math.log(a + 1)) / tuning_units


def always_valid_factor(units: F, alpha: float = ALPHA, tuning_units: float = TUNING_UNITS) -> F:
    """Half-width of the confidence sequence in standard errors at ``units`` observations
    (1.96 is the fixed-sample interval's; this one is wider, and grows like sqrt(log t))."""
    tr = np.maximum(units, 1) * rho_squared(alpha, tuning_units)
    return np.sqrt((tr + 1) / tr * (np.log(tr + 1) - 2 * math.log(alpha)))


def always_valid_p(
    estimate: F, var: F, units: F, alpha: float = ALPHA, tuning_units: float = TUNING_UNITS
) -> F:
    """Always-valid p-value for H0: the quantity is 0 (the inverse of the normal-mixture
    likelihood ratio): ``P(p_t <= a for some t) <= a`` under H0, so it may be read at
    every look. ``p_t <= alpha`` exactly when the sequence excludes 0."""
    tr = np.maximum(units, 1) * rho_squared(alpha, tuning_units)
    z2 = np.where(var > 0, estimate * estimate / np.where(var > 0, var, 1.0), np.inf)
    z2 = np.where((var <= 0) & (estimate == 0), 0.0, z2)
    log_lr = -0.5 * np.log1p(tr) + tr / (1 + tr) * z2 / 2
    return np.minimum(1.0, np.exp(-log_lr))


def normal_two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (step-down; None stays None and is not counted)."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    k = len(present)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (k - rank) * p))
        out[i] = running
    return out


@dataclass(frozen=True)
class Difference:
    """``b - a`` of one metric: fixed-sample and always-valid figures."""

    difference: float
    se: float
    units: int

    @property
    def z(self) -> float:
        return (
            self.difference / self.se
            if self.se > 0
            else (0.0 if self.difference == 0 else math.inf)
        )

    @property
    def ci95(self) -> tuple[float, float]:
        half = Z95 * self.se
        return self.difference - half, self.difference + half

    @property
    def p_value(self) -> float:
        return normal_two_sided_p(self.z) if math.isfinite(self.z) else 0.0

    @property
    def always_valid_ci95(self) -> tuple[float, float]:
        half = float(always_valid_factor(float(self.units))) * self.se
        return self.difference - half, self.difference + half

    @property
    def always_valid_p(self) -> float:
        return float(always_valid_p(self.difference, self.se * self.se, float(self.units)))


def difference(a: RatioMoments, b: RatioMoments, units: int) -> Difference | None:
    """``b - a`` for one metric; ``units``: the two arms' units (the sequence's ``t``)."""
    ea, eb = a.estimate(), b.estimate()
    if ea is None or eb is None:
        return None
    return Difference(eb[0] - ea[0], math.sqrt(ea[1] + eb[1]), max(units, a.clusters + b.clusters))


def always_valid_interval(moments: RatioMoments, units: int) -> tuple[float, float, float] | None:
    """(estimate, low, high) of one arm's metric, valid at every look."""
    est = moments.estimate()
    if est is None:
        return None
    half = float(always_valid_factor(float(max(units, moments.clusters)))) * math.sqrt(est[1])
    return est[0], est[0] - half, est[0] + half


__all__ = [
    "ALPHA",
    "TUNING_UNITS",
    "Z95",
    "Difference",
    "RatioMoments",
    "always_valid_factor",
    "always_valid_interval",
    "always_valid_p",
    "difference",
    "holm",
    "normal_two_sided_p",
    "ratio_mean_var",
    "rho_squared",
]
