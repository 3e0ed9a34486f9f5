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


def t_quantile(p: float, df: float) -> float:
    """The ``t`` with two-sided tail ``p`` (``t_two_sided_p(t, df) == p``), by bisection."""
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if t_two_sided_p(mid, df) > p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mean_ci(mean: float, var: float, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Student t interval for a mean; None below two samples."""
    if n < 2:
        return None
    half = t_quantile(1 - level, n - 1) * math.sqrt(var / n)
    return mean - half, mean + half


def welch_ci(
    mean_a: float,
    var_a: float,
    n_a: int,
    mean_b: float,
    var_b: float,
    n_b: int,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Interval for ``mean_b - mean_a`` (Welch-Satterthwaite degrees of freedom)."""
    t = welch_t(mean_a, var_a, n_a, mean_b, var_b, n_b)
    if t is None:
        return None
    se = math.sqrt(var_a / n_a + var_b / n_b)
    half = t_quantile(1 - level, t[1]) * se if se > 0 else 0.0
    diff = mean_b - mean_a
    return diff - half, diff + half


def proportion_diff_ci(
    errors_a: int, n_a: int, errors_b: int, n_b: int, level: float = 0.95
) -> tuple[float, float] | None:
    """Wald interval (unpooled) for ``rate_b - rate_a``."""
    if n_a <= 0 or n_b <= 0:
        return None
    pa, pb = errors_a / n_a, errors_b / n_b
    se = math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    z = _normal_quantile(1 - (1 - level) / 2)
    return pb - pa - z * se, pb - pa + z * se


def _normal_quantile(q: float) -> float:
    """Inverse of the standard normal CDF, by bisection on ``erfc`` (plenty fast here)."""
    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma ``Q(a, x)`` (series below a + 1, else continued
    fraction; Numerical Recipes' ``gammq``)."""
    if x <= 0:
        return 1.0
    ln_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1 / a
        ap = a
        for _ in range(500):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return 1 - total * math.exp(ln_front)
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(ln_front) * h


def sample_ratio_test(observed: list[int], weights: list[float]) -> tuple[float, float] | None:
    """Chi-square goodness of fit of assignment counts to the configured weights: (chi2, p).

    A tiny p (< 0.001) is a sample ratio mismatch: the split is not what was configured, so
    something upstream (a filter, a redirect, a bug) biases who lands in which arm.
    """
    n = sum(observed)
    total_w = sum(weights)
    if n == 0 or total_w <= 0 or len(observed) < 2:
        return None
    chi2 = 0.0
    for o, w in zip(observed, weights, strict=True):
        expected = n * w / total_w
        if expected <= 0:
            if o:
                return math.inf, 0.0
            continue
        chi2 += (o - expected) ** 2 / expected
    return chi2, gamma_q((len(observed) - 1) / 2, chi2 / 2)
