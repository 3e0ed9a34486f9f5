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

from backends import PrismError

from .cache import MemoryStore, RedisStore, ResponseCache
from .deployments import Deployments
from .dispatch import Dispatcher
from .metrics import Metrics
from .pipeline import Pipeline
from .policy import CompiledPolicy, Decision, PolicyLoadError, compile_policy_file
from .schema import RouteInfo
from .settings import Settings

log = logging.getLogger("prism.runtime")


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
        self.dispatcher = Dispatcher(self.deployments)
        self.pipeline = Pipeline(self)
        self.last_reload_error: str | None = None
        self.last_reload_at: float | None = None
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()

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
        compiled = compile_policy_file(str(self.settings.policy))
        compiled.base_dir = Path(self.settings.data_dir)
        return compiled

    async def start(self) -> None:
        if self._policy is None:
            self._policy = self.load_policy()
        await self.deployments.apply(self._policy)
        self.metrics.policy_valid.set(1)

    async def reload(self) -> CompiledPolicy:
        """Load, validate, compile, deploy, swap. A bad file leaves the running policy as is."""
        async with self._reload_lock:
            self.last_reload_at = time.time()
            try:
                fresh = self.load_policy()
            except PolicyLoadError as exc:
                self.last_reload_error = exc.detail
                self.metrics.policy_reloads.labels("invalid").inc()
                self.metrics.policy_valid.set(0)
                log.error("policy reload refused, keeping %s: %s", self.policy.digest, exc.detail)
                raise
            retired = await self.deployments.apply(fresh)
            self._policy = fresh  # atomic: requests already running keep their reference
            self.last_reload_error = None
            self.metrics.policy_reloads.labels("ok").inc()
            self.metrics.policy_valid.set(1)
            log.info("policy %s from %s is live", fresh.digest, fresh.source)
            if retired:
                # models that left the policy go once in-flight requests had time to finish
                self.spawn(self._close_later(retired))
            return fresh

    async def _close_later(self, retired: list[Any], grace_s: float = 30.0) -> None:
        await asyncio.sleep(grace_s)
        await Deployments.close(retired)

    # --- hooks the pipeline calls ----------------------------------------------------------

    def pick_arm(self, name: str, experiment: Any, unit: str | None) -> str | None:
        """Experiment arm for this unit; None = no experiment engine (serve the route)."""
        return None

    def observe(self, door: str, decision: Decision, route: RouteInfo, total_ms: float) -> None:
        labels = (door, decision.rule, decision.model, decision.version)
        self.metrics.requests.labels(*labels, "ok").inc()
        self.metrics.latency.labels(*labels).observe(total_ms / 1000)

    # --- lifecycle -----------------------------------------------------------------------

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a background task the runtime keeps a reference to (and cancels on close)."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @property
    def ready(self) -> bool:
        return self._policy is not None and self.deployments.ready

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.deployments.aclose()
        await self.cache.aclose()
