"""The model repository as an operator sees it: every model, its labels, and per version
its state (Triton's repository index), plus what still needs a version before it unloads."""

from __future__ import annotations

from typing import Any

from ..deployments import Deployment, Deployments
from ..policy import CompiledPolicy


def _backend_name(policy: CompiledPolicy, model: str, version: str) -> str:
    spec = policy.spec(model, version)
    kind = getattr(spec, "kind", None)
    return f"{spec.backend}/{kind}" if kind else str(spec.backend)


def version_state(
    policy: CompiledPolicy, deployments: Deployments, model: str, version: str
) -> dict[str, Any]:
    """``{"version", "state", "reason", "backend", "targets", "in_flight", "loaded_at"}``."""
    live = deployments.of_version(model, version)
    draining = deployments.draining(model, version)
    deps: list[Deployment] = [*live, *draining]
    targets = [
        {"key": d.target.key, "state": d.state, "in_flight": d.in_flight, "reason": d.error}
        for d in deps
    ]
    reason: str | None = None
    if draining:
        state = "unloading"
        reason = f"{sum(d.in_flight for d in draining)} call(s) in flight"
    elif not policy.is_loaded(model, version):
        state = "unloaded"
    elif not live:
        state = "loading"
    elif any(d.ready for d in live):
        state = "ready"
        failed = [f"{d.target.key}: {d.error}" for d in live if d.error]
        reason = "; ".join(failed) or None
    elif all(d.error is not None for d in live):
        state = "failed"
        reason = "; ".join(f"{d.target.key}: {d.error}" for d in live)
    else:
        state = "loading"
    loaded = [d.loaded_at for d in live if d.ready and d.loaded_at is not None]
    return {
        "version": version,
        "state": state,
        "reason": reason,
        "backend": _backend_name(policy, model, version),
        "targets": targets,
        "in_flight": sum(d.in_flight for d in deps),
        "loaded_at": min(loaded) if loaded else None,
    }


def model_index(
    policy: CompiledPolicy, deployments: Deployments, file_labels: dict[str, dict[str, str]]
) -> list[dict[str, Any]]:
    """Every model of the running policy; ``file_labels``: the labels as the file has them."""
    return [
        {
            "name": name,
            "labels": dict(entry.labels),
            "file_labels": file_labels.get(name, {}),
            "versions": [version_state(policy, deployments, name, v) for v in entry.versions],
        }
        for name, entry in policy.document.models.items()
    ]


def needed_by(policy: CompiledPolicy, model: str, version: str) -> list[str]:
    """Labels, routes (targets or fallbacks) and experiment arms that resolve to ``version``."""
    doc = policy.document
    out = [f"label {label!r}" for label, v in doc.models[model].labels.items() if v == version]
    for route in doc.routes:
        for ref in [*route.target_refs, *route.fallback]:
            if ref.model == model and policy.resolve_version(model, ref.version) == version:
                out.append(f"route {route.name!r}")
                break
    for name, experiment in doc.experiments.items():
        route = next(r for r in doc.routes if r.name == experiment.route)
        if route.target_refs[0].model != model:
            continue
        for arm, spec in experiment.arms.items():
            if policy.resolve_version(model, spec.version) == version:
                out.append(f"experiment {name!r} (arm {arm!r})")
    return out
