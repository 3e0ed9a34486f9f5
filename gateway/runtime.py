"""Everything a running gateway owns, built by the app's lifespan and shared by the doors.

``Runtime`` holds the current :class:`CompiledPolicy` (swapped atomically on reload), the live
backends, the response cache, the dispatcher and the metrics. Handlers receive it by
dependency injection; nothing lives in module globals, so tests can build many gateways.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from prism.backends import InputItem, Output, PrismError, Task

from .cache import MemoryStore, RedisStore, ResponseCache
from .deployments import DeploymentFailed, Deployments
from .dispatch import Dispatcher
from .experiments import ExperimentEngine, ShadowMirror, blames_the_arm
from .metrics import Metrics
from .pipeline import Pipeline
from .policy import CompiledPolicy, Decision, PolicyLoadError, compile_policy_file, issue_at
from .policy._watch import PolicyWatcher
from .schema import RouteInfo
from .settings import Settings

log = logging.getLogger("prism.runtime")

#: how long a backend a reload removed keeps serving requests of the previous policy
RETIRE_GRACE_S = 30.0


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        policy: CompiledPolicy | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self._policy = policy
        self.cache = cache or self._default_cache(settings)
        self.deployments = Deployments(Path(settings.data_dir), load_models=settings.load_models)
        # batch sizes, queue depths and upstream calls are read from the backends at scrape time
        self.metrics.watch_cache(lambda: self.cache.stats)
        self.metrics.watch_backends(
            lambda: [(d.target.key, d.backend) for d in self.deployments.all()]
        )
        self.dispatcher = Dispatcher(self.deployments, metrics=self.metrics)
        self.pipeline = Pipeline(self)
        self.last_reload_error: str | None = None
        #: every issue of the last refused reload (``last_reload_error`` is the first)
        self.last_reload_issues: list[str] = []
        self.last_reload_at: float | None = None
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        # experiment counters get a Redis client of their own (not the cache's)
        self.experiments = ExperimentEngine.from_url(
            settings.redis_url,
            # a policy handed in (tests, embedding) has no file to keep state next to
            state_file=(
                settings.experiments_state()
                if policy is None or settings.experiments_file
                else None
            ),
            experiments=lambda: self._policy.document.experiments if self._policy else {},
            definition=lambda name: self._policy.arm_definitions(name) if self._policy else {},
        )
        self.mirror = ShadowMirror(self.dispatcher.call, self.experiments, self.spawn)
        self.policy_watcher: PolicyWatcher | None = None

    @staticmethod
    def _default_cache(settings: Settings) -> ResponseCache:
        if settings.redis_url:
            return ResponseCache(RedisStore(settings.redis_url), half=settings.cache_half)
        store = MemoryStore(settings.cache_max_bytes, settings.cache_max_entries)
        return ResponseCache(store, half=settings.cache_half)

    # --- policy --------------------------------------------------------------------------

    @property
    def policy(self) -> CompiledPolicy:
        if self._policy is None:
            raise PrismError("no policy loaded")
        return self._policy

    def load_policy(self) -> CompiledPolicy:
        return compile_policy_file(str(self.settings.policy), Path(self.settings.data_dir))

    async def start(self) -> None:
        if self._policy is None:
            self._policy = self.load_policy()
        await self.deployments.apply(self._policy)
        self.metrics.policy_valid.set(1)
        await self.experiments.sync()  # stops kept from before a restart apply from request 1
        self.experiments.start()
        self._watch_policy()

    def _watch_policy(self) -> None:
        """Watch the policy file, when the running policy came from it (tests may pass one)."""
        path = Path(self.settings.policy)
        if self.settings.policy_watch_s <= 0 or not path.exists():
            return
        if Path(self.policy.source).resolve() != path.resolve():
            return
        self.policy_watcher = PolicyWatcher(
            path,
            self.settings.policy_watch_s,
            self.reload,
            failing=lambda: self.last_reload_error is not None,
        )
        self.policy_watcher.start()

    async def reload(self) -> CompiledPolicy:
        """Load, validate, compile, deploy, swap. A bad file leaves the running policy as is."""
        async with self._reload_lock:
            self.last_reload_at = time.time()
            try:
                fresh = await asyncio.to_thread(self.load_policy)  # YAML + validation
                retired = await self._deploy(fresh)
            except PolicyLoadError as exc:
                self.last_reload_error = exc.detail
                self.last_reload_issues = [str(i) for i in exc.issues]
                self.metrics.policy_reloads.labels("invalid").inc()
                self.metrics.policy_valid.set(0)
                log.error("policy reload refused, keeping %s: %s", self.policy.digest, exc.detail)
                raise
            self._policy = fresh  # atomic: requests already running keep their reference
            self.last_reload_error = None
            self.last_reload_issues = []
            self.metrics.policy_reloads.labels("ok").inc()
            self.metrics.policy_valid.set(1)
            log.info("policy %s from %s is live", fresh.digest, fresh.source)
            if retired:
                # models that left the policy go once in-flight requests had time to finish
                self.spawn(self.deployments.retire(retired, RETIRE_GRACE_S))
            return fresh

    async def _deploy(self, fresh: CompiledPolicy) -> list[Any]:
        """Load what ``fresh`` adds or changes; a version that cannot load refuses the reload
        (like a file that does not validate), and the running policy keeps serving."""
        try:
            return await self.deployments.apply(fresh, atomic=True)
        except DeploymentFailed as exc:
            issues = [
                issue_at(
                    fresh.source,
                    ("models", t.model, "versions", t.version),
                    f"cannot load {t.key}: {why}",
                )
                for t, why in exc.failures
            ]
            raise PolicyLoadError(issues) from exc

    # --- hooks the pipeline calls ----------------------------------------------------------

    def pick_arm(self, name: str, experiment: Any, unit: str | None) -> str | None:
        """Experiment arm for this unit (sticky; a stopped arm's units get the control)."""
        return self.experiments.pick_arm(name, experiment, unit)

    def observe(
        self,
        door: str,
        decision: Decision,
        route: RouteInfo,
        total_ms: float,
        request_id: str | None = None,
        *,
        arm_answered: bool = True,
    ) -> None:
        """A request that got its answer. ``arm_answered`` is False when another version (a
        fallback) answered for the experiment arm's: the arm failed, whatever the caller got."""
        labels = (door, decision.rule, decision.model, decision.version, route.target)
        self.metrics.requests.labels(*labels, "ok").inc()
        self.metrics.latency.labels(*labels).observe(total_ms / 1000)
        if decision.experiment is not None and decision.arm is not None:
            cached = route.cache == "hit"
            self.experiments.record(
                decision.experiment,
                decision.arm,
                ok=arm_answered and not route.fallback,
                latency_ms=total_ms,
                cached=cached,
            )
            if request_id is not None and arm_answered and not route.fallback:
                # POST /v1/feedback may score this answer later (only the arm's own answers)
                self.experiments.remember(request_id, decision.experiment, decision.arm)

    def observe_error(
        self, door: str, decision: Decision, exc: PrismError, total_ms: float
    ) -> None:
        """A request that failed after its decision. Failures of the arm's version count
        against the arm; the caller's mistakes (4xx) and load (503, a model slowed down by
        contention) do not, or a traffic burst would trip a guardrail on a healthy arm."""
        labels = (door, decision.rule, decision.model, decision.version, "")
        self.metrics.requests.labels(*labels, "error").inc()
        exc.counted = True
        if decision.experiment is not None and decision.arm is not None and blames_the_arm(exc):
            self.experiments.record(
                decision.experiment, decision.arm, ok=False, latency_ms=total_ms
            )

    def shadow(
        self,
        decision: Decision,
        task: Task,
        items: list[InputItem],
        parameters: dict[str, Any],
        answer: list[Output | None],
    ) -> None:
        """Mirror the request to the shadowed arm in the background (never awaited)."""
        self.mirror.mirror(decision, task, items, parameters, answer)

    # --- lifecycle -----------------------------------------------------------------------

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a background task the runtime keeps a reference to (and cancels on close)."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @property
    def ready(self) -> bool:
        """Serving: loading has settled and every route with a local target has one up
        (remote outages are reported by /readyz, but they do not make this process unready)."""
        return (
            self._policy is not None
            and self.deployments.settled
            and not self.deployments.routes_without_healthy_target(self._policy, local_only=True)
        )

    async def aclose(self) -> None:
        if self.policy_watcher is not None:
            await self.policy_watcher.aclose()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.experiments.aclose()
        await self.deployments.aclose()
        await self.cache.aclose()
