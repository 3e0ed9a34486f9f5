"""The Dispatcher against real batched fake models: retries, deadlines, fallbacks, breakers, hedges."""

from __future__ import annotations

import asyncio
import time

import pytest

from prism.backends import (
    BackendError,
    BackendTimeout,
    InputItem,
    InvalidInput,
    Modality,
    ModelTimeout,
    Overloaded,
    QueueTimeout,
    Task,
)
from prism.gateway.policy import RequestFacts

from .conftest import deployed

ITEMS = [InputItem(text="hello")]
TEXT = RequestFacts(modalities=frozenset({Modality.TEXT}), task=Task.EMBED)


def policy(route: str, **versions: str) -> str:
    specs = "\n".join(
        f'      "{v}": {{backend: local, kind: fake, device: cpu, dim: 8, {spec}}}'
        for v, spec in versions.items()
    )
    return f"""
version: 1
models:
  m:
    versions:
{specs}
routes:
  - name: r
{route}
"""


async def test_retry_on_the_same_target_succeeds_after_backoff() -> None:
    text = policy(
        "    model: m\n    version: '1'\n    retries: 2", **{"1": "fail_every: 2, seed: 1"}
    )
    async with deployed(text) as (p, d):
        d.backoff_base_s = 0.001
        await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {})  # call 1 ok
        result = await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {})  # call 2 fails, 3 ok
        assert result.attempts == 2 and not result.fallback
        assert "m@1/local failed (backend_error)" in result.reason


async def test_fallback_answers_when_retries_are_spent() -> None:
    route = (
        "    model: m\n    version: '1'\n    retries: 1\n    fallback: [{model: m, version: '2'}]"
    )
    async with deployed(policy(route, **{"1": "fail_every: 1", "2": "seed: 2"})) as (p, d):
        d.backoff_base_s = 0.001
        result = await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {})
        assert result.target.key == "m@2/local" and result.fallback and result.attempts == 3
        assert "fell back to m@2/local" in result.reason


async def test_all_failing_raises_the_last_error_with_attempts() -> None:
    route = "    model: m\n    version: '1'\n    fallback: [{model: m, version: '2'}]"
    async with deployed(policy(route, **{"1": "fail_every: 1", "2": "fail_every: 1"})) as (p, d):
        with pytest.raises(BackendError) as info:
            await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {})
        assert info.value.status_code == 502 and info.value.extra["attempts"] == 2


async def test_callers_mistake_is_never_retried() -> None:
    route = (
        "    model: m\n    version: '1'\n    retries: 3\n    fallback: [{model: m, version: '2'}]"
    )
    async with deployed(policy(route, **{"1": "", "2": ""})) as (p, d):
        decision = p.decide(RequestFacts(modalities=frozenset({Modality.TEXT}), task=Task.CLASSIFY))
        with pytest.raises(InvalidInput) as info:
            await d.run(decision, Task.CLASSIFY, ITEMS, {})  # classify without labels
        assert info.value.extra["attempts"] == 1
        health = d.health.of(decision.targets[0])
        assert health.breaker.state == "closed" and health.tracker.failures == 0


async def test_deadline_covers_every_attempt() -> None:
    route = "    model: m\n    version: '1'\n    timeout_ms: 150\n    retries: 5"
    async with deployed(policy(route, **{"1": "latency_ms: 400"})) as (p, d):
        started = time.perf_counter()
        with pytest.raises(BackendTimeout) as info:
            await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {})
        assert info.value.status_code == 504
        assert time.perf_counter() - started < 2.0  # one 150 ms deadline, not 6 x 400 ms


async def test_breaker_trips_and_traffic_goes_to_fallback_without_failures() -> None:
    route = (
        "    model: m\n    version: '1'\n    fallback: [{model: m, version: '2'}]\n"
        "    circuit: {failures: 3, cooldown_s: 30}"
    )
    async with deployed(policy(route, **{"1": "fail_every: 1", "2": "seed: 2"})) as (p, d):
        results = [await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {}) for _ in range(10)]
        assert all(r.target.key == "m@2/local" for r in results)
        assert [r.attempts for r in results[:3]] == [2, 2, 2]
        assert [r.attempts for r in results[3:]] == [1] * 7  # m@1 skipped: circuit open
        assert "skipped open circuit: m@1/local" in results[-1].reason
        assert d.health.of(p.decide(TEXT).targets[0]).breaker.state == "open"


async def test_every_circuit_open_is_503_with_retry_after() -> None:
    route = "    model: m\n    version: '1'\n    circuit: {failures: 1, cooldown_s: 30}"
    async with deployed(policy(route, **{"1": "fail_every: 1"})) as (p, d):
        with pytest.raises(BackendError):
            await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {})
        with pytest.raises(Overloaded) as info:
            await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {})
        assert info.value.status_code == 503 and int(info.value.headers["Retry-After"]) >= 1


async def test_hedge_to_a_second_target_first_answer_wins() -> None:
    route = (
        "    targets: [{model: m, version: '1'}, {model: m, version: '2'}]\n    hedge_after_ms: 20"
    )
    async with deployed(policy(route, **{"1": "latency_ms: 500", "2": "seed: 2"})) as (p, d):
        started = time.perf_counter()
        result = await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {})
        assert result.target.key == "m@2/local" and result.attempts == 2
        assert "hedged" in result.reason
        assert time.perf_counter() - started < 0.45  # did not wait for the slow one
        slow = d.health.of(p.decide(TEXT).targets[0]).tracker
        assert slow.in_flight == 0 and slow.failures == 0  # the loser was cancelled, not failed


async def test_no_hedge_when_the_first_answers_in_time() -> None:
    route = (
        "    targets: [{model: m, version: '1'}, {model: m, version: '2'}]\n    hedge_after_ms: 300"
    )
    async with deployed(policy(route, **{"1": "", "2": ""})) as (p, d):
        result = await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {})
        assert result.target.key == "m@1/local" and result.attempts == 1


async def test_strict_budget_refuses_when_no_target_can_meet_it() -> None:
    route = (
        "    targets: [{model: m, version: '1'}]\n"
        "    latency: {budget_ms: 5, strategy: fastest, warmup: 1}\n    strict: true"
    )
    async with deployed(policy(route, **{"1": "latency_ms: 20"})) as (p, d):
        for _ in range(5):  # unmeasured: tried (it may fit); then its p95 is known
            await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {}, budget_ms=None)
        with pytest.raises(Overloaded) as info:
            await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {}, budget_ms=5)
        assert info.value.headers["Retry-After"] == "1"
        ok = await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {}, budget_ms=500)
        assert "fits the 500 ms budget" in ok.reason


async def test_hedge_at_p95_waits_for_a_measured_p95() -> None:
    route = (
        "    targets: [{model: m, version: '1'}, {model: m, version: '2'}]\n    hedge_after_ms: p95"
    )
    async with deployed(policy(route, **{"1": "latency_ms: 150", "2": "seed: 2"})) as (p, d):
        first = await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {})
        assert first.target.key == "m@1/local"  # nothing measured: no hedge
        slow = d.health.of(p.decide(TEXT).targets[0]).tracker
        for _ in range(30):  # as if it usually answered in 10 ms
            slow.end(10, ok=True)
        hedged = await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {})
        assert hedged.target.key == "m@2/local" and hedged.attempts == 2


async def test_timeouts_under_load_never_open_a_circuit() -> None:
    # One input at a time, 300 ms each, 100 ms deadline: the first caller's input runs and
    # times out (504, the model was slowed down); the others never leave the queue (503).
    # Both say "retry later", and neither is the model failing: the circuit stays closed.
    route = "    model: m\n    version: '1'\n    timeout_ms: 100\n    circuit: {failures: 2}"
    spec = "latency_ms: 300, batching: {max_batch_size: 1}"
    async with deployed(policy(route, **{"1": spec})) as (p, d):
        results = await asyncio.gather(
            *(d.run(p.decide(TEXT), Task.EMBED, [InputItem(text=f"t{i}")], {}) for i in range(6)),
            return_exceptions=True,
        )
        timeouts = [r for r in results if isinstance(r, ModelTimeout)]
        queued = [r for r in results if isinstance(r, QueueTimeout)]
        assert len(timeouts) == 1 and len(queued) == 5, results
        assert timeouts[0].status_code == 504 and timeouts[0].headers["Retry-After"] == "1"
        assert all(q.status_code == 503 and q.headers["Retry-After"] == "1" for q in queued)
        health = d.health.of(p.decide(TEXT).targets[0])
        assert health.breaker.state == "closed" and health.tracker.failures == 0


async def test_an_attempt_timeout_leaves_time_to_fall_back() -> None:
    route = (
        "    model: m\n    version: '1'\n    timeout_ms: 3000\n    attempt_timeout_ms: 200\n"
        "    fallback: [{model: m, version: '2'}]"
    )
    async with deployed(policy(route, **{"1": "latency_ms: 1500", "2": "seed: 2"})) as (p, d):
        started = time.perf_counter()
        result = await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {})
        assert result.target.key == "m@2/local" and result.fallback
        assert time.perf_counter() - started < 1.4  # not the 1.5 s of the slow first target
        assert "m@1/local failed (model_timeout)" in result.reason


async def test_the_implicit_model_route_keeps_a_circuit_another_route_configured() -> None:
    route = (
        "    match: {headers: {x-tenant: a}}\n    model: m\n    version: '1'\n"
        "    circuit: {failures: 2, cooldown_s: 4}"
    )
    async with deployed(policy(route, **{"1": ""})) as (p, d):
        tenant = RequestFacts(
            modalities=frozenset({Modality.TEXT}), task=Task.EMBED, headers={"x-tenant": "a"}
        )
        await d.run(p.decide(tenant), Task.EMBED, ITEMS, {})
        target = p.decide(tenant).targets[0]
        assert d.health.of(target).breaker.cooldown_s == 4
        direct = RequestFacts(modalities=frozenset({Modality.TEXT}), task=Task.EMBED, model="m")
        decision = p.decide(direct)
        assert decision.rule == "model:m"
        await d.run(decision, Task.EMBED, ITEMS, {})
        assert d.health.of(target).breaker.cooldown_s == 4  # not reset to the defaults


async def test_a_second_dispatch_of_a_request_gets_only_the_time_left() -> None:
    # a follower that must compute what its leader could not keeps its request's deadline
    route = "    model: m\n    version: '1'\n    timeout_ms: 500"
    async with deployed(policy(route, **{"1": "latency_ms: 300"})) as (p, d):
        began = time.perf_counter() - 0.4  # the request started 400 ms ago
        with pytest.raises(BackendTimeout):
            await d.run(p.decide(TEXT), Task.EMBED, ITEMS, {}, started=began)
        assert time.perf_counter() - began < 0.75  # 500 ms from the start, not from now
