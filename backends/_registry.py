"""Builds backends from validated specs: the only place that knows every backend class.

Local kinds are imported lazily, so a policy that serves only text never imports open_clip,
and a missing optional dependency fails that one model's load with a clear message.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._base import Backend, LocalModel
from ._batching import LocalBackend
from ._specs import BackendSpec, KServeSpec, OpenAISpec

#: kind -> "module:Class" whose ``from_spec(spec, base_dir, device)`` builds the model
LOCAL_KINDS: dict[str, str] = {
    "fake": "prism.backends._fake:FakeModel",
    "text-encoder": "prism.backends._text_encoder:TextEncoderModel",
    "open-clip": "prism.backends._open_clip:OpenClipModel",
    "onnx": "prism.backends._onnx:OnnxTextEncoderModel",
    "recommender": "prism.backends._recommender:RecommenderModel",
}

#: backend -> "module:Class" whose ``from_spec(spec, url, name=...)`` builds a remote backend
REMOTE_KINDS: dict[str, str] = {
    "kserve": "prism.backends._kserve:KServeBackend",
    "openai": "prism.backends._openai:OpenAIBackend",
}


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def resolve_device(wanted: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if wanted != "auto":
        return wanted
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_local_model(spec: Any, base_dir: Path) -> LocalModel:
    """Instantiate (not load) the local model a spec describes."""
    factory: Callable[..., LocalModel] = _load(LOCAL_KINDS[spec.kind]).from_spec
    return factory(spec, base_dir, resolve_device(spec.device))


def replica_urls(spec: BackendSpec) -> list[str]:
    """Every replica URL of a remote spec (``url`` first, each once); empty for local specs."""
    if isinstance(spec, KServeSpec | OpenAISpec):
        # pydantic normalises "http://h:9000" to "http://h:9000/"; keys read better without.
        # A URL listed twice would be two targets of one server, skewing every strategy.
        return list(dict.fromkeys(str(u).rstrip("/") for u in (spec.url, *spec.replicas)))
    return []


def build_backend(
    spec: BackendSpec, *, base_dir: Path, name: str, url: str | None = None
) -> Backend:
    """A ready-to-start backend for one version (for remote specs: one replica ``url``)."""
    if isinstance(spec, KServeSpec | OpenAISpec):
        cls = _load(REMOTE_KINDS[spec.backend])
        backend: Backend = cls.from_spec(spec, url or str(spec.url), name=name)
        return backend
    return LocalBackend(build_local_model(spec, base_dir), spec.batching, name=name)
