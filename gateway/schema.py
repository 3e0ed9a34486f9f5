"""The native wire schema: ``POST /v1/infer`` request and response (DESIGN.md).

These pydantic models are the contract every door converts to and from: the OpenAI and
KServe v2 doors build an :class:`InferRequest` and read an :class:`InferResponse`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import msgspec
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prism.backends import Task

from .cache import CachedOutput

# the same bounds every door is held to (check_limits), here with the native schema's paths
from .inference import MAX_HISTORY_IDS, MAX_HISTORY_PER_INPUT, MAX_ID_CHARS, MAX_TEXT_CHARS


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _given(name: str, kind: str) -> dict[str, Any]:
    """JSON Schema: ``name`` is present and not null (what ``is not None`` checks)."""
    return {"required": [name], "properties": {name: {"type": kind}}}


def _null(name: str) -> dict[str, Any]:
    """JSON Schema: ``name`` is absent or null."""
    return {"properties": {name: {"type": "null"}}}


class ImageRef(_Wire):
    """An image by value (base64 of PNG/JPEG/WebP/GIF bytes) or, where a route allows, by URL."""

    # the schema's word for _exactly_one
    model_config = ConfigDict(
        json_schema_extra={"oneOf": [_given("base64", "string"), _given("url", "string")]}
    )

    base64: str | None = Field(
        None,
        min_length=1,
        description="base64 (standard or URL-safe, padding optional, or a data: URL) of the "
        "encoded image file",
        json_schema_extra={"contentEncoding": "base64"},
    )
    url: str | None = Field(
        None, min_length=1, description="http(s) URL; refused unless the model allows its host"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageRef:
        if (self.base64 is None) == (self.url is None):
            raise ValueError("give exactly one of 'base64' or 'url'")
        return self


class InputSpec(_Wire):
    """One input; its modality is what it carries (several fields = multimodal)."""

    # the schema's word for _not_empty
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                _given("text", "string"),
                _given("image", "object"),
                _given("user", "string"),
                _given("history", "array"),
            ]
        }
    )

    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    image: ImageRef | None = None
    user: str | None = Field(None, max_length=MAX_ID_CHARS)
    history: list[str] | None = Field(None, max_length=MAX_HISTORY_PER_INPUT)

    @model_validator(mode="after")
    def _not_empty(self) -> InputSpec:
        if self.text is None and self.image is None and self.user is None and self.history is None:
            raise ValueError("an input needs at least one of text, image, user, history")
        return self


class Routing(_Wire):
    #: experiment unit (e.g. a user id): the same unit always lands in the same arm
    unit: str | None = Field(None, max_length=MAX_ID_CHARS)
    #: may only tighten the route's own budget
    latency_budget_ms: float | None = Field(None, gt=0, le=600_000)


class InferRequest(_Wire):
    # the schema's word for _split_model_at_version: with 'model@version', no 'version'
    # (the validator also takes the same version twice; the schema asks for it once)
    model_config = ConfigDict(
        json_schema_extra={
            "if": {
                "required": ["model"],
                "properties": {"model": {"type": "string", "pattern": "@"}},
            },
            "then": _null("version"),
        }
    )

    model: str | None = Field(
        None,
        description="logical model, or 'model@version' as the OpenAI door takes it; "
        "optional when a route matches",
        # documents _split_model_at_version ("" or a name; with an '@', text on both sides
        # of the first one), which stays the check, with its own message
        json_schema_extra={"pattern": r"^([^@]*|[^@]+@[\s\S]+)$"},
    )
    version: str | None = Field(None, description="exact version id or a label such as 'stable'")
    task: Task = Task.EMBED
    inputs: list[InputSpec] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    routing: Routing = Field(default_factory=Routing)
    cache: Literal["use", "bypass", "refresh"] = "use"

    @model_validator(mode="after")
    def _bounded_history(self) -> InferRequest:
        total = sum(len(s.history or ()) for s in self.inputs)
        if total > MAX_HISTORY_IDS:
            raise ValueError(
                f"{total} history ids in one request; at most {MAX_HISTORY_IDS} (split it)"
            )
        return self

    @model_validator(mode="after")
    def _labels_mean_classify(self) -> InferRequest:
        """``parameters.labels`` without a ``task`` asks for classification (as the KServe
        door reads it); an explicit ``task`` always wins."""
        if "task" not in self.model_fields_set and "labels" in self.parameters:
            self.task = Task.CLASSIFY
        return self

    @model_validator(mode="after")
    def _split_model_at_version(self) -> InferRequest:
        """``"text-embed@stable"`` means model + version, like ``/v1/embeddings`` reads it."""
        if self.model is None or "@" not in self.model:
            return self
        name, _, version = self.model.partition("@")
        if not name or not version:
            raise ValueError("'model' must be a name or 'name@version'")
        if self.version is not None and self.version != version:
            raise ValueError(f"'model' names version {version!r} but 'version' is {self.version!r}")
        self.model, self.version = name, version
        return self


class Feedback(_Wire):
    """A caller's score for one answer, for the A/B comparison of the arm that gave it."""

    # the schema's word for _one_way_to_name_the_answer
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["id"],
                    "properties": {
                        "id": {"type": "string"},
                        "experiment": {"type": "null"},
                        "arm": {"type": "null"},
                    },
                },
                {
                    "required": ["experiment", "arm"],
                    "properties": {
                        "experiment": {"type": "string"},
                        "arm": {"type": "string"},
                        "id": {"type": "null"},
                    },
                },
            ]
        }
    )

    id: str | None = Field(
        None, description="the 'id' of a /v1/infer answer; or give 'experiment' and 'arm'"
    )
    experiment: str | None = Field(None, description="experiment name (x-prism-experiment)")
    arm: str | None = Field(None, description="arm that answered (x-prism-experiment: arm=...)")
    value: float = Field(
        ge=-1e9,
        le=1e9,  # squares stay finite in the running sums
        description="the answer's score (accuracy, relevance, a click: one scale per experiment)",
    )

    @field_validator("value", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        # Litestar validates bodies in lax mode, which would read "1" and true as 1.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        return value

    @model_validator(mode="after")
    def _one_way_to_name_the_answer(self) -> Feedback:
        by_id = self.id is not None
        by_arm = self.experiment is not None or self.arm is not None
        if by_id == by_arm or (by_arm and (self.experiment is None or self.arm is None)):
            raise ValueError("give either 'id', or both 'experiment' and 'arm'")
        return self


@dataclass(slots=True)
class RouteInfo:
    """The decision Prism took, so a caller can see (and debug) why it got this answer.

    A plain dataclass, not a pydantic model: it is built and serialised on every request and
    never validated (the pipeline fills it)."""

    rule: str
    target: str
    experiment: str | None = None
    arm: str | None = None
    cache: Literal["hit", "miss", "bypass", "refresh", "off"] = "miss"
    fallback: bool = False
    attempts: int = 1
    reason: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The ``route`` object of a response: fields that are None are left out."""
        return {f: v for f in _ROUTE_FIELDS if (v := getattr(self, f)) is not None}


_ROUTE_FIELDS = tuple(f.name for f in fields(RouteInfo))


def wire_output(output: dict[str, Any]) -> dict[str, Any] | msgspec.Raw:
    """Arrays (embeddings) as JSON lists; everything else is already JSON-ready. An output
    from the cache is shared by every hit on its entry: its JSON is made once and kept
    (``msgspec.Raw``: the encoder writes those bytes as they are, the same bytes)."""
    if isinstance(output, CachedOutput):
        if output.wire is None:
            try:
                output.wire = msgspec.Raw(msgspec.json.encode(_plain(output)))
            except TypeError:  # not plain JSON: leave it to the response's encoder
                return _plain(output)
        return output.wire
    return _plain(output)


def _plain(output: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in output.items()}


@dataclass(slots=True)
class InferResponse:
    """The native response. ``outputs`` may hold numpy arrays until a door serialises it."""

    id: str
    model: str
    version: str
    outputs: list[dict[str, Any]]
    route: RouteInfo
    timing_ms: dict[str, float]

    def to_wire(self) -> dict[str, Any]:
        """The JSON document (an output may be ``msgspec.Raw``: JSON already made)."""
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "outputs": [wire_output(o) for o in self.outputs],
            "route": self.route.to_wire(),
            "timing_ms": self.timing_ms,
        }
