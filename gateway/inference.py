"""What the pipeline computes, whatever door a request came through: :class:`Inference`.

Doors build it from their wire format (the native door from ``InferRequest``, the OpenAI door
from an embeddings body, the KServe door from tensors) with inputs already decoded: images
are bytes here, never base64 again. :func:`check_limits` holds every door to the same bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prism.backends import FieldError, InputItem, InvalidInput, Task

CacheMode = Literal["use", "bypass", "refresh"]

#: longest text input, in characters
MAX_TEXT_CHARS = 100_000
#: longest user id and experiment unit, in characters
MAX_ID_CHARS = 256
#: history item ids one input may carry
MAX_HISTORY_PER_INPUT = 10_000
#: history item ids one request may carry across its inputs
MAX_HISTORY_IDS = 50_000


@dataclass(slots=True)
class Inference:
    """One request to run: decoded inputs and what the caller asked for."""

    items: list[InputItem]
    task: Task = Task.EMBED
    #: logical model (None: the first route that matches the inputs decides)
    model: str | None = None
    #: exact version id or a label
    version: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    #: experiment unit (sticky arm assignment)
    unit: str | None = None
    #: may only tighten the route's own budget
    latency_budget_ms: float | None = None
    cache: CacheMode = "use"
    #: inputs given as image URLs (input index -> URL), fetched once the model is known
    image_urls: dict[int, str] = field(default_factory=dict)
    #: request headers routes may match on (lower-case names)
    headers: Mapping[str, str] = field(default_factory=dict)


def check_limits(inference: Inference, max_inputs: int) -> None:
    """The bounds every door shares (the native door's schema says the same, with its paths)."""
    items = inference.items
    if not items:
        raise InvalidInput("send at least one input", errors=[FieldError("inputs", "empty")])
    if len(items) > max_inputs:
        raise InvalidInput(
            f"{len(items)} inputs; at most {max_inputs} per request",
            errors=[FieldError("inputs", f"at most {max_inputs} items")],
        )
    total = 0
    for i, it in enumerate(items):
        where = f"inputs[{i}]"
        given = (it.text, it.image, it.user, it.history)
        if all(v is None for v in given) and i not in inference.image_urls:
            raise _invalid(where, "an input needs at least one of text, image, user, history")
        if it.text is not None and len(it.text) > MAX_TEXT_CHARS:
            raise _invalid(f"{where}.text", f"at most {MAX_TEXT_CHARS} characters")
        if it.user is not None and len(it.user) > MAX_ID_CHARS:
            raise _invalid(f"{where}.user", f"at most {MAX_ID_CHARS} characters")
        if it.history is not None:
            if len(it.history) > MAX_HISTORY_PER_INPUT:
                raise _invalid(f"{where}.history", f"at most {MAX_HISTORY_PER_INPUT} item ids")
            total += len(it.history)
    if total > MAX_HISTORY_IDS:
        raise _invalid("inputs", f"{total} history ids; at most {MAX_HISTORY_IDS} (split it)")
    if inference.unit is not None and len(inference.unit) > MAX_ID_CHARS:
        raise _invalid("routing.unit", f"at most {MAX_ID_CHARS} characters")


def _invalid(path: str, message: str) -> InvalidInput:
    return InvalidInput(f"{path}: {message}", errors=[FieldError(path, message)])


__all__ = [
    "MAX_HISTORY_IDS",
    "MAX_HISTORY_PER_INPUT",
    "MAX_ID_CHARS",
    "MAX_TEXT_CHARS",
    "CacheMode",
    "Inference",
    "check_limits",
]
