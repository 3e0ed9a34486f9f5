"""Recent latency, errors and load of one target, updated on every call.

The tracker answers the three questions routing asks: how fast is this target lately (a
decaying EWMA), can it meet a budget (p95 over a sliding window), and how busy is it now
(calls in flight). Everything is in milliseconds and in-process: each gateway replica learns
the targets it talks to, which is what its own requests will experience.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    ms: float
    ok: bool


class LatencyTracker:
    """EWMA + sliding-window p95 / error rate + in-flight count for one target.

    ``alpha`` weighs the newest sample in the EWMA; the window keeps the last ``window``
    samples no older than ``window_s`` seconds, so a target that recovered is judged on how
    it behaves now, not on an outage an hour ago.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.3,
        window: int = 256,
        window_s: float = 60.0,
        min_samples: int = 5,
        clock: Clock = time.monotonic,
    ) -> None:
        self.alpha = alpha
        self.window_s = window_s
        #: samples needed before p95 is reported (fewer say nothing reliable)
        self.min_samples = min_samples
        self._clock = clock
        self._samples: deque[_Sample] = deque(maxlen=window)
        self.ewma_ms: float | None = None
        self.in_flight = 0
        #: calls finished since the process started (successes and failures)
        self.calls = 0
        self.failures = 0
        self.last_call_at: float | None = None

    # --- updates -------------------------------------------------------------------------

    def begin(self) -> None:
        self.in_flight += 1

    def end(self, ms: float, *, ok: bool) -> None:
        """One finished call: latency in ms and whether the target answered well."""
        self.in_flight = max(0, self.in_flight - 1)
        now = self._clock()
        self._samples.append(_Sample(now, ms, ok))
        self.calls += 1
        self.last_call_at = now
        if not ok:
            self.failures += 1
            return
        # only successes feed the EWMA: a fast failure must not make a target look fast
        self.ewma_ms = (
            ms if self.ewma_ms is None else self.ewma_ms + self.alpha * (ms - self.ewma_ms)
        )

    def abandon(self) -> None:
        """A call that ended without a verdict (cancelled hedge loser, the caller's mistake)."""
        self.in_flight = max(0, self.in_flight - 1)

    # --- reads ---------------------------------------------------------------------------

    def _recent(self) -> list[_Sample]:
        cutoff = self._clock() - self.window_s
        while self._samples and self._samples[0].at < cutoff:
            self._samples.popleft()
        return list(self._samples)

    @property
    def samples(self) -> int:
        """Calls finished within the window."""
        return len(self._recent())

    def p95_ms(self) -> float | None:
        """95th percentile of successful calls in the window (nearest rank); None = unknown."""
        return self.percentile_ms(95)

    def percentile_ms(self, q: float) -> float | None:
        values = sorted(s.ms for s in self._recent() if s.ok)
        if len(values) < self.min_samples:
            return None
        rank = max(1, math.ceil(q / 100 * len(values)))
        return values[rank - 1]

    def error_rate(self) -> float:
        recent = self._recent()
        if not recent:
            return 0.0
        return sum(not s.ok for s in recent) / len(recent)

    def snapshot(self) -> dict[str, Any]:
        p50 = self.percentile_ms(50)
        p95 = self.p95_ms()
        return {
            "ewma_ms": None if self.ewma_ms is None else round(self.ewma_ms, 3),
            "p50_ms": None if p50 is None else round(p50, 3),
            "p95_ms": None if p95 is None else round(p95, 3),
            "error_rate": round(self.error_rate(), 4),
            "window_samples": self.samples,
            "in_flight": self.in_flight,
            "calls": self.calls,
            "failures": self.failures,
        }
