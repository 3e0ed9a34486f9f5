"""A validated policy compiled into the immutable table the data path reads.

Compiling resolves what can be resolved once (labels -> versions, replicas -> targets, match
sets); :meth:`CompiledPolicy.decide` is then a pure function of the request's facts, so the
same decision is reproducible offline by ``prism policy explain``. A reload builds a new
``CompiledPolicy`` and swaps the reference; requests in flight keep the one they started with.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from prism.backends import (
    BackendSpec,
    Modality,
    ModelNotFound,
    NoRoute,
    Task,
    VersionNotFound,
    output_fingerprint,
    replica_urls,
)

from ._document import Experiment, PolicyDocument, Route, TargetRef


@dataclass(frozen=True)
class Target:
    """One model version on one backend or replica: the unit of routing and health."""

    model: str
    version: str
    #: remote replica URL; None for an in-process model
    replica: str | None = None
    weight: float = 1.0

    @cached_property  # read a dozen times per request (health, deployments, records)
    def key(self) -> str:
        return f"{self.model}@{self.version}/{self.replica or 'local'}"


@dataclass(frozen=True)
class RequestFacts:
    """What routing may look at: extracted from the request once, by the pipeline."""

    modalities: frozenset[Modality]
    task: Task
    model: str | None = None
    version: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    unit: str | None = None
    latency_budget_ms: float | None = None


@dataclass(frozen=True)
class Decision:
    """Where a request goes, and why: the pipeline executes it, the response reports it."""

    rule: str
    model: str
    version: str
    targets: tuple[Target, ...]
    fallback: tuple[Target, ...]
    route: Route
    reason: str
    experiment: str | None = None
    arm: str | None = None
    #: the arm whose version answers when shadowing (the treatment is mirrored)
    shadow: Target | None = None
    #: the mirrored arm's name (``arm`` is then the control that answers)
    shadow_arm: str | None = None

    @property
    def cache_ttl_s(self) -> float:
        return self.route.cache.ttl_s

    @property
    def timeout_s(self) -> float:
        return self.route.timeout_ms / 1000

    def budget_ms(self, requested: float | None) -> float | None:
        """The tighter of the route's and the request's budgets (a request may only tighten)."""
        budgets = [b for b in (self.route.latency.budget_ms, requested) if b is not None]
        return min(budgets) if budgets else None


#: experiment name, route, unit -> arm name (None = experiment does not apply / no arms live)
ArmPicker = Any


class CompiledPolicy:
    def __init__(
        self, doc: PolicyDocument, *, source: str = "<policy>", base_dir: Path | None = None
    ) -> None:
        self.document = doc
        self.source = source
        self.base_dir = base_dir or Path.cwd()
        self.loaded_at = time.time()
        self.digest = hashlib.sha256(doc.model_dump_json().encode()).hexdigest()[:12]
        #: (model, version) -> digest of what the version answers: part of every cache key
        #: and experiment counter, so a version redefined in place starts afresh
        self._fingerprints = {
            (name, version): output_fingerprint(spec, self.base_dir)
            for name, entry in doc.models.items()
            for version, spec in entry.versions.items()
        }
        self._routes = list(doc.routes)
        # a known model no route mentions is still directly addressable, like in Triton;
        # its implicit route has the defaults (named "model:NAME", which no file can use)
        self._direct = {
            name: Route.model_construct(name=f"model:{name}", model=name) for name in doc.models
        }
        self._experiment_by_route: dict[str, tuple[str, Experiment]] = {
            e.route: (name, e) for name, e in doc.experiments.items()
        }
        self._arm_definitions = {name: self._arms_served(e) for name, e in doc.experiments.items()}
        # What every decision asks again is a pure function of this table: made once, on first
        # use, and kept (keys are the policy's own routes, models and versions, so bounded).
        # Built afresh per request it was most of a decision: a ``TargetRef`` model per
        # route looked at, replica URLs parsed, ``Target``s and a ``Decision`` made.
        #: route name -> (the route, its target refs, the models they name)
        self._refs: dict[str, tuple[Route, tuple[TargetRef, ...], frozenset[str]]] = {}
        #: (model, version, weight) -> one target per replica
        self._targets: dict[tuple[str, str, float], tuple[Target, ...]] = {}
        #: (route name, the request's model) -> the route and its plain decision
        self._decisions: dict[tuple[str, str | None], tuple[Route, Decision]] = {}

    def _arms_served(self, experiment: Experiment) -> dict[str, str]:
        """arm -> ``version.fingerprint``: what each arm serves. Weights are left out
        (ramping a treatment up keeps its figures); pointing an arm at another version, or
        redefining its version in place, gives it a new definition and new figures."""
        route = next(r for r in self._routes if r.name == experiment.route)
        model = route.target_refs[0].model
        out: dict[str, str] = {}
        for arm, spec in experiment.arms.items():
            version = self.resolve_version(model, spec.version)
            out[arm] = f"{version}.{self.fingerprint(model, version)}"
        return out

    # --- lookups -----------------------------------------------------------------------

    @property
    def models(self) -> Mapping[str, Any]:
        return self.document.models

    def resolve_version(self, model: str, version: str | None) -> str:
        """Version id for an id or label; None = 'stable' label, else the first version."""
        entry = self.document.models.get(model)
        if entry is None:
            raise ModelNotFound(f"unknown model {model!r}", extra={"model": model})
        if version is None:
            return entry.labels.get("stable") or next(iter(entry.versions))
        resolved = entry.labels.get(version, version)
        if resolved not in entry.versions:
            known = sorted([*entry.versions, *entry.labels])
            raise VersionNotFound(
                f"model {model!r} has no version or label {version!r} (known: {', '.join(known)})",
                extra={"model": model, "version": version},
            )
        return resolved

    def arm_definitions(self, name: str) -> Mapping[str, str]:
        """See :meth:`_arms_served`; empty for an experiment this policy does not have."""
        return self._arm_definitions.get(name, {})

    def fingerprint(self, model: str, version: str) -> str:
        return self._fingerprints[(model, version)]

    def spec(self, model: str, version: str) -> BackendSpec:
        spec: BackendSpec = self.document.models[model].versions[version]
        return spec

    def targets_for(self, model: str, version: str, weight: float = 1.0) -> list[Target]:
        """One target per replica (remote) or the single in-process target (local)."""
        return list(self._targets_of(model, version, weight))

    def _targets_of(self, model: str, version: str, weight: float) -> tuple[Target, ...]:
        key = (model, version, weight)
        found = self._targets.get(key)
        if found is None:
            urls = replica_urls(self.spec(model, version))  # KeyError for an unknown one
            if not urls:
                found = (Target(model, version, None, weight),)
            else:
                found = tuple(Target(model, version, url, weight) for url in urls)
            self._targets[key] = found
        return found

    def _refs_of(self, route: Route) -> tuple[tuple[TargetRef, ...], frozenset[str]]:
        """``route.target_refs`` (a new list of new models per call) and the models named."""
        known = self._refs.get(route.name)
        if known is None or known[0] is not route:
            refs = tuple(route.target_refs)
            known = self._refs[route.name] = (route, refs, frozenset(r.model for r in refs))
        return known[1], known[2]

    def is_loaded(self, model: str, version: str) -> bool:
        """False for a version the policy (or an operator's override) lists as unloaded."""
        entry = self.document.models.get(model)
        return entry is not None and version not in entry.unloaded

    def all_targets(self) -> dict[str, tuple[Target, BackendSpec]]:
        """Every deployable target in the policy, by key (for building backends); versions
        listed as ``unloaded`` have none."""
        out: dict[str, tuple[Target, BackendSpec]] = {}
        for name, entry in self.document.models.items():
            for version, spec in entry.versions.items():
                if version in entry.unloaded:
                    continue
                for t in self.targets_for(name, version):
                    out[t.key] = (t, spec)
        return out

    def experiment_for(self, route: str) -> tuple[str, Experiment] | None:
        return self._experiment_by_route.get(route)

    # --- the decision ------------------------------------------------------------------

    def mismatch(self, route: Route, facts: RequestFacts) -> str | None:
        """Why ``route`` does not take this request; None when it does (first match wins)."""
        m = route.match
        if m.modality is not None and not facts.modalities <= set(m.modality):
            have = ", ".join(sorted(facts.modalities))
            return f"takes modalities [{', '.join(m.modality)}], the request has [{have}]"
        if m.task is not None:
            tasks = m.task if isinstance(m.task, list) else [m.task]
            if facts.task not in tasks:
                return f"takes task {', '.join(t.value for t in tasks)}, not {facts.task.value}"
        if m.model is not None and facts.model != m.model:
            return f"matches model {m.model!r} only"
        for name, value in m.headers.items():
            if facts.headers.get(name.lower()) != value:
                return f"needs header {name}: {value}"
        if facts.model is not None and facts.model not in self._refs_of(route)[1]:
            return f"does not serve model {facts.model!r}"
        return None

    def _matches(self, route: Route, facts: RequestFacts) -> bool:
        return self.mismatch(route, facts) is None

    def skipped_routes(self, facts: RequestFacts, chosen: str) -> list[tuple[str, str]]:
        """The routes before ``chosen``, each with why it did not take the request."""
        out: list[tuple[str, str]] = []
        for route in self._routes:
            if route.name == chosen:
                break
            out.append((route.name, self.mismatch(route, facts) or "matches"))
        return out

    def match_route(self, facts: RequestFacts) -> Route:
        for route in self._routes:
            if self._matches(route, facts):
                return route
        if facts.model is not None:
            if facts.model not in self.document.models:
                raise ModelNotFound(f"unknown model {facts.model!r}", extra={"model": facts.model})
            return self._direct[facts.model]
        mods = ", ".join(sorted(facts.modalities))
        raise NoRoute(f"no route serves task {facts.task.value!r} with modalities [{mods}]")

    def _expand(self, refs: Sequence[TargetRef], model: str | None) -> list[Target]:
        out: list[Target] = []
        for ref in refs:
            if model is not None and ref.model != model:
                continue
            version = self.resolve_version(ref.model, ref.version)
            out.extend(self._targets_of(ref.model, version, ref.weight))
        return out

    def decide(self, facts: RequestFacts, pick_arm: ArmPicker = None) -> Decision:
        """Route, model, version (experiment arm), ordered candidate targets and fallbacks.

        ``pick_arm(experiment_name, experiment, unit) -> arm name | None`` is supplied by the
        experiment engine (sticky hashing, stopped arms); None means no experiment runs.
        """
        route = self.match_route(facts)
        exp = self.experiment_for(route.name)
        if facts.version is None and exp is None:
            # the plain case depends on the route and the model named (one of the route's,
            # or None: match_route saw to that) only
            known = self._decisions.get((route.name, facts.model))
            if known is not None and known[0] is route:
                return known[1]
        refs = self._refs_of(route)[0]
        fallback = tuple(self._expand(route.fallback, None))
        if facts.version is not None:
            model = facts.model or refs[0].model
            version = self.resolve_version(model, facts.version)
            # a caller who names a version wants that version's answer (another would be
            # another embedding space): fallbacks to other versions do not apply
            pinned = tuple(t for t in fallback if (t.model, t.version) == (model, version))
            return Decision(
                route.name,
                model,
                version,
                tuple(self.targets_for(model, version)),
                pinned,
                route,
                reason=f"version {facts.version!r} requested",
            )
        if exp is not None and pick_arm is not None:
            exp_name, experiment = exp
            arm = pick_arm(exp_name, experiment, facts.unit)
            if arm is not None:
                model = refs[0].model
                version = self.resolve_version(model, experiment.arms[arm].version)
                shadow = None
                shadow_arm = None
                if experiment.shadow:
                    control = experiment.control or next(iter(experiment.arms))
                    treatment = arm
                    control_version = self.resolve_version(model, experiment.arms[control].version)
                    if treatment != control:
                        shadow_targets = self.targets_for(model, version)
                        shadow = shadow_targets[0]
                        shadow_arm = treatment
                        version = control_version
                    arm = control
                return Decision(
                    route.name,
                    model,
                    version,
                    tuple(self.targets_for(model, version)),
                    fallback,
                    route,
                    reason=f"experiment {exp_name!r} arm {arm!r}",
                    experiment=exp_name,
                    arm=arm,
                    shadow=shadow,
                    shadow_arm=shadow_arm,
                )
        targets = self._expand(refs, facts.model)
        first = targets[0]
        decision = Decision(
            route.name,
            first.model,
            first.version,
            tuple(targets),
            fallback,
            route,
            reason=f"route {route.name!r} ({route.latency.strategy})",
        )
        if facts.version is None and exp is None:
            self._decisions[(route.name, facts.model)] = (route, decision)
        return decision
