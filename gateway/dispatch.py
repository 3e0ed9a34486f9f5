"""Executes a routing decision: which target is tried, in what order, with what deadline.

The spine runs ``pinned`` routing: the decision's first target, then its fallbacks, each
once, inside the route's deadline. Failures that a retry cannot fix (the caller's mistakes,
an upstream's 4xx) are raised at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backends import BackendError, BackendTimeout, InputItem, NotReady, Output, PrismError, Task

from .deployments import Deployments
from .policy import Decision, Target


@dataclass
class DispatchResult:
    outputs: list[Output]
    target: Target
    attempts: int
    fallback: bool
    reason: str
    backend_ms: float


def _retryable(exc: PrismError) -> bool:
    if isinstance(exc, BackendError):
        return exc.retryable
    return isinstance(exc, NotReady)


class Dispatcher:
    def __init__(self, deployments: Deployments) -> None:
        self.deployments = deployments

    async def run(
        self,
        decision: Decision,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        *,
        budget_ms: float | None = None,
    ) -> DispatchResult:
        deadline = time.perf_counter() + decision.timeout_s
        plan = [(t, False) for t in decision.targets[:1]] + [(t, True) for t in decision.fallback]
        last: PrismError | None = None
        for attempt, (target, is_fallback) in enumerate(plan, start=1):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            start = time.perf_counter()
            try:
                backend = self.deployments.backend(target)
                outputs = await backend.infer(task, items, parameters, timeout_s=remaining)
            except PrismError as exc:
                last = exc
                if not _retryable(exc):
                    raise
                continue
            return DispatchResult(
                outputs,
                target,
                attempt,
                is_fallback,
                decision.reason,
                (time.perf_counter() - start) * 1000,
            )
        if last is None:
            raise BackendTimeout(
                f"route {decision.rule!r}: deadline of {decision.timeout_s:.3f} s passed"
            )
        raise last
