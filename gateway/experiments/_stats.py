"""Small, dependency-free statistics for comparing two arms.

Error rates: two-proportion z-test (pooled). Latency: Welch's t-test on means from running
sums (unequal variances), with the Student t tail from the regularised incomplete beta.
Both return two-sided p-values; None where the samples cannot support a test.
"""

from __future__ import annotations

import math


def normal_two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def two_proportion_z(
    errors_a: int, n_a: int, errors_b: int, n_b: int
) -> tuple[float, float] | None:
    """(z, p) for H0: both arms have the same error rate. z > 0 means b errs more."""
    if n_a <= 0 or n_b <= 0:
        return None
    pooled = (errors_a + errors_b) / (n_a + n_b)
    var = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if var <= 0:
        return (0.0, 1.0)
    z = (errors_b / n_b - errors_a / n_a) / math.sqrt(var)
    return z, normal_two_sided_p(z)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300

    def nonzero(v: float) -> float:
        return v if abs(v) > tiny else tiny

    qab, qap, qam = a + b, a + 1, a - 1
    c = 1.0
    d = 1 / nonzero(1 - qab * x / qap)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 / nonzero(1 + aa * d)
        c = nonzero(1 + aa / c)
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 / nonzero(1 + aa * d)
        c = nonzero(1 + aa / c)
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-12:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
    front = math.exp(ln + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    return betainc(df / 2, 0.5, df / (df + t * t))


def welch_t(
    mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int
) -> tuple[float, float, float] | None:
    """(t, df, p) for H0: equal means. t > 0 means b is larger (slower)."""
    if n_a < 2 or n_b < 2:
        return None
    sa, sb = var_a / n_a, var_b / n_b
    se2 = sa + sb
    if se2 <= 0:
        return (0.0, float(n_a + n_b - 2), 1.0)
    t = (mean_b - mean_a) / math.sqrt(se2)
    df = se2**2 / (sa**2 / (n_a - 1) + sb**2 / (n_b - 1))
    return t, df, t_two_sided_p(t, df)


def mean_var(total: float, total_sq: float, n: int) -> tuple[float, float]:
    """Mean and unbiased variance from a count, a sum and a sum of squares."""
    if n <= 0:
        return 0.0, 0.0
    mean = total / n
    if n < 2:
        return mean, 0.0
    return mean, max(0.0, (total_sq - n * mean * mean) / (n - 1))
