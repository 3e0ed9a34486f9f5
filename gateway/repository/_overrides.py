"""What operators change at run time, on top of the policy file: label moves and loaded or
unloaded versions. The file stays the base; :func:`compose` lays the overrides over it.

Overrides are one small document (revisioned, so replicas notice a change by its number).
Each edit is a pure function ``Overrides -> Overrides`` run under the store's
compare-and-set, so two operators moving labels at once never lose one of the moves.
An override the file no longer allows (its model or version left the file) is not applied:
:func:`compose` reports it as stale, and the next edit of that model drops it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prism.backends import Conflict, InvalidInput, ModelNotFound, VersionNotFound

from ..policy import ModelEntry, PolicyDocument

#: label moves remembered per label for rollback (older ones are forgotten)
HISTORY_DEPTH = 20


class Overrides(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    #: bumped by every edit; replicas poll it
    revision: int = 0
    updated_at: float | None = None
    #: model -> label -> version id, where an operator moved (or created) a label
    labels: dict[str, dict[str, str]] = Field(default_factory=dict)
    #: model -> label -> what the label said before each move (None: it did not exist),
    #: most recent last: ``rollback`` pops one
    history: dict[str, dict[str, list[str | None]]] = Field(default_factory=dict)
    #: model -> version -> True (loaded by an operator) / False (unloaded by one)
    loaded: dict[str, dict[str, bool]] = Field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.labels and not self.loaded and not self.history


@dataclass(frozen=True)
class Composed:
    """The file with the overrides that still make sense laid over it."""

    document: PolicyDocument
    #: overrides not applied, each ``{"kind", "model", ..., "reason"}``
    stale: list[dict[str, Any]] = field(default_factory=list)


def compose(doc: PolicyDocument, overrides: Overrides) -> Composed:
    stale: list[dict[str, Any]] = []
    for name in sorted({*overrides.labels, *overrides.loaded} - set(doc.models)):
        stale.append(
            {"kind": "model", "model": name, "reason": f"model {name!r} is no longer in the file"}
        )
    models: dict[str, ModelEntry] = {}
    for name, entry in doc.models.items():
        labels = dict(entry.labels)
        for label, version in overrides.labels.get(name, {}).items():
            reason = None
            if version not in entry.versions:
                reason = f"version {version!r} of {name!r} is no longer in the file"
            elif label in entry.versions:
                reason = f"label {label!r} now shadows a version id of {name!r}"
            if reason is not None:
                stale.append(
                    {"kind": "label", "model": name, "label": label, "version": version,
                     "reason": reason}
                )  # fmt: skip
                continue
            labels[label] = version
        unloaded = list(entry.unloaded)
        for version, loaded in overrides.loaded.get(name, {}).items():
            if version not in entry.versions:
                stale.append(
                    {"kind": "version", "model": name, "version": version, "loaded": loaded,
                     "reason": f"version {version!r} of {name!r} is no longer in the file"}
                )  # fmt: skip
            elif loaded and version in unloaded:
                unloaded.remove(version)
            elif not loaded and version not in unloaded:
                unloaded.append(version)
        if labels != entry.labels or unloaded != entry.unloaded:
            entry = entry.model_copy(update={"labels": labels, "unloaded": unloaded})
        models[name] = entry
    return Composed(doc.model_copy(update={"models": models}), stale)


def prune(doc: PolicyDocument, overrides: Overrides) -> Overrides:
    """``overrides`` without the ones the file no longer allows, nor no-ops. Models the
    file does not name are left alone: a gateway with another policy may share the store."""
    labels = {m: v for m, v in overrides.labels.items() if m not in doc.models}
    loaded = {m: v for m, v in overrides.loaded.items() if m not in doc.models}
    history = {m: v for m, v in overrides.history.items() if m not in doc.models}
    for name, entry in doc.models.items():
        moved = {
            label: v
            for label, v in overrides.labels.get(name, {}).items()
            if v in entry.versions and label not in entry.versions
        }
        if moved:
            labels[name] = moved
        states = {
            v: on
            for v, on in overrides.loaded.get(name, {}).items()
            if v in entry.versions and on == (v in entry.unloaded)  # differs from the file
        }
        if states:
            loaded[name] = states
        kept = {
            label: [v for v in past if v is None or v in entry.versions][-HISTORY_DEPTH:]
            for label, past in overrides.history.get(name, {}).items()
        }
        kept = {label: past for label, past in kept.items() if past}
        if kept:
            history[name] = kept
    return overrides.model_copy(update={"labels": labels, "loaded": loaded, "history": history})


def _entry(doc: PolicyDocument, model: str, version: str | None = None) -> ModelEntry:
    entry = doc.models.get(model)
    if entry is None:
        known = ", ".join(sorted(doc.models))
        raise ModelNotFound(f"unknown model {model!r} (known: {known})", extra={"model": model})
    if version is not None and version not in entry.versions:
        known = ", ".join(sorted(entry.versions))
        raise VersionNotFound(
            f"model {model!r} has no version {version!r} (known: {known})",
            extra={"model": model, "version": version},
        )
    return entry


def set_loaded(
    doc: PolicyDocument, current: Overrides, model: str, version: str, loaded: bool
) -> Overrides:
    """Mark ``model@version`` loaded or unloaded (the file's own state needs no override)."""
    entry = _entry(doc, model, version)
    states = dict(current.loaded.get(model, {}))
    if loaded == (version not in entry.unloaded):
        states.pop(version, None)
    else:
        states[version] = loaded
    return prune(doc, current.model_copy(update={"loaded": {**current.loaded, model: states}}))


def move_label(
    doc: PolicyDocument, current: Overrides, model: str, label: str, version: str
) -> Overrides:
    """Point ``label`` at ``version`` (a promotion), remembering where it pointed."""
    entry = _entry(doc, model, version)
    if label in entry.versions:
        raise InvalidInput(f"{label!r} is a version id of {model!r}, not a label")
    effective = compose(doc, current).document.models[model]
    if version in effective.unloaded:
        raise Conflict(
            f"version {version!r} of {model!r} is unloaded: load it first "
            f"(POST /admin/models/{model}/versions/{version}/load)"
        )
    before = effective.labels.get(label)
    if before == version:
        return current  # already there: nothing to remember, nothing to undo
    past = [*current.history.get(model, {}).get(label, []), before][-HISTORY_DEPTH:]
    return _with_label(doc, current, model, label, version, past)


def roll_back(doc: PolicyDocument, current: Overrides, model: str, label: str) -> Overrides:
    """Put ``label`` back where it pointed before its last move."""
    entry = _entry(doc, model)
    past = list(current.history.get(model, {}).get(label, []))
    if not past:
        raise Conflict(
            f"label {label!r} of {model!r} has not been moved at run time: nothing to roll back",
            extra={"model": model, "label": label},
        )
    previous = past.pop()
    if previous is not None and previous not in entry.versions:
        raise Conflict(
            f"label {label!r} of {model!r} pointed at {previous!r}, no longer in the file"
        )
    if previous is not None and previous in compose(doc, current).document.models[model].unloaded:
        raise Conflict(
            f"label {label!r} of {model!r} pointed at {previous!r}, which is unloaded: load it "
            f"first (POST /admin/models/{model}/versions/{previous}/load)"
        )
    return _with_label(doc, current, model, label, previous, past)


def _with_label(
    doc: PolicyDocument,
    current: Overrides,
    model: str,
    label: str,
    version: str | None,
    past: list[str | None],
) -> Overrides:
    entry = doc.models[model]
    moved = dict(current.labels.get(model, {}))
    if version is None or entry.labels.get(label) == version:
        moved.pop(label, None)  # back to what the file says: the file governs again
    else:
        moved[label] = version
    history = {**current.history, model: {**current.history.get(model, {}), label: past}}
    return prune(
        doc,
        current.model_copy(update={"labels": {**current.labels, model: moved}, "history": history}),
    )
