"""The one interface every backend implements, and the values that cross it.

A backend is shaped like an HTTP transport: one async :meth:`Backend.infer` for a batch of
inputs, :meth:`Backend.health`, :meth:`Backend.aclose`, and declared :class:`Capabilities`.
Local models implement :class:`LocalModel` instead (synchronous CPU ``prepare`` per input,
batched ``forward``) and are wrapped in a batcher that runs them off the event loop.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from json.encoder import encode_basestring
from typing import Any


class Task(StrEnum):
    EMBED = "embed"
    CLASSIFY = "classify"
    RECOMMEND = "recommend"


class Modality(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    #: a user id and/or their item history (recommendation)
    USER = "user"


def _json_str(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


@dataclass(frozen=True, slots=True)
class InputItem:
    """One input of a request. Its modality is what it carries; several = multimodal.

    ``image`` holds the encoded bytes (PNG/JPEG/WebP/GIF) as the caller sent them; the backend
    decodes them, so a broken image is that backend's clear 422, not a gateway crash.
    """

    text: str | None = None
    image: bytes | None = None
    user: str | None = None
    history: tuple[str, ...] | None = None

    @property
    def modalities(self) -> frozenset[Modality]:
        found: set[Modality] = set()
        if self.text is not None:
            found.add(Modality.TEXT)
        if self.image is not None:
            found.add(Modality.IMAGE)
        if self.user is not None or self.history is not None:
            found.add(Modality.USER)
        return frozenset(found)

    def fingerprint(self) -> bytes:
        """A canonical digest of the content, for cache keys (images by their bytes' hash)."""
        h = hashlib.blake2b(digest_size=16)
        if self.history is None:
            # the bytes ``json.dumps([text, user, None], ensure_ascii=False)`` writes (cache
            # keys stay as they were), from its own string encoder: the full encoder, built
            # per call, was 3% of a remote miss's CPU
            h.update(f"[{_json_str(self.text)}, {_json_str(self.user)}, null]".encode())
        else:
            h.update(json.dumps([self.text, self.user, self.history], ensure_ascii=False).encode())
        if self.image is not None:
            h.update(b"\x00img")
            h.update(hashlib.blake2b(self.image, digest_size=16).digest())
        return h.digest()


#: One output per input. Keys by task:
#: embed -> {"embedding": np.ndarray float32 [dim]};
#: classify -> {"labels": [{"label": str, "score": float}, ...]} sorted by score;
#: recommend -> {"items": [{"id": str, "score": float}, ...], "ignored_history": [str, ...]}.
Output = dict[str, Any]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do: the router only sends it what it declares."""

    modalities: frozenset[Modality]
    tasks: frozenset[Task]
    #: embedding width, when the backend embeds
    dim: int | None = None
    #: names of extra request parameters it understands (documentation, validation)
    parameters: frozenset[str] = field(default_factory=frozenset)


class Backend(ABC):
    """An async model endpoint: local (in-process, batched) or remote (HTTP)."""

    #: e.g. "text-embed@1/local" -- set by the registry, used in logs and metrics
    name: str = "backend"

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    async def start(self) -> None:
        """Load weights / open clients. Called once, by the owner, before any infer."""

    @abstractmethod
    async def infer(
        self,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
    ) -> list[Output]:
        """Run ``task`` on ``items``; returns exactly one output per item, in order."""

    async def health(self) -> bool:
        """True when the backend can serve now (loaded / upstream reachable)."""
        return True

    async def aclose(self) -> None:
        """Release threads, clients and memory."""


class LocalModel(ABC):
    """An in-process model, split the way batching needs it.

    ``prepare`` runs per input on a worker thread (decode, tokenize, validate: per-request
    errors stay per-request); ``forward`` runs one batch of prepared inputs that share a task
    and parameters; both are synchronous and never called on the event loop.
    """

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    def load(self) -> None:
        """Load weights (slow); called once on a worker thread."""

    def prepare(self, task: Task, item: InputItem, parameters: Mapping[str, Any]) -> Any:
        """Turn one input into what ``forward`` batches; raise InvalidInput subclasses here."""
        return item

    @abstractmethod
    def forward(
        self, task: Task, prepared: Sequence[Any], parameters: Mapping[str, Any]
    ) -> list[Output]:
        """Run one batch; one output per prepared input."""

    def close(self) -> None:
        """Free memory."""
