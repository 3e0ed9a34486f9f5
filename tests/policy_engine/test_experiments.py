"""Sticky assignment, counters (memory and real Redis), guardrails and the arm statistics."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from collections import Counter

import pytest

from prism.gateway.experiments import (
    BUCKETS,
    ArmCounts,
    ExperimentEngine,
    MemoryCounterStore,
    RedisCounterStore,
    arm_ranges,
    assign,
    bucket_of,
    cosine_similarities,
    two_proportion_z,
    welch_t,
)
from prism.gateway.policy import Arm, Experiment, Guardrails


def experiment(*weights: float, **kw: object) -> Experiment:
    names = ["control", "treatment", "third"][: len(weights)]
    arms = {
        n: Arm(version=str(i + 1), weight=w)
        for i, (n, w) in enumerate(zip(names, weights, strict=True))
    }
    return Experiment(route="r", arms=arms, **kw)  # type: ignore[arg-type]


# --- assignment -------------------------------------------------------------------------


def test_bucket_is_a_fixed_function_of_salt_and_unit() -> None:
    # pinned values: a change here reshuffles every running experiment
    assert bucket_of("text-v2", "u42") == bucket_of("text-v2", "u42")
    assert [bucket_of("exp", f"u{i}") for i in range(3)] == [
        bucket_of("exp", "u0"),
        bucket_of("exp", "u1"),
        bucket_of("exp", "u2"),
    ]
    code = "from prism.gateway.experiments import bucket_of; print(bucket_of('text-v2', 'u42'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == bucket_of("text-v2", "u42")  # another process, another hash seed
    assert 0 <= bucket_of("x", "y") < BUCKETS


def test_ninety_ten_split_within_two_points() -> None:
    exp = experiment(90, 10)
    counts = Counter(assign("text-v2", exp, f"user-{i}").arm for i in range(10_000))
    assert abs(counts["treatment"] / 10_000 - 0.10) <= 0.02


def test_same_unit_same_arm_and_salt_reshuffles() -> None:
    exp = experiment(50, 50)
    arms = {assign("e", exp, "u7").arm for _ in range(20)}
    assert len(arms) == 1
    salted = experiment(50, 50, salt="round-2")
    moved = sum(
        assign("e", exp, f"u{i}").arm != assign("e", salted, f"u{i}").arm for i in range(1000)
    )
    assert 350 < moved < 650  # a new salt is a fresh, independent assignment


def test_changing_weights_moves_only_the_units_that_must_move() -> None:
    before, after = experiment(90, 10), experiment(80, 20)
    moves = Counter(
        (assign("e", before, f"u{i}").arm, assign("e", after, f"u{i}").arm) for i in range(10_000)
    )
    assert moves[("treatment", "control")] == 0  # nobody leaves the growing arm
    moved = moves[("control", "treatment")]
    assert abs(moved / 10_000 - 0.10) <= 0.02
    # the third arm shrinks, the second grows: only third -> treatment moves happen
    three_before, three_after = experiment(50, 25, 25), experiment(50, 35, 15)
    for i in range(2000):
        a, b = assign("e", three_before, f"u{i}").arm, assign("e", three_after, f"u{i}").arm
        assert a == b or (a, b) == ("third", "treatment")


def test_arm_ranges_are_cumulative_and_cover_all_buckets() -> None:
    ranges = arm_ranges(experiment(1, 1, 1))
    assert ranges[0].start == 0 and ranges[-1].end == BUCKETS
    assert all(a.end == b.start for a, b in itertools.pairwise(ranges))


def test_stopped_arm_units_go_to_control_and_random_units_are_not_sticky() -> None:
    exp = experiment(50, 50)
    unit = next(f"u{i}" for i in range(100) if assign("e", exp, f"u{i}").arm == "treatment")
    stopped = assign("e", exp, unit, stopped={"treatment"})
    assert stopped.arm == "control" and stopped.stopped_arm == "treatment"
    anonymous = Counter(assign("e", exp, None).arm for _ in range(400))
    assert anonymous["control"] > 100 and anonymous["treatment"] > 100


# --- counters ---------------------------------------------------------------------------


def test_arm_counts_percentiles_and_round_trip() -> None:
    c = ArmCounts()
    for ms in range(1, 101):
        c.observe(float(ms), ok=True)
    c.observe(5000, ok=False)
    assert c.requests == 101 and c.errors == 1 and c.successes == 100
    p50, p95 = c.percentile_ms(50), c.percentile_ms(95)
    assert p50 is not None and 40 <= p50 <= 60
    assert p95 is not None and 80 <= p95 <= 110  # 25%-wide buckets
    back = ArmCounts.from_fields(c.to_fields())
    assert back.to_fields() == c.to_fields()
    assert c.merge(c, sign=-1).to_fields() == {}


async def test_redis_counter_store_sums_pushes_from_many_processes(redis_url: str) -> None:
    a = RedisCounterStore(redis_url, prefix="prism:test-x:")
    b = RedisCounterStore(redis_url, prefix="prism:test-x:")
    try:
        one = ArmCounts()
        one.observe(10.5, ok=True)
        one.assigned = 2
        two = ArmCounts()
        two.observe(20.25, ok=False)
        two.cosine_sum, two.cosine_count = 0.5, 1
        await a.push("redis-exp", {"control": one})
        await b.push("redis-exp", {"control": two})
        await a.push("redis-exp", {"control": one})
        totals = await b.totals("redis-exp", ["control", "treatment"])
        c = totals["control"]
        assert (c.assigned, c.requests, c.errors, c.successes) == (4, 3, 1, 2)
        assert c.latency_sum_ms == pytest.approx(21.0) and c.cosine_count == 1
        assert totals["treatment"].requests == 0
        assert await a.stop("redis-exp", "treatment", {"reason": "first"})
        assert not await b.stop("redis-exp", "treatment", {"reason": "second"})
        guard = await b.guard("redis-exp")
        assert guard.stopped["treatment"]["reason"] == "first"
        await b.resume("redis-exp", totals)
        guard = await a.guard("redis-exp")
        assert guard.stopped == {} and guard.baseline["control"].requests == 3
    finally:
        await a.aclose()
        await b.aclose()


# --- guardrails -------------------------------------------------------------------------


async def test_guardrail_stops_a_failing_treatment_until_resumed() -> None:
    exp = experiment(50, 50, guardrails=Guardrails(max_error_rate=0.1, min_samples=20))
    engine = ExperimentEngine(MemoryCounterStore(), experiments=lambda: {"e": exp})
    for i in range(19):
        engine.record("e", "treatment", ok=i % 2 == 0, latency_ms=5)
    await engine.sync()
    assert engine.stopped("e") == {}  # below min_samples: no verdict yet
    engine.record("e", "treatment", ok=False, latency_ms=5)
    await engine.sync()
    # 50% over 20 units: above 10%, but not yet beyond doubt at every look
    assert engine.stopped("e") == {}
    for i in range(180):
        engine.record("e", "treatment", ok=i % 2 == 0, latency_ms=5)
    await engine.sync()
    reason = engine.stopped("e")["treatment"]["reason"]
    assert "error rate 50.00% > 10.00%" in reason and "always-valid" in reason
    arms = Counter(engine.pick_arm("e", exp, f"u{i}") for i in range(200))
    assert arms == {"control": 200}
    report = await engine.report("e", exp)
    assert report["state"] == "control only" and report["arms"]["treatment"]["stopped"]
    await engine.resume("e", exp)
    await engine.sync()  # the old failures are behind the baseline now
    assert engine.stopped("e") == {}
    assert len({engine.pick_arm("e", exp, f"u{i}") for i in range(200)}) == 2


async def test_guardrail_on_p95() -> None:
    exp = experiment(50, 50, guardrails=Guardrails(max_p95_ms=100, min_samples=10))
    engine = ExperimentEngine(experiments=lambda: {"e": exp})
    for _ in range(10):
        engine.record("e", "control", ok=True, latency_ms=500)  # the control is never stopped
        engine.record("e", "treatment", ok=True, latency_ms=300)
    await engine.sync()
    assert list(engine.stopped("e")) == ["treatment"]
    assert "p95" in engine.stopped("e")["treatment"]["reason"]


async def test_report_compares_arms() -> None:
    exp = experiment(50, 50)
    engine = ExperimentEngine(experiments=lambda: {"e": exp})
    for i in range(400):
        engine.record("e", "control", ok=i % 50 != 0, latency_ms=10 + i % 5)
        engine.record("e", "treatment", ok=i % 10 != 0, latency_ms=20 + i % 5)
    engine.record("e", "control", ok=True, latency_ms=0, cached=True)
    await engine.sync()
    report = await engine.report("e", exp)
    control, treatment = report["arms"]["control"], report["arms"]["treatment"]
    assert (control["requests"], control["errors"], control["cached"]) == (400, 8, 1)
    assert treatment["error_rate"] == pytest.approx(0.1)
    cmp = report["comparison"][0]
    assert cmp["arm"] == "treatment" and cmp["versus"] == "control"
    assert cmp["error_rate"]["p_value"] < 0.001 and cmp["latency"]["p_value"] < 0.001
    assert cmp["latency"]["difference"] == pytest.approx(10, abs=0.5)
    low, high = cmp["latency"]["difference_ci95"]
    assert low < 10 < high and high - low < 2


def test_statistics_match_textbook_values() -> None:
    z, p = two_proportion_z(10, 1000, 25, 1000) or (0, 0)
    assert z == pytest.approx(2.5579, abs=1e-3) and p == pytest.approx(0.01053, abs=1e-4)
    t, df, p = welch_t(10, 4, 50, 11, 9, 40) or (0, 0, 0)
    assert t == pytest.approx(1.8107, abs=1e-3) and df == pytest.approx(65.11, abs=0.01)
    assert p == pytest.approx(0.07480, abs=1e-4)  # scipy.stats.ttest_ind_from_stats
    assert two_proportion_z(0, 0, 1, 10) is None and welch_t(1, 1, 1, 1, 1, 1) is None


def test_cosine_similarity_of_embeddings() -> None:
    same = cosine_similarities([{"embedding": [1.0, 0.0]}], [{"embedding": [2.0, 0.0]}])
    assert same == [pytest.approx(1.0)]
    ortho = cosine_similarities([{"embedding": [1.0, 0.0]}], [{"embedding": [0.0, 3.0]}])
    assert ortho == [pytest.approx(0.0)]
    assert cosine_similarities([{"embedding": [1.0]}], [{"embedding": [1.0, 2.0]}]) == []
    assert cosine_similarities([{"labels": []}], [{"labels": []}]) == []
    assert not math.isnan(sum(same))


async def test_a_claim_the_store_could_not_record_can_be_retried() -> None:
    from prism.backends import Overloaded
    from prism.gateway.experiments import ExperimentEngine, MemoryCounterStore

    class Flaky(MemoryCounterStore):
        down = True

        async def claim(self, request_id: str, ttl_s: float) -> bool:
            if self.down:
                raise Overloaded("counters unavailable")
            return True

    store = Flaky()
    engine = ExperimentEngine(store)
    with pytest.raises(Overloaded):
        await engine.feedback.claim("req_1")
    store.down = False
    assert await engine.feedback.claim("req_1") is True  # the retry scores it
    assert await engine.feedback.claim("req_1") is False  # and only once
