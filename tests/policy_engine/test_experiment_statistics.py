"""The report's fixed-sample figures against scipy and statsmodels on the same data, the
always-valid p-value against the normal-mixture integral, and the unit counters (memory and
real Redis) that feed them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import integrate, stats
from statsmodels.stats.multitest import multipletests

from prism.gateway.experiments import (
    ArmCounts,
    ExperimentEngine,
    MemoryCounterStore,
    RedisCounterStore,
    always_valid_p,
    assign,
    holm,
    unit_hash,
)
from prism.gateway.experiments._sequential import rho_squared
from prism.gateway.experiments._units import cluster_of
from prism.gateway.policy import Arm, Experiment


def ab(control: float = 50, treatment: float = 50) -> Experiment:
    return Experiment(
        route="r",
        arms={
            "control": Arm(version="1", weight=control),
            "treatment": Arm(version="2", weight=treatment),
        },
    )


def clustered_traffic(seed: int) -> dict[str, dict[str, list[Any]]]:
    """Per arm: each request's unit, ok flag and latency; 300 units x 1..40 requests,
    latency level and error rate differing from unit to unit."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, list[Any]]] = {
        arm: {"unit": [], "ok": [], "latency": []} for arm in ("control", "treatment")
    }
    for u in range(300):
        arm = assign("e", ab(), f"user-{u}").arm  # the arm the gateway would pick
        level = rng.lognormal(math.log(50 if arm == "control" else 56), 0.4)
        p_err = rng.beta(1, 12)
        for _ in range(int(rng.integers(1, 41))):
            out[arm]["unit"].append(f"user-{u}")
            out[arm]["ok"].append(bool(rng.random() > p_err))
            out[arm]["latency"].append(float(level + rng.normal(0, 5)))
    return out


def cluster_robust(y: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """statsmodels: the mean of y (OLS on a constant) and its cluster-robust standard error
    (G / (G - 1) correction: the report's m / (m - 1))."""
    fit = sm.OLS(y, np.ones_like(y)).fit(
        cov_type="cluster", cov_kwds={"groups": groups, "use_correction": True}
    )
    return float(fit.params[0]), float(fit.bse[0])


async def test_unit_level_figures_match_statsmodels_cluster_robust_ols() -> None:
    traffic = clustered_traffic(seed=11)
    exp = ab()
    engine = ExperimentEngine(experiments=lambda: {"e": exp})
    for arm, rows in traffic.items():
        for unit, ok, ms in zip(rows["unit"], rows["ok"], rows["latency"], strict=True):
            assert engine.pick_arm("e", exp, unit) == arm  # counts the unit as assigned
            engine.record("e", arm, ok=ok, latency_ms=ms, unit=unit_hash(unit))
    await engine.sync()
    report = await engine.report("e", exp)

    expected: dict[str, dict[str, tuple[float, float]]] = {}
    for arm, rows in traffic.items():
        groups = np.array([cluster_of(unit_hash(u)) for u in rows["unit"]])
        ok = np.array(rows["ok"])
        latency = np.array(rows["latency"])
        expected[arm] = {
            "error_rate": cluster_robust((~ok).astype(float), groups),
            "latency_ms": cluster_robust(latency[ok], groups[ok]),
        }
        for metric, (mean, se) in expected[arm].items():
            figure = report["arms"][arm]["metrics"][metric]
            digits = 5 if metric == "error_rate" else 3
            assert figure["value"] == pytest.approx(mean, abs=10**-digits)
            low, high = figure["ci95"]
            z = stats.norm.ppf(0.975)
            assert low == pytest.approx(mean - z * se, abs=2 * 10**-digits)
            assert high == pytest.approx(mean + z * se, abs=2 * 10**-digits)
            # the always-valid interval is wider, around the same estimate
            av_low, av_high = figure["always_valid_ci95"]
            assert av_low < low and av_high > high

    cmp = report["comparison"][0]
    for metric, key in (("error_rate", "error_rate"), ("latency_ms", "latency")):
        (ma, sa), (mb, sb) = expected["control"][metric], expected["treatment"][metric]
        diff, se = mb - ma, math.hypot(sa, sb)
        digits = 5 if metric == "error_rate" else 3
        figure = cmp[key]
        assert figure["difference"] == pytest.approx(diff, abs=10**-digits)
        assert figure["z"] == pytest.approx(diff / se, abs=2e-3)
        assert figure["p_value"] == pytest.approx(2 * stats.norm.sf(abs(diff / se)), rel=5e-3)
        low, high = figure["difference_ci95"]
        assert low == pytest.approx(diff - stats.norm.ppf(0.975) * se, abs=2 * 10**-digits)
        assert high == pytest.approx(diff + stats.norm.ppf(0.975) * se, abs=2 * 10**-digits)
    # Holm over the experiment's comparisons, as statsmodels does it
    cells = [cmp[k] for k in ("error_rate", "latency", "quality") if cmp[k] is not None]
    raw = [c["always_valid"]["p_value"] for c in cells]
    adjusted = multipletests(raw, method="holm")[1]
    for cell, p in zip(cells, adjusted, strict=True):
        assert cell["p_value_holm"] == pytest.approx(p, rel=5e-3)
        assert cell["significant"] is bool(p <= 0.05)
    # the sample-ratio check counts units, not requests (1 to 40 each)
    srm = report["sample_ratio"]
    units = [srm["units"]["control"], srm["units"]["treatment"]]
    assert units == [len(set(traffic[a]["unit"])) for a in ("control", "treatment")]
    assert report["arms"]["control"]["units"] == units[0]
    chi2, p = stats.chisquare(units)
    assert srm["chi2"] == pytest.approx(chi2, abs=1e-3) and srm["p_value"] == pytest.approx(
        p, rel=2e-3
    )
    assert srm["mismatch"] is False


async def test_sample_ratio_mismatch_is_on_units_at_p_below_0_001() -> None:
    exp = ab(50, 50)
    engine = ExperimentEngine(experiments=lambda: {"e": exp})
    units = [f"u{i}" for i in range(3000)]
    for unit in units:
        engine.pick_arm("e", exp, unit)
    await engine.sync()
    first = (await engine.report("e", exp))["sample_ratio"]
    assert sum(first["units"].values()) == len(units)
    for _ in range(3):  # the same units again: more requests, not more units
        for unit in units[:1000]:
            engine.pick_arm("e", exp, unit)
    await engine.sync()
    again = (await engine.report("e", exp))["sample_ratio"]
    assert again["units"] == first["units"] and again["mismatch"] is False

    # a redirect that loses a third of the treatment's units before they reach the gateway
    lossy = ExperimentEngine(experiments=lambda: {"e": exp})
    for i, unit in enumerate(units):
        if assign("e", exp, unit).arm == "treatment" and i % 3 == 0:
            continue
        lossy.pick_arm("e", exp, unit)
    await lossy.sync()
    srm = (await lossy.report("e", exp))["sample_ratio"]
    observed = [srm["units"]["control"], srm["units"]["treatment"]]
    assert srm["p_value"] == pytest.approx(stats.chisquare(observed).pvalue, rel=1e-2)
    assert srm["mismatch"] is True and srm["p_value"] < 0.001


def test_always_valid_p_is_the_inverse_of_the_normal_mixture_likelihood_ratio() -> None:
    """p = 1 / integral of exp(l S - l^2 V / 2) over l ~ N(0, tau^2), by quadrature."""
    for estimate, var, units in ((0.3, 0.01, 400), (-2.0, 1.5, 40), (0.0, 0.2, 9000)):
        tau2 = rho_squared() * units * var  # the mixture's variance for the estimate

        def integrand(lam: float, e: float = estimate, v: float = var, t2: float = tau2) -> float:
            # the likelihood ratio of the estimate under a mean of lam against a mean of 0
            return math.exp((lam * e - lam * lam / 2) / v) * stats.norm.pdf(lam, 0, math.sqrt(t2))

        ratio, _ = integrate.quad(integrand, -50, 50, limit=200)
        assert float(always_valid_p(estimate, var, float(units))) == pytest.approx(
            min(1.0, 1 / ratio), rel=1e-6
        )


def test_holm_matches_statsmodels() -> None:
    raw = [0.01, 0.04, 0.03, 0.5, 0.002]
    assert holm(raw) == pytest.approx(list(multipletests(raw, method="holm")[1]))
    assert holm([None, 0.02]) == [None, 0.02]


async def test_unit_clusters_and_unit_counts_add_up_across_redis_replicas(redis_url: str) -> None:
    stores = [RedisCounterStore(redis_url, prefix="prism:test-units:") for _ in range(2)]
    memory = MemoryCounterStore()
    try:
        expected = ArmCounts()
        for replica, store in enumerate(stores):
            delta = ArmCounts()
            for i in range(500):
                unit = unit_hash(f"user-{i % 400}")  # the same units reach both replicas
                delta.saw_unit(unit)
                delta.observe(10.0 + i % 7, ok=i % 9 != replica, unit=unit)
            await store.push("exp", {"treatment": delta})
            await memory.push("exp", {"treatment": delta})
            expected = expected.merge(delta)
        for totals in (
            await stores[1].totals("exp", ["treatment"]),
            await memory.totals("exp", ["treatment"]),
        ):
            got = totals["treatment"]
            assert got.units == 400
            assert got.requests == 1000 and got.errors == expected.errors
            assert got.clusters.keys() == expected.clusters.keys()
            for index, row in expected.clusters.items():
                assert got.clusters[index] == pytest.approx(row)
    finally:
        for store in stores:
            await store.aclose()


async def test_memory_store_keeps_unit_counts_across_a_restart(tmp_path: Any) -> None:
    path = tmp_path / "state.json"
    store = MemoryCounterStore(path)
    delta = ArmCounts()
    for i in range(1000):
        delta.saw_unit(unit_hash(f"u{i}"))
        delta.observe(5.0, ok=True, unit=unit_hash(f"u{i}"))
    await store.push("exp", {"control": delta})
    await store.aclose()
    assert path.stat().st_size < 200_000  # the 1 MiB bitmap, compressed
    again = await MemoryCounterStore(path).totals("exp", ["control"])
    assert again["control"].units == 1000 and len(again["control"].clusters) > 600
