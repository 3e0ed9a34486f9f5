"""Simulated experiments: the report's statistics hold up under continuous monitoring.

A thousand A/A experiments (both arms identical), each with 1,000 units that send ~20
requests apiece, units alike within themselves (a unit's latency level and error rate vary
from unit to unit), looked at after every batch of 50 units: the always-valid figures that
decide "significant" must be wrong at most 5% of the time (plus Monte Carlo error), while
the per-request test that ignores units, and even the unit-level fixed-sample test read at
every look, are wrong far more often. A thousand A/B experiments with a stated effect show
the stated power. Everything runs through the same functions the report calls, vectorised
over experiments (numpy); one simulated experiment also goes through the report itself.

The figures are printed (``pytest -s``) and written to ``tests/artifacts/simulation.csv``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prism.gateway.experiments import ArmCounts, GuardState, always_valid_p, holm
from prism.gateway.experiments._counters import CLUSTER_FIELDS
from prism.gateway.experiments._report import build_report
from prism.gateway.experiments._sequential import Z95, ratio_mean_var
from prism.gateway.policy import Arm, Experiment

EXPERIMENTS = 1000
LOOKS = 20
UNITS_PER_LOOK = 50
MEAN_REQUESTS = 20
#: Monte Carlo standard error of a 5% rate over EXPERIMENTS runs
MC_SE = math.sqrt(0.05 * 0.95 / EXPERIMENTS)
#: the A/B effect: treatment latency +15% (mean latency 100 ms -> 115 ms)
EFFECT = 0.15
STATED_POWER = 0.80

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@dataclass
class Simulated:
    """Per-unit totals, shape (experiments, looks, units per look)."""

    arm_b: np.ndarray  # bool: the unit is in arm b
    n: np.ndarray  # requests
    errors: np.ndarray
    ok: np.ndarray
    lat: np.ndarray  # latency sum of successful requests (ms)
    lat_sq: np.ndarray  # sum of squares of those latencies


def simulate(seed: int, effect: float = 0.0) -> Simulated:
    rng = np.random.default_rng(seed)
    shape = (EXPERIMENTS, LOOKS, UNITS_PER_LOOK)
    arm_b = rng.random(shape) < 0.5
    n = 1 + rng.poisson(MEAN_REQUESTS - 1, shape)
    # units differ: error rate ~ Beta (mean 5%), latency level lognormal around 100 ms
    p_err = rng.beta(0.5, 9.5, shape)
    errors = rng.binomial(n, p_err)
    ok = n - errors
    level = 100.0 * np.exp(0.5 * rng.standard_normal(shape) - 0.125) * (1 + effect * arm_b)
    noise_sd = 20.0
    # sums over a unit's ok requests of level + noise_sd * eps, drawn in closed form:
    # sum eps = sqrt(k) Z, sum eps^2 = Z^2 + chi2(k - 1)
    z = rng.standard_normal(shape)
    chi = rng.chisquare(np.maximum(ok - 1, 1)) * (ok > 1)
    sum_eps = np.sqrt(ok) * z
    sum_eps_sq = np.where(ok > 0, z * z + chi, 0.0)
    lat = ok * level + noise_sd * sum_eps
    lat_sq = ok * level**2 + 2 * level * noise_sd * sum_eps + noise_sd**2 * sum_eps_sq
    return Simulated(arm_b, n, errors, ok, lat, lat_sq)


def cumulative(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per experiment and look: the sum over the units seen so far in the masked arm."""
    return np.cumsum(np.where(mask, values, 0.0).sum(axis=2), axis=1)


def unit_moments(sim: Simulated, y: np.ndarray, d: np.ndarray, arm: np.ndarray) -> tuple:
    """The report's six running sums over units, for each look: (m, Y, N, YY, NN, YN)."""
    has = arm & (d > 0)
    return (
        cumulative(np.ones_like(y), has),
        cumulative(y, has),
        cumulative(d, has),
        cumulative(y * y, has),
        cumulative(d * d, has),
        cumulative(y * d, has),
    )


def unit_level(sim: Simulated, metric: str) -> dict[str, np.ndarray]:
    """Difference b - a, its delta-method variance and the units so far, per look."""
    y, d = (sim.errors, sim.n) if metric == "error_rate" else (sim.lat, sim.ok)
    ra, va = ratio_mean_var(*unit_moments(sim, y, d, ~sim.arm_b))
    rb, vb = ratio_mean_var(*unit_moments(sim, y, d, sim.arm_b))
    units = np.cumsum(np.full(sim.n.shape[:2], UNITS_PER_LOOK), axis=1).astype(float)
    return {"diff": rb - ra, "var": va + vb, "units": units}


def naive_per_request_z(sim: Simulated, metric: str) -> np.ndarray:
    """The test that treats requests as independent (Welch z / two-proportion z)."""
    out = []
    for arm in (~sim.arm_b, sim.arm_b):
        if metric == "error_rate":
            k, s = cumulative(sim.n, arm), cumulative(sim.errors, arm)
            mean = s / k
            var = mean * (1 - mean)
        else:
            k, s, ss = (cumulative(v, arm) for v in (sim.ok, sim.lat, sim.lat_sq))
            mean = s / k
            var = (ss - k * mean * mean) / (k - 1)
        out.append((mean, var / k))
    (ma, sa), (mb, sb) = out
    return (mb - ma) / np.sqrt(sa + sb)


def rates(sim: Simulated) -> dict[str, Any]:
    """Share of experiments that a rule calls significant (at any look, or the last)."""
    figures: dict[str, Any] = {}
    av_p = {}
    for metric in ("latency_ms", "error_rate"):
        u = unit_level(sim, metric)
        z = u["diff"] / np.sqrt(u["var"])
        p = always_valid_p(u["diff"], u["var"], u["units"])
        av_p[metric] = p
        figures[f"{metric}: naive per-request, every look"] = np.mean(
            (np.abs(naive_per_request_z(sim, metric)) > Z95).any(axis=1)
        )
        figures[f"{metric}: unit-level fixed-sample, last look only"] = np.mean(
            np.abs(z[:, -1]) > Z95
        )
        figures[f"{metric}: unit-level fixed-sample, every look"] = np.mean(
            (np.abs(z) > Z95).any(axis=1)
        )
        figures[f"{metric}: always-valid, every look"] = np.mean((p <= 0.05).any(axis=1))
    # the report's "significant": Holm across the experiment's metrics, at every look
    # (two metrics: Holm's smallest adjusted p-value is twice the smallest p-value)
    holm_min = np.minimum(2 * np.minimum(av_p["latency_ms"], av_p["error_rate"]), 1)
    figures["any metric, always-valid + Holm, every look"] = np.mean((holm_min <= 0.05).any(axis=1))
    return figures


def record(kind: str, figures: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "simulation.csv"
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["simulation", "rule", "share significant", "experiments", "looks"])
        for rule, value in figures.items():
            writer.writerow([kind, rule, f"{value:.4f}", EXPERIMENTS, LOOKS])
    print(f"\n{kind} ({EXPERIMENTS} experiments x {LOOKS} looks x {UNITS_PER_LOOK} units):")
    for rule, value in figures.items():
        print(f"  {rule:<55} {value:6.1%}")


def test_a_a_experiments_stay_within_five_percent_under_continuous_looking() -> None:
    sim = simulate(seed=20261204)
    figures = rates(sim)
    record("A/A", figures)
    limit = 0.05 + 2 * MC_SE
    for metric in ("latency_ms", "error_rate"):
        assert figures[f"{metric}: always-valid, every look"] <= limit
        # the delta method is right at one planned look ...
        assert abs(figures[f"{metric}: unit-level fixed-sample, last look only"] - 0.05) < 3 * MC_SE
        # ... but peeking at fixed-sample figures, and ignoring units, are not
        assert figures[f"{metric}: unit-level fixed-sample, every look"] > 0.05 + 3 * MC_SE
        assert figures[f"{metric}: naive per-request, every look"] > 0.05 + 3 * MC_SE
    assert figures["any metric, always-valid + Holm, every look"] <= limit


def test_a_real_effect_is_found_with_the_stated_power() -> None:
    sim = simulate(seed=7, effect=EFFECT)
    figures = rates(sim)
    record(f"A/B latency +{EFFECT:.0%}", figures)
    assert figures["latency_ms: always-valid, every look"] >= STATED_POWER
    # the error rates are the same in both arms: still no false alarm there
    assert figures["error_rate: always-valid, every look"] <= 0.05 + 2 * MC_SE


def test_the_report_computes_what_the_simulation_checked() -> None:
    """One simulated experiment (each unit its own cluster) through ``build_report``."""
    sim = simulate(seed=3, effect=EFFECT)
    e = 0
    totals = {"control": ArmCounts(), "treatment": ArmCounts()}
    flat = {k: getattr(sim, k)[e].ravel() for k in ("arm_b", "n", "errors", "ok", "lat")}
    for i in range(flat["n"].size):
        arm = totals["treatment" if flat["arm_b"][i] else "control"]
        row = [0.0] * len(CLUSTER_FIELDS)
        row[:4] = [flat["n"][i], flat["errors"][i], flat["ok"][i], flat["lat"][i]]
        arm.clusters[i] = row
        arm.units += 1
        arm.requests += int(flat["n"][i])
        arm.errors += int(flat["errors"][i])
    experiment = Experiment(
        route="r",
        arms={"control": Arm(version="1", weight=50), "treatment": Arm(version="2", weight=50)},
    )
    report = build_report(
        "sim",
        experiment,
        totals=totals,
        split=totals,
        guard=GuardState(),
        definitions={},
        counters="memory",
    )
    cmp = report["comparison"][0]
    for metric, key in (("latency_ms", "latency"), ("error_rate", "error_rate")):
        u = unit_level(sim, metric)
        diff, var, units = u["diff"][e, -1], u["var"][e, -1], u["units"][e, -1]
        p = float(always_valid_p(diff, var, units))
        assert cmp[key]["always_valid"]["p_value"] == pytest.approx(p, rel=2e-3, abs=1e-12)
        assert cmp[key]["difference"] == pytest.approx(diff, abs=1e-3)
        low, high = cmp[key]["difference_ci95"]
        assert low == pytest.approx(diff - Z95 * math.sqrt(var), abs=1e-3)
        assert high == pytest.approx(diff + Z95 * math.sqrt(var), abs=1e-3)
    assert holm([0.01, 0.04]) == [0.02, 0.04]
