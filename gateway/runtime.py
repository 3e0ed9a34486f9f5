"""Everything a running gateway owns, built by the app's lifespan and shared by the doors.

``Runtime`` holds the current :class:`CompiledPolicy` (swapped atomically on reload), the live
backends, the response cache, the dispatcher and the metrics. Handlers receive it by
dependency injection; nothing lives in module globals, so tests can build many gateways.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prism.backends import PrismError

from .audit import AuditLog
from .auth import Access
from .cache import MemoryStore, RedisStore, ResponseCache
from .deployments import DeploymentFailed, Deployments
from .dispatch import Dispatcher
from .experiments import ExperimentEngine, ShadowMirror
from .metrics import Metrics
from .pipeline import Pipeline
from .policy import CompiledPolicy, PolicyLoadError, compile_policy_file, issue_at
from .policy._watch import PolicyWatcher
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
        # keys and audit go next to the policy file, unless a policy object was handed in
        # (tests, embedding: no file to keep them beside)
        beside_policy = policy is None
        self.access = Access(
            settings,
            self.metrics,
            settings.keys_path() if beside_policy or settings.keys_file else None,
        )
        self.audit = AuditLog(
            settings.redis_url,
            settings.audit_path() if beside_policy or settings.audit_file else None,
        )
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
        self.pipeline = Pipeline(
            settings,
            policy=lambda: self.policy,
            cache=self.cache,
            dispatcher=self.dispatcher,
            deployments=self.deployments,
            experiments=self.experiments,
            mirror=self.mirror,
            metrics=self.metrics,
        )
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
        self.access.start()
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

    def known_models(self) -> Mapping[str, Any]:
        """The running policy's models ({} before one is loaded): what metric labels may name."""
        return self._policy.models if self._policy is not None else {}

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
        await self.access.aclose()
        await self.audit.aclose()
