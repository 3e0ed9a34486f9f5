"""The operator's API: the running policy, reloads, experiments, and target health.

``GET /admin/policy`` shows what is live (digest, source, load time) and the last reload's
error, so a refused file is visible without reading logs; ``POST /admin/policy/reload``
reloads now (422 with ``file:line: path: reason`` when the file is refused, the running
policy untouched). Experiments report per-arm counters shared by all replicas, guardrail
state and a comparison of arms; ``POST .../resume`` lifts a guardrail stop.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.status_codes import HTTP_200_OK

from prism.backends import InvalidInput, NotFound

from .auth import key_id_of
from .doors._openapi import PROBLEM, documented
from .experiments import control_arm
from .policy import Experiment, PolicyLoadError
from .runtime import Runtime


def _experiment(runtime: Runtime, name: str) -> Experiment:
    experiment = runtime.policy.document.experiments.get(name)
    if experiment is None:
        known = ", ".join(sorted(runtime.policy.document.experiments)) or "none"
        raise NotFound(f"no experiment {name!r} in the running policy (known: {known})")
    return experiment


def policy_status(runtime: Runtime) -> dict[str, Any]:
    policy = runtime.policy
    doc = policy.document
    watcher = getattr(runtime, "policy_watcher", None)
    return {
        "digest": policy.digest,
        "source": policy.source,
        "loaded_at": policy.loaded_at,
        "last_reload_at": runtime.last_reload_at,
        "last_error": runtime.last_reload_error,
        "last_issues": runtime.last_reload_issues,
        "watch_s": watcher.interval_s if watcher is not None else 0,
        "models": {
            name: {
                "versions": sorted(entry.versions),
                "labels": dict(entry.labels),
                "unloaded": list(entry.unloaded),
            }
            for name, entry in doc.models.items()
        },
        "routes": [r.name for r in doc.routes],
        "experiments": sorted(doc.experiments),
        "overrides": overrides_status(runtime),
    }


def overrides_status(runtime: Runtime) -> dict[str, Any]:
    """What operators changed on top of the file (``models`` above is the result), and the
    overrides a reload of the file left out because they no longer make sense."""
    current = runtime.overrides
    file_models = runtime.base.document.models
    return {
        "store": runtime.overrides_store.name,
        "revision": current.revision,
        "updated_at": current.updated_at,
        "labels": {
            model: {
                label: {"version": version, "file": file_models[model].labels.get(label)}
                for label, version in moved.items()
            }
            for model, moved in current.labels.items()
            if moved and model in file_models
        },
        "versions": {model: dict(states) for model, states in current.loaded.items() if states},
        "stale": runtime.stale_overrides,
    }


_NO_EXPERIMENT = {404: "No such experiment in the running policy"}


class AdminController(Controller):
    path = "/admin"
    tags = ["admin"]
    opt = {"admin": True}  # admin keys only (gateway/auth.py); changes are audited

    @get(
        "/policy",
        summary="The running policy and the last reload's outcome",
        **documented(PROBLEM, 401, 403),
    )
    async def policy(self, runtime: NamedDependency[Runtime]) -> dict[str, Any]:
        return policy_status(runtime)

    @post(
        "/policy/reload",
        status_code=HTTP_200_OK,
        summary="Reload the policy file now",
        **documented(
            PROBLEM,
            *(401, 403, 422),
            wording={
                422: "The file was refused (detail: file:line: path: reason; `issues` lists "
                "all, `running_digest` names the policy that stays)",
            },
        ),
    )
    async def reload(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        before = runtime.policy.digest
        try:
            await runtime.reload()
        except PolicyLoadError as exc:
            exc.extra.setdefault("issues", [str(i) for i in exc.issues])
            exc.extra.setdefault("running_digest", runtime.policy.digest)
            await runtime.audit.record(
                action="policy.reload",
                target=str(runtime.settings.policy),
                key_id=key_id_of(request),
                outcome=f"refused: {exc.detail}",
                before={"policy": before},
            )
            raise
        await runtime.audit.record(
            action="policy.reload",
            target=str(runtime.settings.policy),
            key_id=key_id_of(request),
            outcome="ok",
            before={"policy": before},
            after={"policy": runtime.policy.digest},
        )
        return policy_status(runtime)

    @get(
        "/experiments",
        summary="Every experiment of the running policy, with counters",
        **documented(PROBLEM, 401, 403),
    )
    async def experiments(self, runtime: NamedDependency[Runtime]) -> dict[str, Any]:
        engine = runtime.experiments
        await engine.sync()
        return {
            "experiments": [
                await engine.report(name, exp)
                for name, exp in runtime.policy.document.experiments.items()
            ]
        }

    @get(
        "/experiments/{name:str}",
        summary="One experiment: arms, counters, guardrails, stats",
        **documented(PROBLEM, 401, 403, 404, wording=_NO_EXPERIMENT),
    )
    async def experiment(
        self, runtime: NamedDependency[Runtime], name: FromPath[str]
    ) -> dict[str, Any]:
        experiment = _experiment(runtime, name)
        await runtime.experiments.sync()
        return await runtime.experiments.report(name, experiment)

    @post(
        "/experiments/{name:str}/resume",
        status_code=HTTP_200_OK,
        summary="Send traffic to arms a guardrail stopped again",
        **documented(PROBLEM, 401, 403, 404, wording=_NO_EXPERIMENT),
    )
    async def resume(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        name: FromPath[str],
    ) -> dict[str, Any]:
        experiment = _experiment(runtime, name)
        before = sorted(runtime.experiments.stopped(name))
        await runtime.experiments.resume(name, experiment)
        await runtime.audit.record(
            action="experiment.resume",
            target=name,
            key_id=key_id_of(request),
            outcome="ok",
            before={"stopped": before},
        )
        return await runtime.experiments.report(name, experiment)

    @post(
        "/experiments/{name:str}/stop",
        status_code=HTTP_200_OK,
        summary="Stop an arm by hand (its units go to the control arm)",
        **documented(
            PROBLEM,
            *(400, 401, 403, 404, 422),
            wording={
                400: "The 'arm' query parameter is missing",
                404: "No such experiment in the running policy, or no such arm in it",
                422: "The arm is the control arm (it serves when the others stop)",
            },
        ),
    )
    async def stop(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        name: FromPath[str],
        arm: FromQuery[str],
    ) -> dict[str, Any]:
        experiment = _experiment(runtime, name)
        if arm not in experiment.arms:
            raise NotFound(f"experiment {name!r} has no arm {arm!r}")
        if arm == control_arm(experiment):
            raise InvalidInput(f"{arm!r} is the control arm: it serves when the others stop")
        await runtime.experiments.stop(name, arm, "stopped by an operator")
        await runtime.audit.record(
            action="experiment.stop",
            target=f"{name}/{arm}",
            key_id=key_id_of(request),
            outcome="ok",
        )
        return await runtime.experiments.report(name, experiment)

    @get(
        "/targets",
        summary="Latency, errors, load and circuit state of every target",
        **documented(PROBLEM, 401, 403),
    )
    async def targets(self, runtime: NamedDependency[Runtime]) -> dict[str, Any]:
        return {
            "targets": {
                key: {**health.tracker.snapshot(), "circuit": health.breaker.snapshot()}
                for key, health in runtime.dispatcher.health.items()
                if key in runtime.deployments  # targets a reload removed are gone
            }
        }

    @get(
        "/cache",
        summary="The response cache: store, hits, misses, hit ratio, size",
        **documented(PROBLEM, 401, 403),
    )
    async def cache(self, runtime: NamedDependency[Runtime]) -> dict[str, Any]:
        return cache_status(runtime)


def cache_status(runtime: Runtime) -> dict[str, Any]:
    """This process's cache lookups (per input) and, for the in-process store, its size."""
    cache = runtime.cache
    stats = cache.stats
    lookups = stats.hits + stats.misses
    store = cache.store
    # only the in-process store knows its size cheaply; Redis is shared and not scanned
    entries = len(store) if isinstance(store, Sized) else None
    size = getattr(store, "size_bytes", None)
    return {
        "store": getattr(store, "name", type(store).__name__),
        "available": cache.available,
        "hits": stats.hits,
        "misses": stats.misses,
        "errors": stats.errors,
        "coalesced": stats.coalesced,
        "hit_ratio": round(stats.hits / lookups, 4) if lookups else None,
        "entries": entries,
        "bytes": size if isinstance(size, int) else None,
        "max_bytes": getattr(store, "max_bytes", None),
        "max_entries": getattr(store, "max_entries", None),
    }
