"""Orders a route's targets for one request: strategy, latency budget, open circuits.

Strategies (``latency.strategy`` of a route):

- ``pinned``: the order the policy lists them in.
- ``weighted``: the first target drawn at random by ``weight``; the rest in policy order.
- ``fastest``: lowest recent EWMA first. A target with fewer than ``warmup`` calls is tried
  first (so a new target gets measured), and every ``explore_every``-th pick tries the least
  recently used other target (so a target that got faster is noticed).
- ``least-loaded``: power of two choices: of two random targets, the one with fewer calls in
  flight; the rest by load.

With a latency budget, targets whose p95 fits it (or that are not measured yet) go first;
when none fits, the fastest healthy target answers (or, with ``strict``, none: 503).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from prism.backends import Overloaded

from ..policy import CircuitRule, LatencyRule, Target
from ._breaker import CircuitBreaker
from ._latency import LatencyTracker


@dataclass
class TargetHealth:
    """What this process knows about one target: latency tracker + circuit breaker."""

    tracker: LatencyTracker = field(default_factory=LatencyTracker)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)


class HealthBook:
    """Trackers and breakers by target key; kept across policy reloads (keys are stable)."""

    def __init__(self) -> None:
        self._by_key: dict[str, TargetHealth] = {}

    def of(self, target: Target, circuit: CircuitRule | None = None) -> TargetHealth:
        health = self._by_key.get(target.key)
        if health is None:
            health = self._by_key[target.key] = TargetHealth()
        if circuit is not None:
            health.breaker.configure(
                failures=circuit.failures,
                error_rate=circuit.error_rate,
                min_calls=circuit.min_calls,
                cooldown_s=circuit.cooldown_s,
            )
        return health

    def items(self) -> list[tuple[str, TargetHealth]]:
        return sorted(self._by_key.items())


@dataclass(frozen=True)
class Selection:
    #: targets to try, best first (open circuits already left out)
    order: tuple[Target, ...]
    reason: str
    #: keys of targets skipped because their circuit is open
    skipped: tuple[str, ...] = ()


def _ms(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:.1f} ms"


class TargetSelector:
    def __init__(self, health: HealthBook, *, rng: random.Random | None = None) -> None:
        self.health = health
        self.rng = rng or random.Random()
        #: picks per route, for the 'fastest' exploration cadence
        self._picks: dict[str, int] = {}

    def _tracker(self, target: Target) -> LatencyTracker:
        return self.health.of(target).tracker

    def select(
        self,
        route: str,
        targets: Sequence[Target],
        rule: LatencyRule,
        *,
        budget_ms: float | None = None,
        strict: bool = False,
        circuit: CircuitRule | None = None,
    ) -> Selection:
        live = [t for t in targets if self.health.of(t, circuit).breaker.available()]
        skipped = tuple(t.key for t in targets if t not in live)
        note = f"; skipped open circuit: {', '.join(skipped)}" if skipped else ""
        if not live:
            return Selection((), f"every target's circuit is open{note}", skipped)
        order, why = self._by_strategy(route, live, rule)
        if budget_ms is not None and len(order) > 0:
            order, why = self._within_budget(order, why, budget_ms, strict)
        return Selection(tuple(order), why + note, skipped)

    # --- strategies ----------------------------------------------------------------------

    def _by_strategy(
        self, route: str, live: list[Target], rule: LatencyRule
    ) -> tuple[list[Target], str]:
        strategy = rule.strategy
        if len(live) == 1:
            return live, f"{strategy}: {live[0].key} is the only live target"
        if strategy == "weighted":
            weights = [t.weight for t in live]
            if sum(weights) <= 0:
                return live, "weighted: all weights are 0, policy order"
            first = self.rng.choices(live, weights=weights)[0]
            return [first, *(t for t in live if t != first)], f"weighted: drew {first.key}"
        if strategy == "fastest":
            return self._fastest(route, live, rule)
        if strategy == "least-loaded":
            a, b = self.rng.sample(live, 2)
            first = min(
                (a, b), key=lambda t: (self._tracker(t).in_flight, self._tracker(t).ewma_ms or 0)
            )
            rest = sorted((t for t in live if t != first), key=lambda t: self._tracker(t).in_flight)
            return (
                [first, *rest],
                f"least-loaded: {first.key} ({self._tracker(first).in_flight} in flight)",
            )
        return live, f"pinned: {live[0].key}"

    def _fastest(
        self, route: str, live: list[Target], rule: LatencyRule
    ) -> tuple[list[Target], str]:
        trackers = {t: self._tracker(t) for t in live}
        # calls in flight count as samples on their way, so a burst of concurrent requests
        # does not all land on one untried target
        cold = [t for t in live if trackers[t].calls + trackers[t].in_flight < rule.warmup]
        if cold:
            first = min(cold, key=lambda t: trackers[t].calls + trackers[t].in_flight)
            rest = sorted((t for t in live if t != first), key=lambda t: self._score(trackers[t]))
            n = trackers[first].calls
            return [first, *rest], f"fastest: warming up {first.key} ({n}/{rule.warmup} calls)"
        ranked = sorted(live, key=lambda t: self._score(trackers[t]))
        picks = self._picks[route] = self._picks.get(route, 0) + 1
        if rule.explore_every and picks % rule.explore_every == 0:
            # the least recently used other target: a slow one may have recovered
            other = min(ranked[1:], key=lambda t: trackers[t].last_call_at or 0.0)
            rest = [t for t in ranked if t != other]
            return [other, *rest], f"fastest: exploring {other.key} (every {rule.explore_every})"
        best = ranked[0]
        return ranked, f"fastest: {best.key} (ewma {_ms(trackers[best].ewma_ms)})"

    @staticmethod
    def _score(tracker: LatencyTracker) -> float:
        # unmeasured sorts last among the measured; failures push a target down
        ewma = tracker.ewma_ms if tracker.ewma_ms is not None else float("inf")
        return ewma * (1 + 4 * tracker.error_rate())

    # --- the latency budget --------------------------------------------------------------

    def _within_budget(
        self, order: list[Target], why: str, budget_ms: float, strict: bool
    ) -> tuple[list[Target], str]:
        p95 = {t: self._tracker(t).p95_ms() for t in order}
        fits = [t for t in order if p95[t] is None or p95[t] <= budget_ms]  # type: ignore[operator]
        if fits:
            slow = [t for t in order if t not in fits]
            p = p95[fits[0]]
            fit_why = "not measured yet" if p is None else f"p95 {p:.1f} ms"
            return (
                [*fits, *slow],
                f"{why}; {fits[0].key} fits the {budget_ms:g} ms budget ({fit_why})",
            )
        best_p95 = min(v for v in p95.values() if v is not None)
        if strict:
            raise Overloaded(
                f"no target can meet the {budget_ms:g} ms latency budget "
                f"(best p95 {best_p95:.1f} ms) and the route is strict",
                retry_after_s=1,
                extra={"budget_ms": budget_ms, "best_p95_ms": round(best_p95, 3)},
            )
        ranked = sorted(order, key=lambda t: self._score(self._tracker(t)))
        return (
            ranked,
            f"no target meets the {budget_ms:g} ms budget (best p95 {best_p95:.1f} ms); "
            f"fastest healthy is {ranked[0].key}",
        )
