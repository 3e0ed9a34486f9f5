"""Everything a running gateway owns, built by the app's lifespan and shared by the doors.

``Runtime`` holds the current :class:`CompiledPolicy` (swapped atomically on reload), the live
backends, the response cache, the dispatcher and the metrics. The running policy is the
file's (``base``) with the operators' overrides laid over it (label moves, unloaded
versions: :mod:`gateway.repository`); a change to either recomposes and swaps it. Handlers receive it by
dependency injection; nothing lives in module globals, so tests can build many gateways.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prism.backends import PrismError

from .audit import AuditLog
from .auth import Access
from .cache import MemoryStore, RedisStore, ResponseCache
from .cache._reader import PipelinedReader, pipelined_for
from .deployments import DeploymentFailed, Deployments
from .dispatch import Dispatcher
from .draining import Drain
from .experiments import ExperimentEngine, ShadowMirror
from .metrics import Metrics
from .pipeline import Pipeline
from .policy import (
    CompiledPolicy,
    PolicyDocument,
    PolicyLoadError,
    compile_policy_file,
    issue_at,
)
from .policy._watch import PolicyWatcher
from .repository import Overrides, OverridesUnavailable, compose, override_store
from .settings import Settings

log = logging.getLogger("prism.runtime")

#: how long a backend a reload removed keeps serving requests of the previous policy
RETIRE_GRACE_S = 30.0
#: the longest the lifespan's own shutdown takes: with the drain's 5 + 20 s it adds up to
#: Kubernetes' default terminationGracePeriodSeconds (30 s), so deploy/ gives pods 40 s
CLOSE_TIMEOUT_S = 5.0


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
        #: the policy as the file (or the caller) has it, before overrides
        self._base = policy
        self.overrides_store = override_store(
            settings.redis_url,
            # a policy handed in (tests, embedding) has no file to keep overrides next to
            settings.overrides_state() if policy is None or settings.overrides_file else None,
        )
        #: the overrides the running policy was composed with, and those it had to skip
        self.overrides = Overrides()
        self.stale_overrides: list[dict[str, Any]] = []
        # the cache and the key store share one Redis's pipelined connections (one set of
        # sockets; a turn's queued commands, MGETs and lease releases, in one write:
        # cache/_reader.py)
        reader = pipelined_for(settings.redis_url, timeout_s=0.5) if settings.redis_url else None
        self._reader = reader  # this object's own share; each user takes one (``share``)
        self.cache = cache or self._default_cache(settings, reader)
        self.deployments = Deployments(
            Path(settings.data_dir),
            load_models=settings.load_models,
            drain_s=settings.unload_drain_s,
        )
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
            reader=reader,
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
        #: SIGTERM -> /readyz 503, serve on for the grace period, then close (draining.py)
        self.drain = Drain(settings.drain_grace_s)

    @staticmethod
    def _default_cache(settings: Settings, reader: PipelinedReader | None) -> ResponseCache:
        if settings.redis_url:
            shared = RedisStore(settings.redis_url, reader=reader)
            return ResponseCache(shared, half=settings.cache_half)
        store = MemoryStore(settings.cache_max_bytes, settings.cache_max_entries)
        return ResponseCache(store, half=settings.cache_half)

    # --- policy --------------------------------------------------------------------------

    @property
    def policy(self) -> CompiledPolicy:
        if self._policy is None:
            raise PrismError("no policy loaded")
        return self._policy

    @property
    def base(self) -> CompiledPolicy:
        """The policy file's own policy, without overrides."""
        if self._base is None:
            raise PrismError("no policy loaded")
        return self._base

    def load_policy(self) -> CompiledPolicy:
        return compile_policy_file(str(self.settings.policy), Path(self.settings.data_dir))

    def _composed(
        self, base: CompiledPolicy, overrides: Overrides
    ) -> tuple[CompiledPolicy, list[dict[str, Any]]]:
        if overrides.is_empty():
            return base, []
        composed = compose(base.document, overrides)
        policy = CompiledPolicy(composed.document, source=base.source, base_dir=base.base_dir)
        return policy, composed.stale

    async def start(self) -> None:
        if self._base is None:
            self._base = self.load_policy()
        try:
            self.overrides = await self.overrides_store.read()
        except OverridesUnavailable as exc:  # serve the file; the poll applies them later
            log.error("starting without overrides: %s", exc.detail)
        self._policy, self.stale_overrides = self._composed(self._base, self.overrides)
        await self.deployments.apply(self._policy)
        self.metrics.policy_valid.set(1)
        await self.experiments.sync()  # stops kept from before a restart apply from request 1
        self.experiments.start()
        self.access.start()
        self._watch_policy()
        self.spawn(self._follow_overrides())

    # --- overrides (the model repository API) ---------------------------------------------

    async def change_models(
        self,
        edit: Callable[[PolicyDocument, Overrides], Overrides],
        *,
        warm: frozenset[tuple[str, str]] = frozenset(),
    ) -> tuple[Overrides, Overrides]:
        """Run ``edit(file document, overrides)`` under the store's compare-and-set, then
        apply the result here at once (other replicas follow within a poll)."""
        base = self.base.document
        before, after = await self.overrides_store.update(lambda current: edit(base, current))
        await self.apply_overrides(after, warm=warm, again=True)
        return before, after

    async def apply_overrides(
        self,
        overrides: Overrides,
        *,
        warm: frozenset[tuple[str, str]] = frozenset(),
        again: bool = False,
    ) -> None:
        """Recompose the running policy with ``overrides`` and deploy what it changes.
        Versions it loads again are warmed up (one inference) before they serve;
        ``again``: apply even when the revision is the one running (retries failed loads)."""
        async with self._reload_lock:
            if not again and overrides.revision == self.overrides.revision:
                return
            running = self.policy
            policy, stale = self._composed(self.base, overrides)
            reloaded = {
                (name, version)
                for name, entry in running.document.models.items()
                for version in entry.unloaded
                if policy.is_loaded(name, version)
            }
            retired = await self.deployments.apply(policy, warm=warm | reloaded)
            self._policy, self.overrides, self.stale_overrides = policy, overrides, stale
            log.info("overrides revision %d applied (policy %s)", overrides.revision, policy.digest)
            if retired:
                self.spawn(self.deployments.retire(retired, RETIRE_GRACE_S))

    async def _follow_overrides(self) -> None:
        """Apply what other replicas change: poll the store's revision (one GET)."""
        unavailable = False
        while True:
            await asyncio.sleep(self.settings.overrides_poll_s)
            try:
                if await self.overrides_store.revision() != self.overrides.revision:
                    await self.apply_overrides(await self.overrides_store.read())
                unavailable = False
            except OverridesUnavailable as exc:
                if not unavailable:  # said once per outage, not twice a second
                    log.warning("cannot follow overrides: %s", exc.detail)
                unavailable = True
            except Exception:
                log.exception("applying overrides failed")

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
                base = await asyncio.to_thread(self.load_policy)  # YAML + validation
                # overrides the new file no longer allows are skipped and reported
                fresh, stale = self._composed(base, self.overrides)
                retired = await self._deploy(fresh)
            except PolicyLoadError as exc:
                self.last_reload_error = exc.detail
                self.last_reload_issues = [str(i) for i in exc.issues]
                self.metrics.policy_reloads.labels("invalid").inc()
                self.metrics.policy_valid.set(0)
                log.error("policy reload refused, keeping %s: %s", self.policy.digest, exc.detail)
                raise
            self._policy = fresh  # atomic: requests already running keep their reference
            self._base, self.stale_overrides = base, stale
            for item in stale:
                log.warning("override no longer applies: %s", item["reason"])
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
                    ("models", t.model, "versions", t.version, *where),
                    f"cannot load {t.key}: {why}",
                )
                for (t, why), where in zip(exc.failures, exc.where, strict=True)
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

    async def aclose(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Close what the gateway owns, in order, within ``timeout_s`` in all. A step still
        running then is left behind (logged with the stacks of the tasks still waiting) and
        the next one closes: a process told to stop stops, and the log says what held it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("the policy watcher", self._close_watcher),
            ("background tasks", self._cancel_background),
            ("experiment counters", self.experiments.aclose),  # the last counts go to Redis
            ("overrides", self.overrides_store.aclose),
            ("deployments", self.deployments.aclose),
            ("the cache", self.cache.aclose),
            ("keys", self.access.aclose),  # the last usage counts
            ("the audit log", self.audit.aclose),
            ("the Redis reader", self._close_reader),
        ]
        for name, close in steps:
            step = asyncio.ensure_future(close())
            # a step gets what is left, and never less than a moment (sockets to close)
            done, _ = await asyncio.wait({step}, timeout=max(deadline - loop.time(), 0.5))
            if not done:
                step.cancel()  # not awaited: a step that ignores cancelling would hold us again
                log.error(
                    "shutdown: closing %s did not finish within %.1f s; going on without it. "
                    "Tasks still waiting:\n%s",
                    name,
                    timeout_s,
                    waiting_tasks(),
                )
            elif not step.cancelled() and step.exception() is not None:
                log.error("shutdown: closing %s failed", name, exc_info=step.exception())

    async def _close_watcher(self) -> None:
        if self.policy_watcher is not None:
            await self.policy_watcher.aclose()

    async def _cancel_background(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _close_reader(self) -> None:
        if self._reader is not None:
            await self._reader.aclose()


def waiting_tasks(limit: int = 8) -> str:
    """Every task of the running loop but the caller's, with the innermost ``limit`` frames of
    where it waits: what a shutdown that overran was held by."""
    current = asyncio.current_task()
    lines = []
    for task in asyncio.all_tasks():
        if task is current or task.done():
            continue
        lines.append(f"  {task.get_name()}: {task.get_coro()!r}")
        for frame in task.get_stack(limit=limit):
            code = frame.f_code
            lines.append(f"    {code.co_filename}:{frame.f_lineno} in {code.co_name}")
    return "\n".join(lines)
