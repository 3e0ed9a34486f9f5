"""A circuit breaker per target: stop sending traffic to a target that keeps failing.

Closed -> open after ``failures`` consecutive failures or when the error rate over the last
``window`` calls (at least ``min_calls``) reaches ``error_rate``. Open -> half-open after
``cooldown_s``: exactly one probe call is let through; its success closes the circuit, its
failure opens it for another cooldown. While open the target is skipped, so callers go to the
next target or a fallback instead of waiting on a known-bad one.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Literal

from ._latency import Clock

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        *,
        failures: int = 5,
        error_rate: float = 0.5,
        min_calls: int = 20,
        window: int = 50,
        cooldown_s: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.failures = failures
        self.error_rate = error_rate
        self.min_calls = min_calls
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._state: State = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_out = False
        #: times this circuit opened since the process started
        self.trips = 0
        self.last_reason: str | None = None

    def configure(
        self, *, failures: int, error_rate: float, min_calls: int, cooldown_s: float
    ) -> None:
        """Apply a route's (possibly reloaded) thresholds; the current state is kept."""
        self.failures = failures
        self.error_rate = error_rate
        self.min_calls = min_calls
        self.cooldown_s = cooldown_s

    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return self._state

    def retry_after_s(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when it would now)."""
        if self._state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.cooldown_s - self._clock())

    def available(self) -> bool:
        """Would a call be let through now? (No side effects: routing asks about many.)"""
        state = self.state
        if state == "closed":
            return True
        return state == "half_open" and not self._probe_out

    def acquire(self) -> bool:
        """Claim the right to call now; in half-open this takes the single probe slot."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probe_out:
            self._state = "half_open"
            self._probe_out = True
            return True
        return False

    def probe_recovered(self, at: float) -> None:
        """A health probe found the target up at ``at`` (this breaker's clock) after the
        circuit opened: let the single half-open trial through now instead of after the
        cooldown, so a recovered upstream is not held off while /readyz says it is up."""
        if self._state == "open" and at >= self._opened_at:
            self._opened_at = self._clock() - self.cooldown_s

    def release(self) -> None:
        """A claimed call ended without a verdict (cancelled): free the probe slot."""
        self._probe_out = False

    def record(self, ok: bool) -> None:
        self._probe_out = False
        # a late answer from a call started before the circuit opened counts as the probe
        if self.state == "half_open":
            if ok:
                self._close()
            else:
                self._open("half-open probe failed")
            return
        self._outcomes.append(ok)
        self._consecutive = 0 if ok else self._consecutive + 1
        if self._state != "closed":
            return
        if self._consecutive >= self.failures:
            self._open(f"{self._consecutive} consecutive failures")
            return
        n = len(self._outcomes)
        if n >= self.min_calls:
            rate = self._outcomes.count(False) / n
            if rate >= self.error_rate:
                self._open(f"error rate {rate:.0%} over the last {n} calls")

    def _open(self, reason: str) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self.trips += 1
        self.last_reason = reason

    def _close(self) -> None:
        self._state = "closed"
        self._consecutive = 0
        self._outcomes.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "trips": self.trips,
            "last_reason": self.last_reason,
            "retry_after_s": round(self.retry_after_s(), 3),
            "consecutive_failures": self._consecutive,
        }
