"""LatencyTracker, CircuitBreaker and TargetSelector on a fake clock: no sleeping, no backends."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from prism.backends import Overloaded
from prism.gateway.policy import LatencyRule, Target
from prism.gateway.routing import CircuitBreaker, HealthBook, LatencyTracker, TargetSelector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


A, B, C = Target("m", "1"), Target("m", "2"), Target("m", "3")


def feed(book: HealthBook, target: Target, ms: float, n: int = 10, ok: bool = True) -> None:
    tracker = book.of(target).tracker
    for _ in range(n):
        tracker.begin()
        tracker.end(ms, ok=ok)


# --- LatencyTracker ---------------------------------------------------------------------


def test_tracker_ewma_p95_error_rate_and_in_flight() -> None:
    clock = Clock()
    t = LatencyTracker(alpha=0.5, min_samples=5, clock=clock)
    assert t.ewma_ms is None and t.p95_ms() is None and t.error_rate() == 0
    for ms in (10, 10, 10, 10, 10, 10, 10, 10, 10, 100):
        t.begin()
        t.end(ms, ok=True)
    assert t.ewma_ms == pytest.approx(55)  # the newest sample weighs alpha
    assert t.p95_ms() == 100 and t.percentile_ms(50) == 10
    t.begin()
    t.begin()
    assert t.in_flight == 2
    t.end(5, ok=False)
    t.abandon()
    assert t.in_flight == 0
    assert t.ewma_ms == pytest.approx(55)  # a fast failure does not make it look fast
    assert t.error_rate() == pytest.approx(1 / 11)


def test_tracker_window_forgets_old_samples() -> None:
    clock = Clock()
    t = LatencyTracker(window_s=60, min_samples=1, clock=clock)
    for _ in range(5):
        t.end(500, ok=False)
    clock.now += 61
    t.end(20, ok=True)
    assert t.error_rate() == 0 and t.p95_ms() == 20 and t.samples == 1
    assert t.calls == 6 and t.failures == 5


# --- CircuitBreaker ---------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_and_probes_after_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        assert b.acquire()
        b.record(False)
    assert b.state == "closed"
    b.record(True)  # a success resets the streak
    for _ in range(3):
        b.record(False)
    assert b.state == "open" and not b.available() and not b.acquire()
    assert b.retry_after_s() == pytest.approx(10)
    clock.now += 10
    assert b.state == "half_open" and b.available()
    assert b.acquire()  # the one probe
    assert not b.available() and not b.acquire()
    b.record(False)  # probe failed: open for another cooldown
    assert b.state == "open" and b.trips == 2
    clock.now += 10
    assert b.acquire()
    b.record(True)
    assert b.state == "closed" and b.available()


def test_a_probe_that_finds_the_target_up_lets_the_trial_through_early() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown_s=30, clock=clock)
    b.record(False)
    assert b.state == "open"
    b.probe_recovered(at=clock.now - 1)  # up before the circuit opened: no news
    assert b.state == "open"
    clock.now += 2
    b.probe_recovered(at=clock.now)  # up again after it opened: one trial now, not in 28 s
    assert b.state == "half_open" and b.acquire() and not b.available()
    b.record(True)
    assert b.state == "closed"


def test_breaker_opens_on_error_rate() -> None:
    b = CircuitBreaker(failures=100, error_rate=0.5, min_calls=10, window=10, clock=Clock())
    for i in range(9):
        b.record(i % 2 == 0)  # 4 of 9 fail
    assert b.state == "closed"
    b.record(False)  # 5 of 10
    assert b.state == "open" and "error rate 50%" in (b.last_reason or "")


def test_breaker_cancelled_probe_frees_the_slot() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown_s=1, clock=clock)
    b.record(False)
    clock.now += 1
    assert b.acquire() and not b.available()
    b.release()
    assert b.available()


# --- TargetSelector ---------------------------------------------------------------------


def selector() -> tuple[HealthBook, TargetSelector]:
    book = HealthBook()
    return book, TargetSelector(book, rng=random.Random(7))


def test_pinned_keeps_policy_order() -> None:
    book, sel = selector()
    feed(book, A, 100)
    feed(book, B, 1)
    s = sel.select("r", [A, B], LatencyRule(strategy="pinned"))
    assert s.order == (A, B) and s.reason.startswith("pinned")


def test_weighted_draws_by_weight() -> None:
    _, sel = selector()
    heavy, light = Target("m", "1", weight=9), Target("m", "2", weight=1)
    firsts = Counter(
        sel.select("r", [heavy, light], LatencyRule(strategy="weighted")).order[0]
        for _ in range(2000)
    )
    assert 0.87 < firsts[heavy] / 2000 < 0.93


def test_fastest_warms_up_every_target_then_prefers_the_fastest_and_explores() -> None:
    book, sel = selector()
    rule = LatencyRule(strategy="fastest", warmup=3, explore_every=10)
    firsts = []
    for _ in range(100):
        first = sel.select("r", [A, B], rule).order[0]
        firsts.append(first)
        feed(book, first, 5 if first == A else 50, n=1)
    assert firsts[:6].count(B) == 3  # both warmed up: 3 calls each
    after = Counter(firsts[6:])
    assert after[A] >= 85 and after[B] >= 5  # exploration keeps measuring B


def test_fastest_counts_in_flight_calls_as_warm_up() -> None:
    book, sel = selector()
    rule = LatencyRule(strategy="fastest", warmup=2)
    for _ in range(4):  # four concurrent requests, none finished yet
        first = sel.select("r", [A, B], rule).order[0]
        book.of(first).tracker.begin()
    assert book.of(A).tracker.in_flight == 2 and book.of(B).tracker.in_flight == 2


def test_least_loaded_prefers_fewer_in_flight() -> None:
    book, sel = selector()
    for _ in range(5):
        book.of(A).tracker.begin()
    firsts = Counter(
        sel.select("r", [A, B], LatencyRule(strategy="least-loaded")).order[0] for _ in range(50)
    )
    assert firsts == {B: 50}
    book.of(C).tracker.begin()
    order = sel.select("r", [A, B, C], LatencyRule(strategy="least-loaded")).order
    assert order[-1] == A


def test_budget_prefers_targets_whose_p95_fits() -> None:
    book, sel = selector()
    feed(book, A, 100)
    feed(book, B, 30)
    s = sel.select("r", [A, B], LatencyRule(strategy="pinned"), budget_ms=50)
    assert s.order == (B, A) and "fits the 50 ms budget" in s.reason


def test_budget_nobody_meets_answers_with_the_fastest_unless_strict() -> None:
    book, sel = selector()
    feed(book, A, 300)
    feed(book, B, 200)
    s = sel.select("r", [A, B], LatencyRule(), budget_ms=50)
    assert s.order[0] == B and "no target meets the 50 ms budget" in s.reason
    with pytest.raises(Overloaded) as info:
        sel.select("r", [A, B], LatencyRule(), budget_ms=50, strict=True)
    assert info.value.status_code == 503 and "Retry-After" in info.value.headers


def test_unmeasured_targets_may_meet_a_budget() -> None:
    book, sel = selector()
    feed(book, A, 300)
    s = sel.select("r", [A, B], LatencyRule(), budget_ms=50, strict=True)
    assert s.order == (B, A)


def test_open_circuits_are_skipped() -> None:
    book, sel = selector()
    for _ in range(5):
        book.of(A).breaker.record(False)
    s = sel.select("r", [A, B], LatencyRule())
    assert s.order == (B,) and s.skipped == (A.key,) and "open circuit" in s.reason
    for _ in range(5):
        book.of(B).breaker.record(False)
    assert sel.select("r", [A, B], LatencyRule()).order == ()
