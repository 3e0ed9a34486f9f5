"""The live backends of the running policy: built, started, swapped on reload, closed.

A target (model@version on one replica) keeps its backend across reloads while its spec is
unchanged, so moving a label or editing a route never reloads a model; a changed or new
version is loaded before the new policy goes live, and a removed one is closed after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism.backends import (
    Backend,
    BackendSpec,
    Capabilities,
    InputItem,
    LocalBackend,
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
    def __init__(self, base_dir: Path, *, load_models: bool = True) -> None:
        self.base_dir = base_dir
        self.load_models = load_models
        self._by_key: dict[str, Deployment] = {}
        #: removed by a reload, closing after a grace period (see :meth:`retire`)
        self._retiring: dict[str, Deployment] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def get(self, target: Target) -> Deployment:
        # a target a reload removed still serves the requests (retries, fallbacks) of the
        # policy they started with, until its grace period ends
        dep = self._by_key.get(target.key) or self._retiring.get(target.key)
        if dep is None:
            raise NotReady(f"{target.key} is not deployed", retry_after_s=5)
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
        dep = self.get(target)
        if not dep.ready:
            reason = f": {dep.error}" if dep.error else " (still loading)"
            raise NotReady(f"{target.key} is not ready{reason}", retry_after_s=5)
        return dep.backend

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

    def of_version(self, model: str, version: str) -> list[Deployment]:
        """The deployments (one per replica) of one model version."""
        return [
            d
            for d in self._by_key.values()
            if (d.target.model, d.target.version) == (model, version)
        ]

    def capabilities(self, model: str, version: str) -> Capabilities | None:
        """What a loaded backend of ``model``/``version`` reports; None while none is loaded."""
        for dep in self.of_version(model, version):
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
                targets.extend(policy.targets_for(ref.model, version))
            if local_only and not any(t.replica is None for t in targets):
                continue
            if not any(self.probe_ok(t) for t in targets):
                down.append(route.name)
        return down

    async def _start(self, dep: Deployment) -> None:
        if not self.load_models and isinstance(dep.backend, LocalBackend):
            return
        try:
            await dep.backend.start()
            dep.ready = True
            log.info("deployed %s", dep.target.key)
        except Exception as exc:
            dep.error = f"{type(exc).__name__}: {exc}"
            dep.error_at = tuple(getattr(exc, "where", ()))
            log.error("failed to deploy %s: %s", dep.target.key, dep.error)

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

    async def apply(self, policy: CompiledPolicy, *, atomic: bool = False) -> list[Deployment]:
        """Bring the deployments in line with ``policy``; returns the ones to close later.

        New and changed targets are loaded before this returns (so the swap that follows
        serves them at once); the caller closes the returned, no-longer-needed deployments
        once requests still running on the old policy have finished. A target that failed to
        load before is tried again (its file may be there now).

        ``atomic`` (a reload): when a new or changed target fails to load where the running
        one did not, nothing changes: the fresh backends are closed and
        :class:`DeploymentFailed` names each failure, so the caller keeps its policy.
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
        await asyncio.gather(*(self._start(d) for d in fresh))
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
        retired.extend(d for k, d in self._by_key.items() if k not in next_map)
        self._by_key = next_map
        return retired

    @staticmethod
    async def close(deployments: list[Deployment]) -> None:
        for dep in deployments:
            try:
                await dep.backend.aclose()
            except Exception:  # closing must never take the gateway down
                log.exception("closing %s failed", dep.target.key)

    async def aclose(self) -> None:
        await self.close([*self.all(), *self._retiring.values()])
        self._by_key = {}
        self._retiring = {}
