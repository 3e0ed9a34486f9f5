"""The policy file format (DESIGN.md), as typed pydantic models.

A :class:`PolicyDocument` is what an operator writes; :mod:`._compile` turns a validated one
into the immutable :class:`~gateway.policy.CompiledPolicy` the data path reads. Cross-field
rules (labels point at versions, routes at models, fallbacks have no cycles) are checked in
``PolicyDocument``'s validators so that every refusal carries the path of the offending key.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from prism.backends import BackendSpec, Modality, Task

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Doc):
    """A logical model: its versions (each one backend spec) and movable labels."""

    task: Task | list[Task] | None = None
    modalities: list[Modality] = Field(default_factory=list)
    versions: dict[Name, BackendSpec] = Field(min_length=1)
    #: label -> version id, e.g. {stable: "1", canary: "2"}; moved by editing + reload, or
    #: at run time through ``PUT /admin/models/{model}/labels/{label}`` (an override)
    labels: dict[Name, Name] = Field(default_factory=dict)
    #: versions defined here but not loaded (no backend, no memory); loaded and unloaded
    #: at run time through ``POST /admin/models/{model}/versions/{version}/load|unload``
    unloaded: list[Name] = Field(
        default_factory=list,
        description="versions defined here but not loaded (the model repository API loads them)",
    )

    @property
    def tasks(self) -> frozenset[Task]:
        if self.task is None:
            return frozenset()
        return frozenset(self.task if isinstance(self.task, list) else [self.task])


class TargetRef(_Doc):
    """model + version (id or label); ``weight`` is used by the ``weighted`` strategy."""

    model: Name
    version: Name | None = None
    weight: float = Field(1.0, ge=0)


class Match(_Doc):
    modality: list[Modality] | None = None
    task: Task | list[Task] | None = None
    model: Name | None = None
    #: request headers that must be present with these values (names case-insensitive)
    headers: dict[str, str] = Field(default_factory=dict)


class CacheRule(_Doc):
    ttl_s: float = Field(3600, ge=0, description="0 = do not cache this route")


class LatencyRule(_Doc):
    budget_ms: float | None = Field(None, gt=0)
    strategy: Literal["pinned", "weighted", "fastest", "least-loaded"] = "pinned"
    #: 'fastest' sends each target this many calls before trusting its numbers
    warmup: int = Field(3, ge=0, le=1000)
    #: 'fastest' tries another target every Nth pick (0 = never), to notice a recovery
    explore_every: int = Field(50, ge=0)


class CircuitRule(_Doc):
    """When a target's circuit opens (it is skipped) and when it is probed again."""

    failures: int = Field(5, ge=1, description="consecutive failures that open the circuit")
    error_rate: float = Field(0.5, gt=0, le=1, description="error rate that opens it")
    min_calls: int = Field(20, ge=1, description="calls in the window before error_rate counts")
    cooldown_s: float = Field(10.0, gt=0, description="open this long, then one probe call")


class Route(_Doc):
    name: Name
    match: Match = Field(default_factory=Match)
    model: Name | None = None
    version: Name | None = None
    targets: list[TargetRef] = Field(default_factory=list)
    cache: CacheRule = Field(default_factory=CacheRule)
    timeout_ms: float = Field(30_000, gt=0, le=600_000)
    #: the most one attempt (a retry, a fallback) may take of ``timeout_ms``; unset: all
    #: that is left, so a hanging first target leaves no time to fall back (Envoy's per-try)
    attempt_timeout_ms: float | None = Field(None, gt=0, le=600_000)
    retries: int = Field(0, ge=0, le=10)
    fallback: list[TargetRef] = Field(default_factory=list)
    latency: LatencyRule = Field(default_factory=LatencyRule)
    #: with a latency budget: refuse (503) rather than answer late when no target can meet it
    strict: bool = False
    #: send a second attempt to another target after this long (or at the first's p95)
    hedge_after_ms: float | Literal["p95"] | None = None
    circuit: CircuitRule = Field(default_factory=CircuitRule)

    @model_validator(mode="after")
    def _attempts_fit_the_deadline(self) -> Route:
        if self.attempt_timeout_ms is not None and self.attempt_timeout_ms > self.timeout_ms:
            raise ValueError("attempt_timeout_ms must not exceed timeout_ms")
        return self

    @model_validator(mode="after")
    def _one_way_to_name_targets(self) -> Route:
        if self.model is not None and self.targets:
            raise ValueError("give either 'model' (+ 'version') or 'targets', not both")
        if self.model is None and not self.targets:
            raise ValueError("a route needs 'model' or 'targets'")
        if self.version is not None and self.model is None:
            raise ValueError("'version' needs 'model'")
        return self

    @property
    def target_refs(self) -> list[TargetRef]:
        if self.model is not None:
            return [TargetRef(model=self.model, version=self.version)]
        return list(self.targets)


class Arm(_Doc):
    version: Name
    weight: float = Field(ge=0)


class Guardrails(_Doc):
    max_error_rate: float | None = Field(None, ge=0, le=1)
    max_p95_ms: float | None = Field(None, gt=0)
    #: outcomes of the treatment needed before a guardrail may trip
    min_samples: int = Field(50, ge=1)


class Experiment(_Doc):
    route: Name
    #: the request field that makes assignment sticky ("user" = routing.unit)
    unit: Literal["user"] = "user"
    arms: dict[Name, Arm] = Field(min_length=2)
    guardrails: Guardrails = Field(default_factory=Guardrails)
    shadow: bool = False
    #: changes every assignment when changed; defaults to the experiment's name
    salt: str | None = None
    #: the arm that serves when the others are stopped (default: the first arm)
    control: Name | None = None

    @model_validator(mode="after")
    def _weights(self) -> Experiment:
        if sum(a.weight for a in self.arms.values()) <= 0:
            raise ValueError("arm weights must sum to a positive number")
        if self.control is not None and self.control not in self.arms:
            raise ValueError(f"control arm {self.control!r} is not one of the arms")
        return self


class PolicyDocument(_Doc):
    version: Literal[1]
    models: dict[Name, ModelEntry] = Field(min_length=1)
    routes: list[Route] = Field(default_factory=list)
    experiments: dict[Name, Experiment] = Field(default_factory=dict)
