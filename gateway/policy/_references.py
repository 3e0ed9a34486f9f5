"""Cross-references in a policy: every name points at something that exists, once."""

from __future__ import annotations

from typing import Any

from ._document import PolicyDocument, TargetRef

Problem = tuple[tuple[Any, ...], str]


def _check_target(
    doc: PolicyDocument, ref: TargetRef, loc: tuple[Any, ...], problems: list[Problem]
) -> None:
    model = doc.models.get(ref.model)
    if model is None:
        problems.append(((*loc, "model"), f"unknown model {ref.model!r}"))
        return
    if (
        ref.version is not None
        and ref.version not in model.versions
        and ref.version not in model.labels
    ):
        problems.append(
            ((*loc, "version"), f"unknown version or label {ref.version!r} of model {ref.model!r}")
        )


def resolve_ref(doc: PolicyDocument, ref: TargetRef) -> tuple[str, str]:
    """(model, version id) a reference names; no version = the 'stable' label or the first."""
    model = doc.models[ref.model]
    version = ref.version
    if version is None:
        version = model.labels.get("stable") or next(iter(model.versions))
    return ref.model, model.labels.get(version, version)


def check_references(doc: PolicyDocument) -> list[Problem]:
    problems: list[Problem] = []
    for name, model in doc.models.items():
        for i, version in enumerate(model.unloaded):
            if version not in model.versions:
                problems.append(
                    (
                        ("models", name, "unloaded", i),
                        f"unknown version {version!r} of model {name!r}",
                    )
                )
        for label, version in model.labels.items():
            if version not in model.versions:
                problems.append(
                    (
                        ("models", name, "labels", label),
                        f"label {label!r} points at missing version {version!r}",
                    )
                )
            if label in model.versions:
                problems.append(
                    (("models", name, "labels", label), f"label {label!r} shadows a version id")
                )
    seen: dict[str, int] = {}
    for i, route in enumerate(doc.routes):
        loc: tuple[Any, ...] = ("routes", i)
        if route.name in seen:
            problems.append(
                (
                    (*loc, "name"),
                    f"duplicate route name {route.name!r} (also routes[{seen[route.name]}])",
                )
            )
        seen.setdefault(route.name, i)
        if route.model is not None:
            _check_target(doc, route.target_refs[0], loc, problems)
        for j, ref in enumerate(route.targets):
            _check_target(doc, ref, (*loc, "targets", j), problems)
        weights = [ref.weight for ref in route.target_refs]
        if route.latency.strategy == "weighted" and len(weights) > 1 and not any(weights):
            problems.append(
                ((*loc, "targets"), "a 'weighted' route needs a target with a weight above 0")
            )
        if route.match.model is not None and route.match.model not in doc.models:
            problems.append(((*loc, "match", "model"), f"unknown model {route.match.model!r}"))
        primary: set[tuple[str, str]] = set()
        if not any(p[0][:2] == loc for p in problems):
            primary = {resolve_ref(doc, r) for r in route.target_refs}
        chain: set[tuple[str, str]] = set()
        for j, ref in enumerate(route.fallback):
            floc = (*loc, "fallback", j)
            before = len(problems)
            _check_target(doc, ref, floc, problems)
            if len(problems) > before:
                continue
            key = resolve_ref(doc, ref)
            if key in primary or key in chain:
                problems.append(
                    (
                        floc,
                        f"fallback cycle: {key[0]}@{key[1]} is already tried earlier on this route",
                    )
                )
            chain.add(key)
    for name, exp in doc.experiments.items():
        loc = ("experiments", name)
        exp_route = next((r for r in doc.routes if r.name == exp.route), None)
        if exp_route is None:
            problems.append(((*loc, "route"), f"unknown route {exp.route!r}"))
            continue
        models = {r.model for r in exp_route.target_refs}
        if len(models) != 1:
            problems.append(((*loc, "route"), f"route {exp.route!r} must serve exactly one model"))
            continue
        model_name = models.pop()
        exp_model = doc.models.get(model_name)
        if exp_model is None:
            continue
        for arm_name, arm in exp.arms.items():
            if arm.version not in exp_model.versions and arm.version not in exp_model.labels:
                problems.append(
                    (
                        (*loc, "arms", arm_name, "version"),
                        f"unknown version or label {arm.version!r} of model {model_name!r}",
                    )
                )
    routes_with_exp = [e.route for e in doc.experiments.values()]
    for name, exp in doc.experiments.items():
        if routes_with_exp.count(exp.route) > 1:
            problems.append(
                (
                    ("experiments", name, "route"),
                    f"route {exp.route!r} has more than one experiment",
                )
            )
    return problems
