"""The live backends of the running policy: built, started, swapped on reload, closed.

A target (model@version on one replica) keeps its backend across reloads while its spec is
unchanged, so moving a label or editing a route never reloads a model; a changed or new
version is loaded before the new policy goes live, and a removed one is closed after it.
A version the policy lists as ``unloaded`` stops taking calls at once and is closed when
the calls it is serving have finished (or a bounded drain time has passed).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism.backends import (
    Backend,
    BackendSpec,
    Capabilities,
    InputItem,
    LocalBackend,
    Modality,
    NotReady,
    Output,
    Task,
    build_backend,
    output_fingerprint,
)

from .policy import CompiledPolicy, Target, issue_at

log = logging.getLogger("prism.deployments")


@dataclass
class Deployment:
    target: Target
    spec: BackendSpec
    backend: Backend
    #: False while loading (and after a failure); ``error`` then says why it failed
    ready: bool = False
    error: str | None = None
    #: spec + identity of its files when built: a reload rebuilds when either changed
    fingerprint: str = ""
    #: calls inside the backend right now
    in_flight: int = 0
    #: when it became ready (unix time)
    loaded_at: float | None = None
    #: being unloaded: takes no new calls, closes when ``in_flight`` reaches 0
    unloading: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def state(self) -> str:
        """loading | ready | failed | unloading (the model repository's words)."""
        if self.unloading:
            return "unloading"
        if self.ready:
            return "ready"
        return "failed" if self.error is not None else "loading"

    #: where in the version's spec the failure lies (a tensor contract key), when known
    error_at: tuple[str | int, ...] = ()


def _fingerprint(spec: BackendSpec, base_dir: Path) -> str:
    """Same spec and same files: the running backend stays (a reload keeps it warm)."""
    return spec.model_dump_json() + output_fingerprint(spec, base_dir)


class _Unbuildable(Backend):
    """Stands in for a backend that could not even be built: its start fails with the
    reason, so it is reported like any model that failed to load (and a reload is refused)."""

    def __init__(self, name: str, error: Exception) -> None:
        self.name = name
        self.error = error

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(frozenset(), frozenset())

    async def start(self) -> None:
        raise self.error

    async def infer(
        self,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
    ) -> list[Output]:
        raise NotReady(f"{self.name} could not be built", retry_after_s=5)

    async def health(self) -> bool:
        return False


def _tiny_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 255, 255)).save(out, format="PNG")
    return out.getvalue()


def warm_up_call(caps: Capabilities) -> tuple[Task, list[InputItem], dict[str, Any]]:
    """One small real request a backend can answer: what ``load`` sends before ``ready``."""
    task = Task.EMBED if Task.EMBED in caps.tasks or not caps.tasks else min(caps.tasks)
    if Modality.TEXT in caps.modalities or not caps.modalities:
        item = InputItem(text="warm-up")
    elif Modality.IMAGE in caps.modalities:
        item = InputItem(image=_tiny_png())
    else:
        item = InputItem(user="warm-up", history=())
    parameters: dict[str, Any] = {"labels": ["a", "b"]} if task is Task.CLASSIFY else {}
    return task, [item], parameters


class DeploymentFailed(Exception):
    """Targets of a new policy that could not be loaded: ``(target, reason)`` each, and
    where in each version's spec the reason lies (``()`` = the version as a whole)."""

    def __init__(
        self,
        failures: list[tuple[Target, str]],
        where: list[tuple[str | int, ...]] | None = None,
    ) -> None:
        super().__init__("; ".join(f"{t.key}: {why}" for t, why in failures))
        self.failures = failures
        self.where = where or [() for _ in failures]


class Deployments:
    def __init__(self, base_dir: Path, *, load_models: bool = True, drain_s: float = 30.0) -> None:
        self.base_dir = base_dir
        self.load_models = load_models
        #: the longest an unloaded version waits for its calls in flight before it closes
        self.drain_s = drain_s
        self._by_key: dict[str, Deployment] = {}
        #: the same deployments by (model, version): every request asks for its version's
        #: capabilities, and a scan of every deployment grew with the policy
        self._by_version: dict[tuple[str, str], list[Deployment]] = {}
        #: removed by a reload, closing after a grace period (see :meth:`retire`)
        self._retiring: dict[str, Deployment] = {}
        #: unloaded, closing once idle (see :meth:`_drain`)
        self._draining: dict[str, Deployment] = {}
        self._drains: dict[str, asyncio.Task[int]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def get(self, target: Target) -> Deployment:
        # a target a reload removed still serves the requests (retries, fallbacks) of the
        # policy they started with, until its grace period ends
        dep = self._by_key.get(target.key) or self._retiring.get(target.key)
        if dep is None:
            if target.key in self._draining:
                raise NotReady(f"{target.key} is being unloaded", retry_after_s=5)
            raise NotReady(f"{target.key} is not loaded", retry_after_s=5)
        return dep

    async def retire(self, deployments: list[Deployment], grace_s: float) -> None:
        """Keep ``deployments`` findable for ``grace_s``, then close them."""
        for dep in deployments:
            self._retiring.setdefault(dep.target.key, dep)
        await asyncio.sleep(grace_s)  # cancelled at shutdown: aclose closes them instead
        for dep in deployments:
            if self._retiring.get(dep.target.key) is dep:
                del self._retiring[dep.target.key]
        await self.close(deployments)

    def backend(self, target: Target) -> Backend:
        return self._ready(target).backend

    def _ready(self, target: Target) -> Deployment:
        dep = self.get(target)
        if not dep.ready:
            reason = f": {dep.error}" if dep.error else " (still loading)"
            raise NotReady(f"{target.key} is not ready{reason}", retry_after_s=5)
        return dep

    @contextmanager
    def serving(self, target: Target) -> Iterator[Backend]:
        """The target's backend for one call, counted in flight (an unload waits for it)."""
        dep = self._ready(target)
        dep.in_flight += 1
        dep.idle.clear()
        try:
            yield dep.backend
        finally:
            dep.in_flight -= 1
            if dep.in_flight == 0:
                dep.idle.set()

    def draining(self, model: str, version: str) -> list[Deployment]:
        """The deployments of ``model``/``version`` being unloaded."""
        return [
            d
            for d in self._draining.values()
            if (d.target.model, d.target.version) == (model, version)
        ]

    async def drained(self, model: str, version: str) -> int:
        """Wait until ``model``/``version`` is unloaded; returns the calls its drain time cut
        off (0: every call in flight finished)."""
        tasks = [t for k, t in self._drains.items() if k.startswith(f"{model}@{version}/")]
        done = await asyncio.gather(*(asyncio.shield(t) for t in tasks), return_exceptions=True)
        return sum(n for n in done if isinstance(n, int))

    def _unload(self, dep: Deployment) -> None:
        dep.unloading = True
        key = dep.target.key
        self._draining[key] = dep
        self._drains[key] = asyncio.create_task(self._drain(dep), name=f"prism-unload-{key}")

    async def _drain(self, dep: Deployment) -> int:
        key = dep.target.key
        cut_off = 0
        try:
            if dep.in_flight:
                log.info("unloading %s: %d call(s) in flight", key, dep.in_flight)
                try:
                    await asyncio.wait_for(dep.idle.wait(), self.drain_s)
                except TimeoutError:
                    cut_off = dep.in_flight
                    log.warning(
                        "unloading %s: %d call(s) still running after %.0f s, closing anyway",
                        key,
                        cut_off,
                        self.drain_s,
                    )
            await self.close([dep])
            log.info("unloaded %s", key)
            return cut_off
        finally:
            if self._draining.get(key) is dep:
                del self._draining[key]
                del self._drains[key]

    def probe_ok(self, target: Target) -> bool:
        """What the last health probe said, without waiting: remote backends probe in the
        background; a local one is healthy once loaded. Unknown targets count as down."""
        dep = self._by_key.get(target.key)
        if dep is None or not dep.ready:
            return False
        return bool(getattr(dep.backend, "healthy", True))

    def recovered_at(self, target: Target) -> float | None:
        """When a health probe last found ``target`` up after it was down (monotonic)."""
        dep = self._by_key.get(target.key)
        since = getattr(dep.backend, "healthy_since", None) if dep is not None else None
        return since if isinstance(since, float) else None

    def _serve(self, by_key: dict[str, Deployment]) -> None:
        """From now on these are the deployments requests use."""
        by_version: dict[tuple[str, str], list[Deployment]] = {}
        for d in by_key.values():
            by_version.setdefault((d.target.model, d.target.version), []).append(d)
        self._by_key, self._by_version = by_key, by_version

    def of_version(self, model: str, version: str) -> list[Deployment]:
        """The deployments (one per replica) of one model version."""
        return list(self._by_version.get((model, version), ()))

    def capabilities(self, model: str, version: str) -> Capabilities | None:
        """What a loaded backend of ``model``/``version`` reports; None while none is loaded."""
        for dep in self._by_version.get((model, version), ()):
            if dep.ready:
                return dep.backend.capabilities
        return None

    def all(self) -> list[Deployment]:
        return list(self._by_key.values())

    @property
    def settled(self) -> bool:
        """No local model is still loading: each one is loaded or has failed (and says why).

        Readiness is then decided per route (``routes_without_healthy_target``): a version
        that failed to load makes the gateway unready only when a route has nothing else.
        """
        return all(
            d.ready or d.error is not None
            for d in self._by_key.values()
            if isinstance(d.backend, LocalBackend)
        )

    def routes_without_healthy_target(
        self, policy: CompiledPolicy, *, local_only: bool = False
    ) -> list[str]:
        """Routes none of whose targets or fallbacks the health probes currently find up.

        ``local_only``: only routes with an in-process target, the ones this process can
        fix by loading a model. Readiness asks that: a remote provider's outage must not take
        every replica out of a load balancer (the other routes still serve)."""
        down: list[str] = []
        for route in policy.document.routes:
            refs = [*route.target_refs, *route.fallback]
            targets = []
            for ref in refs:
                version = policy.resolve_version(ref.model, ref.version)
                if policy.is_loaded(ref.model, version):
                    targets.extend(policy.targets_for(ref.model, version))
            if not targets:
                continue  # an operator unloaded all it has (on purpose: unload --force)
            if local_only and not any(t.replica is None for t in targets):
                continue
            if not any(self.probe_ok(t) for t in targets):
                down.append(route.name)
        return down

    async def _start(self, dep: Deployment, *, warm: bool = False) -> None:
        if not self.load_models and isinstance(dep.backend, LocalBackend):
            return
        try:
            await dep.backend.start()
        except Exception as exc:
            dep.error = f"{type(exc).__name__}: {exc}"
            dep.error_at = tuple(getattr(exc, "where", ()))
            log.error("failed to deploy %s: %s", dep.target.key, dep.error)
            return
        if warm:
            task, items, parameters = warm_up_call(dep.backend.capabilities)
            try:
                await dep.backend.infer(task, items, parameters, timeout_s=60.0)
            except Exception as exc:
                dep.error = f"warm-up inference failed: {type(exc).__name__}: {exc}"
                log.error("failed to deploy %s: %s", dep.target.key, dep.error)
                return
        dep.ready = True
        dep.loaded_at = time.time()
        log.info("deployed %s%s", dep.target.key, " (warmed up)" if warm else "")

    @staticmethod
    async def _verify(dep: Deployment) -> None:
        """A kept remote version re-reads its model's metadata (its upstream may have changed
        what it serves since); a contradicted contract fails the reload like a new one."""
        verify = getattr(dep.backend, "verify", None)
        if verify is None or not dep.ready:
            return
        try:
            await verify()
        except Exception as exc:
            dep.error_at = tuple(getattr(exc, "where", ()))
            raise DeploymentFailed(
                [(dep.target, f"{type(exc).__name__}: {exc}")], [dep.error_at]
            ) from exc

    async def apply(
        self,
        policy: CompiledPolicy,
        *,
        atomic: bool = False,
        warm: frozenset[tuple[str, str]] = frozenset(),
    ) -> list[Deployment]:
        """Bring the deployments in line with ``policy``; returns the ones to close later.

        New and changed targets are loaded before this returns (so the swap that follows
        serves them at once); the caller closes the returned, no-longer-needed deployments
        once requests still running on the old policy have finished. A target that failed to
        load before is tried again (its file may be there now).

        ``atomic`` (a reload): when a new or changed target fails to load where the running
        one did not, nothing changes: the fresh backends are closed and
        :class:`DeploymentFailed` names each failure, so the caller keeps its policy.

        ``warm``: (model, version)s an operator loads: each sends one real inference before
        it counts as ready. Versions ``policy`` lists as unloaded start draining (see
        :meth:`drained`) instead of being returned.
        """
        wanted = policy.all_targets()
        fresh: list[Deployment] = []
        retired: list[Deployment] = []
        next_map: dict[str, Deployment] = {}
        for key, (target, spec) in wanted.items():
            current = self._by_key.get(key)
            fingerprint = _fingerprint(spec, self.base_dir)
            unchanged = current is not None and current.fingerprint == fingerprint
            if current is not None and unchanged and current.error is None:
                next_map[key] = current
                continue
            try:
                backend = build_backend(spec, base_dir=self.base_dir, name=key, url=target.replica)
            except Exception as exc:  # a missing module, a spec the registry refuses
                backend = _Unbuildable(key, exc)
            dep = Deployment(target, spec, backend, fingerprint=fingerprint)
            fresh.append(dep)
            next_map[key] = dep
            if current is not None:
                retired.append(current)
        await asyncio.gather(
            *(self._start(d, warm=(d.target.model, d.target.version) in warm) for d in fresh)
        )
        if not atomic:  # a reload's refusal is located by the caller, as a policy issue
            for d in fresh:
                if d.error is not None and d.error_at:
                    loc = ("models", d.target.model, "versions", d.target.version, *d.error_at)
                    d.error = str(issue_at(policy.source, loc, d.error))
        if atomic:
            failed = [
                d
                for d in fresh
                if d.error is not None
                and ((prev := self._by_key.get(d.target.key)) is None or prev.error is None)
            ]
            kept = [d for d in next_map.values() if d not in fresh]
            checks = await asyncio.gather(*(self._verify(d) for d in kept), return_exceptions=True)
            refused = [c for c in checks if isinstance(c, DeploymentFailed)]
            if failed or refused:
                await self.close(fresh)
                raise DeploymentFailed(
                    [(d.target, d.error or "") for d in failed]
                    + [f for c in refused for f in c.failures],
                    [d.error_at for d in failed] + [w for c in refused for w in c.where],
                )
        for key, dep in self._by_key.items():
            if key in next_map:
                continue
            model, version = dep.target.model, dep.target.version
            defined = model in policy.models and version in policy.models[model].versions
            if defined and not policy.is_loaded(model, version):
                self._unload(dep)  # unloaded, not removed: drain what it is serving first
                continue
            retired.append(dep)
        self._serve(next_map)
        return retired

    @staticmethod
    async def close(deployments: list[Deployment]) -> None:
        for dep in deployments:
            try:
                await dep.backend.aclose()
            except Exception:  # closing must never take the gateway down
                log.exception("closing %s failed", dep.target.key)

    async def aclose(self) -> None:
        draining = list(self._draining.values())  # a cancelled drain forgets its deployment
        drains = list(self._drains.values())
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
        await self.close([*self.all(), *self._retiring.values(), *draining])
        self._serve({})
        self._retiring = {}
        self._draining = {}
