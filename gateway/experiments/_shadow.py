"""Shadow traffic: the treatment gets a copy of the request after the caller has its answer.

The caller is answered by the control arm; the mirror starts only afterwards, in a background
task, bounded in number (when the treatment is slow, extra mirrors are dropped and counted
rather than piling up), and every failure is swallowed into the treatment's counters. For
embeddings the cosine similarity between the two answers is recorded, per input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import numpy as np

from prism.backends import InputItem, Output, Task, blame

from ..policy import Decision, Target
from ._engine import ExperimentEngine

log = logging.getLogger("prism.shadow")

#: one call to one target: (target, task, items, parameters, deadline=perf_counter time)
TargetCall = Callable[..., Awaitable[list[Output]]]
Spawn = Callable[[Coroutine[Any, Any, None]], Any]


def cosine_similarities(answer: Sequence[Output], mirror: Sequence[Output]) -> list[float]:
    """Per input, where both sides are embeddings of the same width."""
    out: list[float] = []
    for a, b in zip(answer, mirror, strict=False):
        va, vb = a.get("embedding"), b.get("embedding")
        if va is None or vb is None:
            continue
        x = np.asarray(va, dtype=np.float64).ravel()
        y = np.asarray(vb, dtype=np.float64).ravel()
        if x.shape != y.shape:
            continue
        norm = float(np.linalg.norm(x) * np.linalg.norm(y))
        if norm > 0:
            out.append(float(x @ y) / norm)
    return out


class ShadowMirror:
    def __init__(
        self,
        call: TargetCall,
        engine: ExperimentEngine,
        spawn: Spawn,
        *,
        max_in_flight: int = 32,
    ) -> None:
        self.call = call
        self.engine = engine
        self.spawn = spawn
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        #: mirrors not sent (``max_in_flight`` still running) or lost to load (not failures)
        self.dropped = 0
        self.sent = 0

    def mirror(
        self,
        decision: Decision,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        answer: Sequence[Output | None],
    ) -> bool:
        """Start mirroring in the background; False when there is nothing to do or no room."""
        target, arm, name = decision.shadow, decision.shadow_arm, decision.experiment
        if target is None or arm is None or name is None:
            return False
        if self.in_flight >= self.max_in_flight:
            self.dropped += 1
            return False
        self.in_flight += 1
        self.sent += 1
        outputs = [o or {} for o in answer]
        self.spawn(
            self._run(name, arm, target, task, list(items), dict(parameters), outputs, decision)
        )
        return True

    async def _run(
        self,
        name: str,
        arm: str,
        target: Target,
        task: Task,
        items: list[InputItem],
        parameters: dict[str, Any],
        answer: list[Output],
        decision: Decision,
    ) -> None:
        start = time.perf_counter()
        try:
            mirrored = await self.call(
                target, task, items, parameters, deadline=start + decision.timeout_s
            )
        except Exception as exc:  # a mirror must never surface anywhere but its counters
            log.debug("shadow call to %s failed: %r", target.key, exc)
            if not blame(exc).target:  # load (a full queue, a timeout under contention)
                self.dropped += 1  # is a mirror not made, not a failure of the treatment
                return
            ms = (time.perf_counter() - start) * 1000
            self.engine.record_shadow(name, arm, ok=False, latency_ms=ms, cosines=[])
            return
        finally:
            self.in_flight -= 1
        ms = (time.perf_counter() - start) * 1000
        cosines = cosine_similarities(answer, mirrored)
        self.engine.record_shadow(name, arm, ok=True, latency_ms=ms, cosines=cosines)
