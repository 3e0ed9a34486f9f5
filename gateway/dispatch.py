"""Executes a routing decision: which targets are tried, in what order, until when.

One request's life here: the selector orders the route's targets (strategy, latency budget,
open circuits); the first is called, optionally hedged by a second target; failures worth
retrying are retried on the next target with exponential backoff and jitter, then the
route's fallbacks are tried in order; everything inside the route's ``timeout_ms`` deadline,
each attempt within ``attempt_timeout_ms`` when the route sets one.
Every call updates its target's :class:`~gateway.routing.LatencyTracker` and
:class:`~gateway.routing.CircuitBreaker`. The caller's mistakes are raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prism.backends import (
    Backend,
    BackendError,
    BackendTimeout,
    CircuitOpen,
    InputItem,
    Output,
    Overloaded,
    PrismError,
    Task,
    UpstreamBusy,
    blame,
)

from .deployments import Deployments
from .policy import Decision, Route, Target
from .routing import HealthBook, TargetSelector

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("prism.dispatch")


@dataclass
class DispatchResult:
    outputs: list[Output]
    target: Target
    attempts: int
    fallback: bool
    reason: str
    backend_ms: float


@dataclass
class _Attempt:
    """How one attempt (one call, or a call and its hedge) ended."""

    outputs: list[Output]
    target: Target
    calls: int
    hedged: bool = False
    error: PrismError | None = None


class Dispatcher:
    #: first retry waits about this long; each further retry doubles it (up to the cap)
    backoff_base_s = 0.05
    backoff_cap_s = 1.0

    def __init__(
        self,
        deployments: Deployments,
        *,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.deployments = deployments
        self.metrics = metrics
        self.health = HealthBook()
        self.rng = rng or random.Random()
        self.selector = TargetSelector(self.health, rng=self.rng)

    async def run(
        self,
        decision: Decision,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        *,
        budget_ms: float | None = None,
        started: float | None = None,
    ) -> DispatchResult:
        """``started``: when the request began (``time.perf_counter``); the route's deadline
        counts from there, so a second dispatch for the same request (a follower computing
        what its leader could not) gets only the time that is left."""
        started = time.perf_counter() if started is None else started
        route = decision.route
        deadline = started + decision.timeout_s
        # a target's breaker takes the settings of routes that set them: the implicit
        # model:NAME route (defaults) must not reset a circuit another route configured
        circuit = route.circuit if "circuit" in route.model_fields_set else None
        for t in (*decision.targets, *decision.fallback):
            breaker = self.health.of(t).breaker
            if breaker.state == "open" and (since := self.deployments.recovered_at(t)):
                breaker.probe_recovered(since)  # probe says up again: one trial now
        selection = self.selector.select(
            decision.rule,
            decision.targets,
            route.latency,
            budget_ms=budget_ms,
            strict=route.strict,
            circuit=circuit,
        )
        notes: list[str] = []
        # targets the health probes find down go last: the probe may be stale, so they are
        # still tried when nothing better is left, but never before a healthy one
        primary = self._probed_first(list(selection.order), notes)
        fallback = self._probed_first(
            [
                t
                for t in decision.fallback
                if self.health.of(t, circuit).breaker.available() and t not in primary
            ],
            notes,
        )
        calls = 0
        last: PrismError | None = None

        plan: list[tuple[Target, bool]] = []
        if primary:
            plan += [(primary[n % len(primary)], False) for n in range(1 + route.retries)]
        plan += [(t, True) for t in fallback]
        if not plan:
            raise self._all_open(decision)

        busy: set[Target] = set()  # said "later" in this request: try others first
        for n, (target, is_fallback) in enumerate(plan):
            if time.perf_counter() >= deadline:
                break
            if n > 0 and not self.health.of(target).breaker.available():
                notes.append(f"{target.key} skipped (circuit opened)")
                continue
            if target in busy:
                notes.append(f"{target.key} skipped (busy)")
                continue
            if n > 0 and not is_fallback:
                await self._backoff(n, deadline)
            alternate = self._alternate(target, primary, fallback) if n == 0 else None
            # a per-attempt limit leaves the rest of the deadline to retries and fallbacks
            until = deadline
            if route.attempt_timeout_ms is not None:
                until = min(deadline, time.perf_counter() + route.attempt_timeout_ms / 1000)
            done = await self._attempt(target, alternate, route, task, items, parameters, until)
            calls += done.calls
            if done.error is not None:
                if not blame(done.error).retry:
                    done.error.extra.setdefault("attempts", calls)
                    raise done.error
                last = done.error
                notes.append(f"{target.key} failed ({last.code})")
                if isinstance(last, Overloaded | UpstreamBusy):
                    busy.add(done.target)  # its Retry-After is longer than our backoff
                continue
            used_fallback = done.target in fallback
            if done.hedged:
                notes.append(f"hedged; {done.target.key} answered first")
            if used_fallback:
                notes.append(f"fell back to {done.target.key}")
            reason = "; ".join([decision.reason, selection.reason, *notes])
            return DispatchResult(
                done.outputs,
                done.target,
                calls,
                used_fallback,
                reason,
                (time.perf_counter() - started) * 1000,
            )

        # out of time: say so, unless the last word was load (503 + Retry-After says more)
        if last is None or (
            time.perf_counter() >= deadline and not isinstance(last, BackendTimeout | Overloaded)
        ):
            last = BackendTimeout(
                f"route {decision.rule!r}: the {route.timeout_ms:g} ms deadline passed "
                f"after {calls} attempt(s)" + (f"; last error: {last.detail}" if last else "")
            )
        last.extra.setdefault("attempts", calls)
        raise last

    def _probed_first(self, targets: list[Target], notes: list[str]) -> list[Target]:
        down = [t for t in targets if not self.deployments.probe_ok(t)]
        if not down or len(down) == len(targets):
            return targets
        notes.append("probe says down: " + ", ".join(t.key for t in down))
        return [t for t in targets if t not in down] + down

    # --- one attempt, maybe hedged ------------------------------------------------------

    @staticmethod
    def _alternate(target: Target, primary: list[Target], fallback: list[Target]) -> Target | None:
        """Where a hedge goes: the next primary target, else the first fallback."""
        for t in [*primary, *fallback]:
            if t != target:
                return t
        return None

    def _hedge_delay_s(self, route: Route, target: Target) -> float | None:
        if route.hedge_after_ms is None:
            return None
        if route.hedge_after_ms == "p95":
            p95 = self.health.of(target).tracker.p95_ms()
            return None if p95 is None else p95 / 1000  # nothing measured yet: do not hedge
        return float(route.hedge_after_ms) / 1000

    async def _attempt(
        self,
        target: Target,
        alternate: Target | None,
        route: Route,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        deadline: float,
    ) -> _Attempt:
        delay = self._hedge_delay_s(route, target) if alternate is not None else None
        if delay is None or alternate is None:
            try:
                outputs = await self.call(target, task, items, parameters, deadline=deadline)
            except PrismError as exc:
                return _Attempt([], target, 1, error=exc)
            return _Attempt(outputs, target, 1)
        first = asyncio.create_task(self.call(target, task, items, parameters, deadline=deadline))
        tasks: dict[asyncio.Task[list[Output]], Target] = {first: target}
        try:
            finished, _ = await asyncio.wait({first}, timeout=delay)
            if not finished and self.health.of(alternate).breaker.available():
                second = asyncio.create_task(
                    self.call(alternate, task, items, parameters, deadline=deadline)
                )
                tasks[second] = alternate
            error: PrismError | None = None
            pending = set(tasks)
            while pending:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in finished:
                    failure = fut.exception()
                    if failure is None:
                        return _Attempt(fut.result(), tasks[fut], len(tasks), len(tasks) > 1)
                    if not isinstance(failure, PrismError):
                        raise failure
                    error = failure
            assert error is not None
            return _Attempt([], target, len(tasks), len(tasks) > 1, error)
        finally:
            # the loser (or both, if our caller went away) is cancelled: a late answer is
            # worth nothing, and its slot in a batch is better used by someone else
            for fut in tasks:
                if not fut.done():
                    fut.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def call(
        self,
        target: Target,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        *,
        deadline: float,
    ) -> list[Output]:
        """One call to one target, accounted in its tracker, breaker and metrics."""
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise BackendTimeout(f"{target.key}: no time left before the route's deadline")
        # NotReady: try elsewhere, not its fault; counted in flight so an unload waits for it
        with self.deployments.serving(target) as backend:
            return await self._call(target, backend, task, items, parameters, remaining)

    async def _call(
        self,
        target: Target,
        backend: Backend,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        remaining: float,
    ) -> list[Output]:
        health = self.health.of(target)
        if not health.breaker.acquire():
            raise CircuitOpen(f"{target.key}: circuit open", retry_after_s=1)
        health.tracker.begin()
        start = time.perf_counter()
        try:
            outputs = await backend.infer(task, items, parameters, timeout_s=remaining)
        except asyncio.CancelledError:
            health.tracker.abandon()
            health.breaker.release()
            raise
        except PrismError as exc:
            self._failed(target, exc, (time.perf_counter() - start) * 1000)
            raise
        except Exception as exc:  # a backend bug is still that target's failure
            err = BackendError(f"{target.key} failed: {type(exc).__name__}")
            self._failed(target, err, (time.perf_counter() - start) * 1000)
            raise err from exc
        ms = (time.perf_counter() - start) * 1000
        health.tracker.end(ms, ok=True)
        health.breaker.record(True)
        if self.metrics is not None:
            self.metrics.backend_latency_of(target.key).observe(ms / 1000)
        return outputs

    def _failed(self, target: Target, exc: PrismError, ms: float) -> None:
        health = self.health.of(target)
        if blame(exc).target:
            health.tracker.end(ms, ok=False)
            trips = health.breaker.trips
            health.breaker.record(False)
            if health.breaker.trips > trips:
                log.warning(
                    "circuit of %s opened (%s); skipped for %.1f s",
                    target.key,
                    health.breaker.last_reason,
                    health.breaker.cooldown_s,
                )
            if self.metrics is not None:
                self.metrics.upstream_errors.labels(target.key, exc.code).inc()
        else:
            # the caller's mistake or a full queue: says nothing about the target's health
            health.tracker.abandon()
            health.breaker.release()

    async def _backoff(self, retry: int, deadline: float) -> None:
        """Exponential backoff with jitter (half to full step), never past the deadline."""
        step = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (retry - 1))
        delay = step * (0.5 + self.rng.random() / 2)
        await asyncio.sleep(max(0.0, min(delay, deadline - time.perf_counter())))

    def _all_open(self, decision: Decision) -> CircuitOpen:
        targets = [*decision.targets, *decision.fallback]
        wait = min((self.health.of(t).breaker.retry_after_s() for t in targets), default=1.0)
        return CircuitOpen(
            f"route {decision.rule!r}: every target's circuit is open "
            f"({', '.join(t.key for t in targets)})",
            retry_after_s=max(1, round(wait + 0.5)),
        )
