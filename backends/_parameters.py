"""``parameters`` a caller sends, checked the same way by every local backend: a 422 naming
``parameters.<name>``, never a 502 from a TypeError deep inside a model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._errors import FieldError, InvalidInput

#: most candidate labels one classify request may carry
MAX_LABELS = 1000
#: results of recommend when the caller does not say
DEFAULT_TOP_K = 10


def label_list(parameters: Mapping[str, Any]) -> list[str]:
    """``parameters.labels`` validated: 1..MAX_LABELS unique non-empty strings."""
    labels = parameters.get("labels")
    if labels is None:
        raise _bad("labels", "classify needs parameters.labels (the candidate labels)")
    if not isinstance(labels, list | tuple) or not all(isinstance(x, str) for x in labels):
        raise _bad("labels", "parameters.labels must be a list of strings")
    if not 1 <= len(labels) <= MAX_LABELS:
        raise _bad("labels", f"parameters.labels must hold 1 to {MAX_LABELS} labels")
    if any(not x.strip() for x in labels):
        raise _bad("labels", "parameters.labels must not contain empty labels")
    if len(set(labels)) != len(labels):
        raise _bad("labels", "parameters.labels must not repeat a label")
    return list(labels)


def classify_top_k(parameters: Mapping[str, Any], count: int) -> int:
    """``parameters.top_k`` for classify: how many labels to return (default all)."""
    top_k = parameters.get("top_k")
    if top_k is None:
        return count
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= count:
        raise _bad("top_k", f"parameters.top_k must be an integer from 1 to {count}")
    return top_k


def _bad(field: str, message: str) -> InvalidInput:
    return InvalidInput(message, errors=[FieldError(f"parameters.{field}", message)])


def top_k(parameters: Mapping[str, Any], max_top_k: int) -> int:
    """``parameters.top_k``: an integer from 1 to ``max_top_k`` (default 10, or less)."""
    value = parameters.get("top_k", min(DEFAULT_TOP_K, max_top_k))
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= max_top_k:
        message = f"parameters.top_k must be an integer from 1 to {max_top_k}"
        raise InvalidInput(message, errors=[FieldError("parameters.top_k", message)])
    return value


__all__ = ["DEFAULT_TOP_K", "MAX_LABELS", "classify_top_k", "label_list", "top_k"]
