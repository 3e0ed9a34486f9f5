"""Builds backends from validated specs: the only place that knows every backend class.

Backend modules are imported here, lazily, only when a spec needs them: a gateway that fronts
remote models never imports torch, transformers, open_clip, triton or onnxruntime, and a policy
that serves only text never imports open_clip. A kind whose framework is not installed (an extra
left out) fails that one model's load with the ``pip install`` that fixes it
(:mod:`prism.backends._frameworks`). A new local kind adds a line to ``LOCAL_KINDS`` and one to
``FRAMEWORKS_OF``; its module may import its framework at the top, since nothing imports the
module before a spec names the kind.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._base import Backend, LocalModel
from ._batching import LocalBackend
from ._frameworks import gpu_visible, missing_framework, needs_torch, require_frameworks
from ._specs import BackendSpec, KServeSpec, OpenAISpec, TFServingSpec

#: kind -> "module:Class" whose ``from_spec(spec, base_dir, device)`` builds the model
LOCAL_KINDS: dict[str, str] = {
    "fake": "prism.backends._fake:FakeModel",
    "text-encoder": "prism.backends._text_encoder:TextEncoderModel",
    "open-clip": "prism.backends._open_clip:OpenClipModel",
    "onnx": "prism.backends._onnx:OnnxTextEncoderModel",
    "onnx-clip": "prism.backends._onnx_clip:OnnxClipModel",
    "recommender": "prism.backends._recommender:RecommenderModel",
}

#: backend -> "module:Class" whose ``from_spec(spec, url, name=..., base_dir=...)`` builds a
#: remote backend
REMOTE_KINDS: dict[str, str] = {
    "kserve": "prism.backends._kserve:KServeBackend",
    "openai": "prism.backends._openai:OpenAIBackend",
    "tfserving": "prism.backends._tfserving:TFServingBackend",
    # grpcio is imported by this module only: a gateway without gRPC versions never loads it
    "kserve-grpc": "prism.backends._kserve_grpc:KServeGrpcBackend",
}


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def resolve_device(wanted: str, kind: str | None = None) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``.

    Torch decides for kinds that run on torch (a CPU-only torch build sees no GPU); any other
    kind (the fake model, one on another runtime) asks the CUDA driver, so that deciding never
    imports torch.
    """
    if wanted != "auto":
        return wanted
    if kind is not None and not needs_torch(kind):
        return "cuda" if gpu_visible() else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_local_model(spec: Any, base_dir: Path) -> LocalModel:
    """Instantiate (not load) the local model a spec describes."""
    require_frameworks(spec.kind)
    try:
        factory: Callable[..., LocalModel] = _load(LOCAL_KINDS[spec.kind]).from_spec
    except ModuleNotFoundError as exc:  # a kind not in FRAMEWORKS_OF, on an install without it
        raise missing_framework(spec.kind, exc) from exc
    return factory(spec, base_dir, resolve_device(spec.device, spec.kind))


def replica_urls(spec: BackendSpec) -> list[str]:
    """Every replica URL of a remote spec (``url`` first, each once); empty for local specs."""
    if isinstance(spec, KServeSpec | OpenAISpec | TFServingSpec):
        # pydantic normalises "http://h:9000" to "http://h:9000/"; keys read better without.
        # A URL listed twice would be two targets of one server, skewing every strategy.
        return list(dict.fromkeys(str(u).rstrip("/") for u in (spec.url, *spec.replicas)))
    return []


def build_backend(
    spec: BackendSpec, *, base_dir: Path, name: str, url: str | None = None
) -> Backend:
    """A ready-to-start backend for one version (for remote specs: one replica ``url``)."""
    if isinstance(spec, KServeSpec | OpenAISpec | TFServingSpec):
        # KServe's V1 protocol is TF Serving's REST shape: one backend speaks both
        kind: str = spec.backend
        if isinstance(spec, KServeSpec) and spec.protocol == "v1":
            kind = "tfserving"
        elif isinstance(spec, KServeSpec) and spec.uses_grpc:
            kind = "kserve-grpc"
        cls = _load(REMOTE_KINDS[kind])
        backend: Backend = cls.from_spec(spec, url or str(spec.url), name=name, base_dir=base_dir)
        return backend
    return LocalBackend(build_local_model(spec, base_dir), spec.batching, name=name)
