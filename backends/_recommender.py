"""Recommendation: a built catalogue scored against a fused multimodal query.

A query is any combination of ``history`` (catalogue item ids), ``text`` and ``image``. Text
and image go through the catalogue's own open_clip encoder (recorded in its ``meta.json``);
the history is the pooled catalogue rows of the known ids. ``kernels.fuse_with_history``
fuses them with the spec's per-modality weights, renormalised over the modalities present
(one pass: pooled history bag + fusion), and ``kernels.score_topk`` returns the ``top_k``
items by cosine similarity, never an item of the history.

``parameters``: ``top_k`` (default 10, 1..``max_top_k``); ``tags``: a list of tags an item
must carry *all* of to be recommended. An unknown history id is ignored and reported in the
output's ``ignored_history``; it is not an error. A ``user`` id alone carries no signal (this
backend keeps no user profiles), so an input needs history, text or an image.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._base import Capabilities, InputItem, LocalModel, Modality, Output, Task
from ._catalog import Catalog, CatalogError, read_meta
from ._errors import FieldError, InvalidInput
from ._open_clip import OpenClipModel, file_sha256
from ._parameters import top_k
from ._specs import ModalityWeights, RecommenderSpec

#: tag filters whose score bias vectors are kept
_FILTER_CACHE_SIZE = 32


@dataclass(frozen=True, slots=True)
class _Query:
    """One prepared input: tokens ``[L]``, an image ``[3, H, W]``, history rows, unknown ids."""

    tokens: torch.Tensor | None
    image: torch.Tensor | None
    history: tuple[int, ...]
    ignored: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return self.tokens is None and self.image is None and not self.history


class RecommenderModel(LocalModel):
    """Serves ``recommend`` over one built catalogue folder."""

    def __init__(
        self,
        catalog_dir: Path,
        *,
        weights: ModalityWeights | None = None,
        max_top_k: int = 1000,
        device: str = "cpu",
        max_image_pixels: int = 40_000_000,
    ) -> None:
        self.catalog_dir = catalog_dir
        self.weights = weights or ModalityWeights()
        self.max_top_k = max_top_k
        self.device = device
        self.max_image_pixels = max_image_pixels
        self.catalog: Catalog | None = None
        self.encoder: OpenClipModel | None = None
        self._index: dict[str, int] = {}
        self._table: torch.Tensor | None = None
        self._dim: int | None = None
        self._filters: OrderedDict[tuple[str, ...], torch.Tensor] = OrderedDict()
        self._filters_lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: RecommenderSpec, base_dir: Path, device: str) -> RecommenderModel:
        """Build (not load); a relative ``catalog`` resolves from ``base_dir``."""
        return cls(
            (base_dir / spec.catalog).resolve(),
            weights=spec.weights,
            max_top_k=spec.max_top_k,
            device=device,
            max_image_pixels=spec.max_image_pixels,
        )

    @property
    def capabilities(self) -> Capabilities:
        if self._dim is None:  # from meta.json, so the router knows it before load()
            with contextlib.suppress(CatalogError, OSError, KeyError, ValueError):
                self._dim = int(read_meta(self.catalog_dir)["dim"])
        return Capabilities(
            modalities=frozenset({Modality.TEXT, Modality.IMAGE, Modality.USER}),
            tasks=frozenset({Task.RECOMMEND}),
            dim=self._dim,
            parameters=frozenset({"top_k", "tags"}),
        )

    def load(self) -> None:
        catalog = Catalog.load(self.catalog_dir)
        info = catalog.meta["encoder"]
        weights = catalog.encoder_weights()
        if weights is not None:
            if not weights.is_file():
                raise CatalogError(f"{self.catalog_dir}: encoder weights {weights} are missing")
            expected = info.get("weights_sha256")
            if expected and file_sha256(weights) != expected:
                raise CatalogError(
                    f"{self.catalog_dir} was built with other weights than {weights} holds "
                    f"now; rebuild the catalogue (prism catalog build)"
                )
        encoder = OpenClipModel(
            info["arch"],
            weights=weights,
            pretrained=info.get("pretrained"),
            device=self.device,
            max_image_pixels=self.max_image_pixels,
        )
        encoder.load()
        self.encoder = encoder
        self.catalog = catalog
        self._dim = int(catalog.meta["dim"])
        self._index = {item_id: row for row, item_id in enumerate(catalog.ids)}
        # float16 rows: the fast path of score_topk, and half the memory
        self._table = torch.from_numpy(catalog.embeddings).to(self.device).contiguous()

    def prepare(self, task: Task, item: InputItem, parameters: Mapping[str, Any]) -> _Query:
        if task is not Task.RECOMMEND:
            raise InvalidInput(f"this model serves recommend, not {task}")
        top_k(parameters, self.max_top_k)
        tag_filter(parameters)
        encoder = self._encoder()
        tokens = None if item.text is None else encoder.tokenize([item.text])[0]
        image = None if item.image is None else encoder.preprocess_image(item.image)
        known: list[int] = []
        ignored: list[str] = []
        for item_id in item.history or ():
            row = self._index.get(item_id)
            if row is None:
                ignored.append(item_id)
            else:
                known.append(row)
        if tokens is None and image is None and item.history is None:
            raise InvalidInput(
                "recommend needs history, text or an image (a user id alone carries no "
                "signal: this recommender keeps no user profiles)"
            )
        return _Query(tokens, image, tuple(known), tuple(ignored))

    def forward(
        self, task: Task, prepared: Sequence[Any], parameters: Mapping[str, Any]
    ) -> list[Output]:
        from prism.kernels.ops import fuse_with_history, score_topk

        queries: Sequence[_Query] = prepared
        table, catalog = self._loaded()
        k = min(top_k(parameters, self.max_top_k), table.shape[0])
        fused = self._modalities(queries, table.shape[1])
        history = [list(q.history) for q in queries]
        offsets = np.cumsum([0, *(len(h) for h in history[:-1])])
        indices = torch.tensor([i for h in history for i in h], dtype=torch.long)
        weights = [self.weights.text, self.weights.image, self.weights.history]
        with torch.inference_mode():
            query = fuse_with_history(
                fused["embs"],
                weights,
                table,
                indices.to(self.device),
                torch.as_tensor(offsets, dtype=torch.long, device=self.device),
                mask=fused["mask"],
                out_dtype=torch.float32,
            )
            scores, rows = score_topk(
                query, table, k, exclude=history, bias=self._tag_bias(tag_filter(parameters))
            )
        scores_np, rows_np = scores.cpu().numpy(), rows.cpu().numpy()
        outputs: list[Output] = []
        for q, row_scores, row_items in zip(queries, scores_np, rows_np, strict=True):
            items = (
                []
                if q.empty
                else [
                    {"id": catalog.ids[int(i)], "score": float(s)}
                    for s, i in zip(row_scores, row_items, strict=True)
                    if i >= 0
                ]
            )
            outputs.append({"items": items, "ignored_history": list(q.ignored)})
        return outputs

    def close(self) -> None:
        if self.encoder is not None:
            self.encoder.close()
        self.encoder = None
        self._table = None

    # --- internals ----------------------------------------------------------------------------

    def _encoder(self) -> OpenClipModel:
        if self.encoder is None:
            raise RuntimeError("load() the recommender first")
        return self.encoder

    def _loaded(self) -> tuple[torch.Tensor, Catalog]:
        if self._table is None or self.catalog is None:
            raise RuntimeError("load() the recommender first")
        return self._table, self.catalog

    def _modalities(self, queries: Sequence[_Query], dim: int) -> dict[str, Any]:
        """Text and image embeddings ``[2, B, D]`` and the presence mask ``[B, 3]``.

        The mask's history column stays True: ``fuse_with_history`` treats an empty bag
        (no known history id) as absent by itself.
        """
        encoder = self._encoder()
        embs = torch.zeros(2, len(queries), dim, device=self.device)
        mask = torch.ones(len(queries), 3, dtype=torch.bool, device=self.device)
        texts = {i: q.tokens for i, q in enumerate(queries) if q.tokens is not None}
        images = {i: q.image for i, q in enumerate(queries) if q.image is not None}
        mask[:, 0] = False
        mask[:, 1] = False
        if texts:
            embs[0, list(texts)] = encoder.encode_tokens(torch.stack(list(texts.values())))
            mask[list(texts), 0] = True
        if images:
            embs[1, list(images)] = encoder.encode_images(torch.stack(list(images.values())))
            mask[list(images), 1] = True
        return {"embs": embs, "mask": mask}

    def _tag_bias(self, tags: tuple[str, ...]) -> torch.Tensor | None:
        """Score bias: 0 for items carrying every tag, -inf (= never returned) for the rest."""
        if not tags:
            return None
        with self._filters_lock:
            cached = self._filters.get(tags)
            if cached is not None:
                self._filters.move_to_end(tags)
                return cached
        _, catalog = self._loaded()
        wanted = set(tags)
        keep = np.fromiter((wanted.issubset(t) for t in catalog.tags), bool, len(catalog.tags))
        bias = torch.from_numpy(np.where(keep, 0.0, -np.inf).astype(np.float32))
        bias = bias.to(self.device)
        with self._filters_lock:
            self._filters[tags] = bias
            while len(self._filters) > _FILTER_CACHE_SIZE:
                self._filters.popitem(last=False)
        return bias


def tag_filter(parameters: Mapping[str, Any]) -> tuple[str, ...]:
    """``parameters.tags``: the tags every recommended item must carry (sorted, unique)."""
    tags = parameters.get("tags")
    if tags is None:
        return ()
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) and t for t in tags):
        message = "parameters.tags must be a list of non-empty strings"
        raise InvalidInput(message, errors=[FieldError("parameters.tags", message)])
    return tuple(sorted(set(tags)))
