"""open_clip models: image and text embeddings in one space, and zero-shot classification.

Any open_clip architecture works (``arch``), with weights from a local checkpoint (a
``state_dict`` file, an open_clip training checkpoint ``{"state_dict": ...}``, ``.safetensors``,
or a ``local-dir`` folder holding ``open_clip_config.json``) or, on a machine with internet, an
open_clip ``pretrained`` tag. An architecture open_clip does not ship is registered from
``<arch>.json`` beside the weights; Prism's own ``demo-clip`` config is registered on import.

Images are preprocessed by the very transform ``open_clip.create_model_and_transforms``
returns for the model (resize, crop, RGB, normalise), so embeddings match open_clip's own.

``precision`` converts both towers at load (``prism optimize`` measures each): ``bf16``,
``fp16`` (GPU), or ``int8``, torch's dynamic int8 quantisation of the linear layers (CPU).
A convolutional image tower (ModifiedResNet) keeps its convolutions in fp32 (dynamic
quantisation has no Conv kernel) and its attention pool too: that pool hands its projections'
``.weight`` tensors to ``F.multi_head_attention_forward``, which a quantised layer no longer has.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from ._base import Capabilities, InputItem, LocalModel, Modality, Output, Task
from ._errors import InvalidImage, InvalidInput
from ._images import load_image
from ._parameters import classify_top_k, label_list
from ._specs import OpenClipSpec
from ._text_encoder import convert_precision

#: open_clip configs shipped with Prism (``demo-clip``)
PACKAGED_CONFIGS = Path(__file__).parent / "demo" / "model_configs"
#: most labels one classify request may carry
#: label sets whose text embeddings are kept (classify requests tend to repeat them)
_LABEL_CACHE_SIZE = 64

open_clip.add_model_config(PACKAGED_CONFIGS)

# torch.load(weights_only=True): a checkpoint cannot run code (open_clip >= 2.26 accepts it)
_SAFE_LOAD: dict[str, Any] = (
    {"weights_only": True}
    if "weights_only" in inspect.signature(open_clip.create_model_and_transforms).parameters
    else {}
)


def ensure_arch(arch: str, weights: Path | None = None) -> None:
    """Make ``arch`` known to open_clip, from ``<arch>.json`` beside ``weights`` if needed.

    Raises ``ValueError`` when no config can be found.
    """
    if arch.startswith(("local-dir:", "hf-hub:")) or arch in open_clip.list_models():
        return
    if weights is not None:
        config = weights.parent / f"{arch}.json"
        if config.is_file():
            open_clip.add_model_config(config)
            return
    raise ValueError(
        f"unknown open_clip architecture {arch!r}: not built in, and no {arch}.json beside "
        f"the weights ({weights})"
    )


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file (identifies the exact weights a catalogue was built with)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One input after ``prepare``: a preprocessed image ``[3, H, W]`` or text tokens ``[L]``."""

    image: torch.Tensor | None = None
    tokens: torch.Tensor | None = None


class OpenClipModel(LocalModel):
    """An open_clip model serving ``embed`` (text or image) and ``classify`` (images)."""

    def __init__(
        self,
        arch: str,
        *,
        weights: Path | None = None,
        pretrained: str | None = None,
        device: str = "cpu",
        max_image_pixels: int = 40_000_000,
        precision: str = "fp32",
    ) -> None:
        if (weights is None) == (pretrained is None):
            raise ValueError("give exactly one of weights or pretrained")
        self.arch = arch
        self.weights = weights
        self.pretrained = pretrained
        self.device = device
        self.max_image_pixels = max_image_pixels
        self.precision = precision
        self._dtype = torch.float32
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._dim: int | None = None
        self._labels: OrderedDict[tuple[str, ...], torch.Tensor] = OrderedDict()
        self._labels_lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: OpenClipSpec, base_dir: Path, device: str) -> OpenClipModel:
        """Build (not load) from a policy entry; relative ``weights`` resolve from ``base_dir``."""
        weights = (base_dir / spec.weights).resolve() if spec.weights is not None else None
        return cls(
            spec.arch,
            weights=weights,
            pretrained=spec.pretrained,
            device=device,
            max_image_pixels=spec.max_image_pixels,
            precision=spec.precision,
        )

    # --- LocalModel -----------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            modalities=frozenset({Modality.TEXT, Modality.IMAGE}),
            tasks=frozenset({Task.EMBED, Task.CLASSIFY}),
            dim=self._embed_dim(),
            parameters=frozenset({"labels", "top_k"}),
        )

    def load(self) -> None:
        model_name, source = self.arch, self.pretrained
        if self.weights is not None:
            if self.weights.is_dir():  # an open_clip folder: config + weights together
                model_name, source = f"local-dir:{self.weights}", None
            elif not self.weights.is_file():
                raise FileNotFoundError(f"open_clip weights not found: {self.weights}")
            else:
                ensure_arch(self.arch, self.weights)
                source = str(self.weights)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=source, device=self.device, **_SAFE_LOAD
            )
        # wrong arch for these weights, missing keys, mismatched shapes (open_clip asserts)
        except (RuntimeError, AssertionError, KeyError, ValueError) as exc:
            raise ValueError(f"cannot load {self.arch} from {source}: {exc}") from exc
        # channels_last: oneDNN / cuDNN convolutions run faster on NHWC tensors
        model = model.to(memory_format=torch.channels_last).eval()
        self._model = convert_precision(
            model, self.precision, self.device, linears=_quantisable_linears(model)
        )
        if self.precision == "int8":
            # open_clip asks a block's first MLP layer for the dtype to cast activations to;
            # a quantised layer answers through this attribute (open_clip's int8 hook)
            for module in self._model.modules():
                if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
                    module.int8_original_dtype = torch.float32  # type: ignore[assignment]
        self._dtype = _float_dtype(self.precision)
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(model_name)
        self._dim = int(self.encode_texts(["a"]).shape[1])

    def prepare(self, task: Task, item: InputItem, parameters: Mapping[str, Any]) -> _Prepared:
        if item.user is not None or item.history is not None:
            raise InvalidInput("this model takes text or an image, not a user or history")
        if task is Task.CLASSIFY:
            classify_top_k(parameters, len(label_list(parameters)))
            if item.image is None:
                raise InvalidInput(
                    "classify takes an image input (zero-shot against parameters.labels)"
                )
        elif task is not Task.EMBED:
            raise InvalidInput(f"this model does not serve task {task}")
        if (item.text is None) == (item.image is None):
            raise InvalidInput("give either text or an image per input, not both or neither")
        if item.image is not None:
            return _Prepared(image=self.preprocess_image(item.image))
        assert item.text is not None
        return _Prepared(tokens=self.tokenize([item.text])[0])

    def forward(
        self, task: Task, prepared: Sequence[Any], parameters: Mapping[str, Any]
    ) -> list[Output]:
        embeddings = self._embed_prepared(prepared)
        if task is Task.EMBED:
            rows = embeddings.float().cpu().numpy()
            return [{"embedding": np.ascontiguousarray(row)} for row in rows]
        labels = label_list(parameters)
        top_k = classify_top_k(parameters, len(labels))
        with torch.inference_mode():
            logits = self.logit_scale() * embeddings @ self._label_embeddings(labels).T
            probs = logits.softmax(dim=-1).float().cpu().numpy()
        outputs: list[Output] = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:top_k]
            outputs.append(
                {"labels": [{"label": labels[i], "score": float(row[i])} for i in order]}
            )
        return outputs

    def close(self) -> None:
        self._model = None
        with self._labels_lock:
            self._labels.clear()

    # --- encoding, shared with the catalogue builder and the recommender ---------------------

    def preprocess_image(self, data: bytes) -> torch.Tensor:
        """Decode image bytes and apply the model's open_clip transform: float ``[3, H, W]``."""
        image = load_image(data, max_pixels=self.max_image_pixels)
        try:
            tensor: torch.Tensor = self._preprocess(image)
        except (OSError, ValueError, TypeError) as exc:
            raise InvalidImage(f"the image cannot be preprocessed ({exc})") from exc
        return tensor

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """open_clip tokens ``[N, context_length]`` (long texts are truncated, as in open_clip)."""
        tokens: torch.Tensor = self._tokenizer(list(texts))
        return tokens

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length float32 embeddings ``[B, D]`` (on ``device``) of preprocessed images."""
        batch = images.to(self.device, self._dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out: torch.Tensor = self._model.encode_image(batch, normalize=True)
        return out.float()

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-length float32 embeddings ``[B, D]`` (on ``device``) of tokenized texts."""
        with torch.inference_mode():
            out: torch.Tensor = self._model.encode_text(tokens.to(self.device), normalize=True)
        return out.float()

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length float32 embeddings ``[B, D]`` of texts."""
        return self.encode_tokens(self.tokenize(texts))

    def logit_scale(self) -> float:
        """The model's learned inverse temperature (``exp(logit_scale)``, capped at 100)."""
        return float(self._model.logit_scale.detach().float().exp().clamp(max=100))

    def describe(self) -> dict[str, Any]:
        """What identifies this encoder: arch, weights (+ SHA-256) or pretrained tag."""
        info: dict[str, Any] = {"arch": self.arch, "pretrained": self.pretrained}
        if self.precision != "fp32":
            info["precision"] = self.precision
        if self.weights is not None:
            info["weights"] = str(self.weights)
            if self.weights.is_file():
                info["weights_sha256"] = file_sha256(self.weights)
        return info

    @property
    def dim(self) -> int:
        """Embedding width (known once loaded)."""
        if self._dim is None:
            raise RuntimeError("load() the model first")
        return self._dim

    # --- internals ----------------------------------------------------------------------------

    def _embed_dim(self) -> int | None:
        if self._dim is not None:
            return self._dim
        try:
            ensure_arch(self.arch, self.weights)
            config = open_clip.get_model_config(self.arch)
        except (ValueError, OSError):
            return None  # unknown until load() says why
        return int(config["embed_dim"]) if config else None

    def _embed_prepared(self, prepared: Sequence[_Prepared]) -> torch.Tensor:
        """Embeddings of a mixed batch, in input order: images and texts each as one batch."""
        images = {i: p.image for i, p in enumerate(prepared) if p.image is not None}
        texts = {i: p.tokens for i, p in enumerate(prepared) if p.tokens is not None}
        rows: dict[int, torch.Tensor] = {}
        if images:
            encoded = self.encode_images(torch.stack(list(images.values())))
            rows.update(zip(images, encoded, strict=True))
        if texts:
            encoded = self.encode_tokens(torch.stack(list(texts.values())))
            rows.update(zip(texts, encoded, strict=True))
        return torch.stack([rows[i] for i in range(len(prepared))])

    def _label_embeddings(self, labels: list[str]) -> torch.Tensor:
        key = tuple(labels)
        with self._labels_lock:
            cached = self._labels.get(key)
            if cached is not None:
                self._labels.move_to_end(key)
                return cached
        embedded = self.encode_texts(labels)
        with self._labels_lock:
            self._labels[key] = embedded
            while len(self._labels) > _LABEL_CACHE_SIZE:
                self._labels.popitem(last=False)
        return embedded


def _float_dtype(precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def _quantisable_linears(model: torch.nn.Module) -> set[str]:
    """Names of the linear layers dynamic int8 can replace: not the output projection of
    ``nn.MultiheadAttention`` (a subclass torch keeps in float), nor those of an attention
    pool, whose forward reads the layers' ``.weight`` tensors itself."""
    from open_clip.modified_resnet import AttentionPool2d

    pools = [name for name, m in model.named_modules() if isinstance(m, AttentionPool2d)]
    return {
        name
        for name, m in model.named_modules()
        if type(m) is torch.nn.Linear and not any(name.startswith(p + ".") for p in pools)
    }
