"""The experiment engine: assigns arms, counts outcomes, enforces guardrails, reports.

The request path only touches memory: :meth:`ExperimentEngine.pick_arm` hashes the unit and
consults the locally known stopped arms; :meth:`record` adds to local deltas. A background
:meth:`sync` (every ``sync_s``) pushes the deltas to the store, reads back the shared guard
state (an arm stopped by any replica is stopped here within one sync), and evaluates the
guardrails on the shared totals. A Redis outage therefore never fails a request: counts wait
in memory and assignment keeps working.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..policy import Experiment
from ._assignment import Assignment, assign, control_arm
from ._counters import ArmCounts, CounterStore, GuardState, MemoryCounterStore, Q, S
from ._feedback import FeedbackLedger
from ._report import build_report, error_rate_interval
from ._units import unit_hash

log = logging.getLogger("prism.experiments")

Experiments = Callable[[], Mapping[str, Experiment]]

#: exposure over time: a sample of the shared totals every EXPOSURE_EVERY_S, the last
#: EXPOSURE_SAMPLES of them (two hours) kept per experiment in each process
EXPOSURE_EVERY_S = 10.0
EXPOSURE_SAMPLES = 720


class ArmPick:
    """The arm picker of one request (``CompiledPolicy.decide`` calls it), whose assignment is
    counted by :meth:`count`, once the request is admitted: a request its key's limits refuse
    exposes no unit (the fast lane decides before the refusal is known, ``auth.py``)."""

    __slots__ = ("_engine", "_made")

    def __init__(self, engine: ExperimentEngine) -> None:
        self._engine = engine
        self._made: tuple[str, Assignment] | None = None

    def __call__(self, name: str, experiment: Experiment, unit: str | None) -> str:
        assignment = assign(name, experiment, unit, self._engine.stopped(name))
        self._made = (name, assignment)
        return assignment.arm

    def count(self) -> None:
        if self._made is not None:
            self._engine.expose(*self._made)
            self._made = None


class ExperimentEngine:
    def __init__(
        self,
        store: CounterStore | None = None,
        *,
        experiments: Experiments = dict,
        definition: Callable[[str], Mapping[str, str]] = lambda name: {},
        sync_s: float = 0.5,
    ) -> None:
        self.store: CounterStore = store or MemoryCounterStore()
        #: the running policy's experiments (read at every sync: reloads change them)
        self.experiments = experiments
        #: name -> {arm: what the arm serves} (``CompiledPolicy.arm_definitions``): the store
        #: keeps each arm's figures and stop under its definition, so an arm whose version is
        #: redefined (other weights, another model) starts afresh and the others keep theirs
        self.definition = definition
        #: which arm gave which answer, and which answers were scored (POST /v1/feedback)
        self.feedback = FeedbackLedger(self.store)
        self.sync_s = sync_s
        self._deltas: dict[str, dict[str, ArmCounts]] = {}
        self._guards: dict[str, GuardState] = {}
        self._task: asyncio.Task[None] | None = None
        self._sync_lock = asyncio.Lock()
        self.sync_errors = 0
        #: name -> samples {"t": unix time, "assigned": {arm: n}, "units": {arm: n}}
        self._exposure: dict[str, collections.deque[dict[str, Any]]] = {}

    @classmethod
    def from_url(
        cls, redis_url: str | None, *, state_file: Path | None = None, **kwargs: Any
    ) -> ExperimentEngine:
        """Shared through Redis when there is one; else this process's memory, kept in
        ``state_file`` across restarts when one is given."""
        if redis_url:
            from ._counters import RedisCounterStore

            return cls(RedisCounterStore(redis_url), **kwargs)
        return cls(MemoryCounterStore(state_file), **kwargs)

    # --- the request path (no I/O) -------------------------------------------------------

    def stopped(self, name: str) -> dict[str, dict[str, Any]]:
        guard = self._guards.get(name)
        return guard.stopped if guard is not None else {}

    def pick_arm(self, name: str, experiment: Experiment, unit: str | None) -> str | None:
        """The arm that serves this unit (stopped arms' units go to the control arm)."""
        assignment = assign(name, experiment, unit, self.stopped(name))
        self.expose(name, assignment)
        return assignment.arm

    def later_pick(self) -> ArmPick:
        """:meth:`pick_arm` for one request, the assignment counted when it says so."""
        return ArmPick(self)

    def expose(self, name: str, assignment: Assignment) -> None:
        """Count ``assignment``: a unit assigned to an arm."""
        delta = self._delta(name, assignment.arm)
        delta.assigned += 1
        delta.saw_unit(unit_hash(assignment.unit))

    def record(
        self,
        name: str,
        arm: str,
        *,
        ok: bool,
        latency_ms: float,
        cached: bool = False,
        unit: int | None = None,
    ) -> None:
        """A request the arm answered (``cached``: the cache answered for it); ``unit``: its
        unit's hash (``unit_hash``; None: a unit of its own)."""
        delta = self._delta(name, arm)
        if cached:
            delta.cached += 1
        else:
            delta.observe(latency_ms, ok=ok, unit=unit if unit is not None else unit_hash(None))

    def record_quality(self, name: str, arm: str, value: float, unit: int | None = None) -> None:
        """A caller's score for an answer of ``arm`` (accuracy, relevance, a click: 0..1 or
        any scale, as long as the experiment uses one); ``unit``: the answer's unit hash."""
        delta = self._delta(name, arm)
        delta.quality_count += 1
        delta.quality_sum += value
        delta.quality_sq += value * value
        row = delta.cluster(unit if unit is not None else unit_hash(None))
        row[Q] += 1
        row[S] += value

    def record_shadow(
        self, name: str, arm: str, *, ok: bool, latency_ms: float, cosines: list[float]
    ) -> None:
        """A mirrored call to a shadowed arm: its outcome is that arm's outcome."""
        delta = self._delta(name, arm)
        # the mirrored request's unit is not known here: a unit of its own
        delta.observe(latency_ms, ok=ok, unit=unit_hash(None))
        delta.shadow_requests += 1
        delta.shadow_errors += 0 if ok else 1
        delta.cosine_sum += sum(cosines)
        delta.cosine_count += len(cosines)

    def _arm_key(self, name: str, arm: str) -> str:
        definition = self.definition(name).get(arm)
        return f"{arm}@{definition}" if definition else arm

    def _srm_key(self, name: str, experiment: Experiment) -> str:
        """Assignments under the current split (weights, arm definitions, stops): the sample
        ratio test must not compare counts made under one split with another's weights."""
        guard = self._guards.get(name, GuardState())
        split = [
            sorted(
                (a, spec.weight, self.definition(name).get(a, ""))
                for a, spec in experiment.arms.items()
            ),
            # a stop sends an arm's units to the control, a resume sends them back: each is
            # a split of its own (the resume's baseline marks when it happened)
            sorted(guard.stopped),
            sorted((a, c.assigned) for a, c in guard.baseline.items()),
        ]
        digest = hashlib.blake2b(json.dumps(split).encode(), digest_size=4).hexdigest()
        return f"{name}:split:{digest}"

    async def _totals(self, name: str, arms: list[str]) -> dict[str, ArmCounts]:
        keys = {arm: self._arm_key(name, arm) for arm in arms}
        raw = await self.store.totals(name, list(keys.values()))
        return {arm: raw[key] for arm, key in keys.items()}

    async def _guard(self, name: str, experiment: Experiment) -> GuardState:
        """The shared guard state of the arms as defined now (a redefined arm's old stop and
        baseline belong to its old definition)."""
        raw = await self.store.guard(name)
        keys = {arm: self._arm_key(name, arm) for arm in experiment.arms}
        return GuardState(
            {arm: raw.stopped[key] for arm, key in keys.items() if key in raw.stopped},
            {arm: raw.baseline[key] for arm, key in keys.items() if key in raw.baseline},
        )

    def _delta(self, name: str, arm: str) -> ArmCounts:
        arms = self._deltas.setdefault(name, {})
        counts = arms.get(arm)
        if counts is None:
            counts = arms[arm] = ArmCounts()
        return counts

    # --- sync: push, read shared state, guardrails ---------------------------------------

    async def sync(self) -> None:
        async with self._sync_lock:
            pending, self._deltas = self._deltas, {}
            await self.feedback.share()
            experiments = self.experiments()
            try:
                for name, deltas in list(pending.items()):
                    await self.store.push(
                        name, {self._arm_key(name, a): d for a, d in deltas.items()}
                    )
                    del pending[name]  # pushed: a later failure must not push these again
                    experiment = experiments.get(name)
                    if experiment is not None:  # best effort: only the split test reads it
                        assigned = {
                            a: ArmCounts(assigned=d.assigned, unit_bits=d.unit_bits)
                            for a, d in deltas.items()
                        }
                        await self.store.push(self._srm_key(name, experiment), assigned)
                for name, experiment in experiments.items():
                    self._guards[name] = await self._guard(name, experiment)
                    await self._check_guardrails(name, experiment)
                    samples = self._exposure.get(name)
                    if not samples or time.time() - samples[-1]["t"] >= EXPOSURE_EVERY_S:
                        self._sample(name, await self._totals(name, list(experiment.arms)))
            except Exception as exc:
                # counts not yet pushed wait for the next sync; requests never notice
                for name, deltas in pending.items():
                    for arm, counts in deltas.items():
                        self._deltas.setdefault(name, {})[arm] = counts.merge(
                            self._delta(name, arm)
                        )
                self.sync_errors += 1
                if self.sync_errors in (1, 10) or self.sync_errors % 100 == 0:
                    log.warning(
                        "experiment counters not synced (%d times): %r", self.sync_errors, exc
                    )

    async def _check_guardrails(self, name: str, experiment: Experiment) -> None:
        rails = experiment.guardrails
        if rails.max_error_rate is None and rails.max_p95_ms is None:
            return
        control = control_arm(experiment)
        guard = self._guards[name]
        arms = [a for a in experiment.arms if a != control and a not in guard.stopped]
        if not arms:
            return
        totals = await self._totals(name, arms)
        for arm in arms:
            counts = totals[arm].merge(guard.baseline.get(arm, ArmCounts()), sign=-1)
            if counts.requests < rails.min_samples:
                continue
            reason = None
            # the error rate is judged by its always-valid interval: it is checked at every
            # sync, so a fixed-sample test would stop healthy arms on a lucky streak
            rate = error_rate_interval(counts)
            p95 = counts.percentile_ms(95)
            if (
                rails.max_error_rate is not None
                and rate is not None
                and rate[1] > rails.max_error_rate
            ):
                reason = (
                    f"error rate {rate[0]:.2%} > {rails.max_error_rate:.2%} "
                    f"(always-valid 95% interval {rate[1]:.2%}..{rate[2]:.2%})"
                )
            elif rails.max_p95_ms is not None and p95 is not None and p95 > rails.max_p95_ms:
                reason = f"p95 {p95:.1f} ms > {rails.max_p95_ms:g} ms"
            if reason is not None:
                await self.stop(name, arm, f"guardrail: {reason} over {counts.requests} requests")

    async def stop(self, name: str, arm: str, reason: str) -> bool:
        info = {"reason": reason, "at": time.time()}
        first = await self.store.stop(name, self._arm_key(name, arm), info)
        guard = self._guards.setdefault(name, GuardState())
        guard.stopped.setdefault(arm, info)
        if first:
            log.warning(
                "experiment %s: arm %r stopped, traffic goes to control: %s", name, arm, reason
            )
        return first

    async def resume(self, name: str, experiment: Experiment) -> None:
        """Operator's resume: stopped arms serve again; guardrails judge only what follows."""
        await self.sync()
        totals = await self._totals(name, list(experiment.arms))
        await self.store.resume(name, {self._arm_key(name, a): c for a, c in totals.items()})
        self._guards[name] = GuardState({}, totals)
        log.warning("experiment %s resumed by an operator", name)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.sync_s)
            await self.sync()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="prism-experiments-sync")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.sync()  # the last counts of this process are not lost on shutdown
        await self.store.aclose()

    # --- reports -------------------------------------------------------------------------

    def _sample(self, name: str, totals: Mapping[str, ArmCounts]) -> None:
        """Remember the arms' exposure now (units and assignments so far): the newest sample
        is always current, and samples are kept at least EXPOSURE_EVERY_S apart."""
        samples = self._exposure.setdefault(name, collections.deque(maxlen=EXPOSURE_SAMPLES))
        if len(samples) >= 2 and samples[-1]["t"] - samples[-2]["t"] < EXPOSURE_EVERY_S:
            samples.pop()
        samples.append(
            {
                "t": round(time.time(), 3),
                "assigned": {a: c.assigned for a, c in totals.items()},
                "units": {a: c.units for a, c in totals.items()},
            }
        )

    async def report(self, name: str, experiment: Experiment) -> dict[str, Any]:
        """The experiment's report from the shared totals (see ``_report.build_report``),
        with its exposure over time (``exposure``: this process's samples, oldest first)."""
        totals = await self._totals(name, list(experiment.arms))
        self._sample(name, totals)
        report = build_report(
            name,
            experiment,
            totals=totals,
            split=await self.store.totals(self._srm_key(name, experiment), list(experiment.arms)),
            guard=await self._guard(name, experiment),
            definitions=self.definition(name),
            counters=self.store.name,
        )
        report["exposure"] = list(self._exposure.get(name, ()))
        return report
