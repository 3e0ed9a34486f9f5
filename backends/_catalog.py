"""Item catalogues: the JSONL source format, the build, and the compact built artefact.

Source: one JSON object per line, ``{"id": str, "title": str, "image"?: ..., "tags"?: [str]}``.
``image`` is a path (relative to the JSONL file's folder), a ``data:image/...;base64,`` URL,
or ``{"path": ...}`` / ``{"base64": ...}``.

Built artefact (a folder, written by :func:`build_catalog`):

- ``embeddings.npy``: float16 ``[N, D]``, one unit row per item: the fusion of the title's
  text embedding and the image's embedding (``kernels.fuse_modalities``);
- ``items.jsonl``: ``{"id", "title", "tags"}`` per row of the matrix, in the same order;
- ``meta.json``: format version, count, dim, fusion weights, and the encoder (open_clip
  arch, weights path relative to this folder, the weights' SHA-256), so that the recommender
  embeds queries with exactly the encoder the items were embedded with.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._errors import InvalidImage
from ._images import decode_base64_image
from ._progress import progress as progress_bar

if TYPE_CHECKING:
    from ._open_clip import OpenClipModel

FORMAT = "prism-catalog"
FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.jsonl"
META_FILE = "meta.json"


class CatalogError(ValueError):
    """A catalogue source or artefact is invalid; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One line of a catalogue JSONL file, its image read into bytes."""

    line: int
    id: str
    title: str
    tags: tuple[str, ...]
    image: bytes | None


def _image_bytes(value: Any, folder: Path, where: str) -> bytes:
    if isinstance(value, dict) and set(value) == {"path"}:
        value = value["path"]
    elif isinstance(value, dict) and set(value) == {"base64"}:
        return decode_base64_image(str(value["base64"]))
    if not isinstance(value, str) or not value:
        raise CatalogError(
            f'{where}: "image" must be a path, a data URL, {{"path"}} or {{"base64"}}'
        )
    if value.startswith("data:"):
        return decode_base64_image(value)
    path = folder / value
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{where}: cannot read image {path}: {exc.strerror}") from exc


def read_source(jsonl_path: Path) -> Iterator[SourceItem]:
    """Parse and validate a catalogue JSONL file lazily (ids unique, titles non-empty)."""
    seen: set[str] = set()
    with jsonl_path.open(encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{jsonl_path}:{number}"
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise CatalogError(f"{where}: not JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise CatalogError(f"{where}: each line must be a JSON object")
            item_id, title = record.get("id"), record.get("title")
            if not isinstance(item_id, str) or not item_id:
                raise CatalogError(f'{where}: "id" must be a non-empty string')
            if item_id in seen:
                raise CatalogError(f"{where}: duplicate id {item_id!r}")
            seen.add(item_id)
            if not isinstance(title, str) or not title.strip():
                raise CatalogError(f'{where}: "title" must be a non-empty string')
            tags = record.get("tags", [])
            if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
                raise CatalogError(f'{where}: "tags" must be a list of non-empty strings')
            image = record.get("image")
            try:
                data = None if image is None else _image_bytes(image, jsonl_path.parent, where)
            except InvalidImage as exc:
                raise CatalogError(f"{where}: {exc.detail}") from exc
            yield SourceItem(number, item_id, title, tuple(dict.fromkeys(tags)), data)


def _batches(items: Iterator[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    batch: list[SourceItem] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _embed_batch(
    batch: list[SourceItem], encoder: OpenClipModel, weights: tuple[float, float], where: Path
) -> np.ndarray:
    """Fused float16 ``[B, D]`` rows: title (text tower) + image (image tower)."""
    from prism.kernels.ops import fuse_modalities

    texts = encoder.encode_texts([item.title for item in batch])
    images = torch.zeros_like(texts)
    with_image = [i for i, item in enumerate(batch) if item.image is not None]
    if with_image:
        tensors = []
        for i in with_image:
            try:
                tensors.append(encoder.preprocess_image(batch[i].image or b""))
            except InvalidImage as exc:
                raise CatalogError(f"{where}:{batch[i].line}: {exc.detail}") from exc
        images[with_image] = encoder.encode_images(torch.stack(tensors))
    mask = torch.ones(len(batch), 2, dtype=torch.bool, device=texts.device)
    mask[:, 1] = False
    mask[with_image, 1] = True
    fused = fuse_modalities([texts, images], list(weights), mask, out_dtype=torch.float16)
    return fused.cpu().numpy()


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


@dataclass(frozen=True)
class BuildReport:
    folder: Path
    count: int
    dim: int
    with_image: int
    seconds: float


def build_catalog(
    jsonl_path: Path,
    out_dir: Path,
    encoder: OpenClipModel,
    progress: bool = True,
    *,
    text_weight: float = 1.0,
    image_weight: float = 1.0,
    batch_size: int = 256,
) -> BuildReport:
    """Embed every item of ``jsonl_path`` with a loaded ``encoder`` into ``out_dir``.

    An item's vector is ``fuse_modalities`` of its title (text tower) and image (image tower)
    with ``text_weight`` / ``image_weight``; items without an image use their title alone.
    The folder is written beside ``out_dir`` and swapped in when complete, so a failed build
    leaves the previous catalogue intact. Raises :class:`CatalogError` on a bad line.
    """
    started = time.perf_counter()
    jsonl_path, out_dir = Path(jsonl_path), Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    total = _count_lines(jsonl_path)
    chunks: list[np.ndarray] = []
    tag_counts: dict[str, int] = {}
    with_image = 0
    bar = progress_bar(total=total, desc="embed catalogue", unit="item", enabled=progress)
    with (staging / ITEMS_FILE).open("w", encoding="utf-8") as items_out, bar:
        for batch in _batches(read_source(jsonl_path), batch_size):
            chunks.append(_embed_batch(batch, encoder, (text_weight, image_weight), jsonl_path))
            for item in batch:
                row = {"id": item.id, "title": item.title, "tags": list(item.tags)}
                items_out.write(json.dumps(row, ensure_ascii=False) + "\n")
                for tag in item.tags:
                    tag_counts[tag] = tag_counts.get(tag, 0) + 1
                with_image += item.image is not None
            bar.update(len(batch))
    if not chunks:
        shutil.rmtree(staging)
        raise CatalogError(f"{jsonl_path}: the catalogue has no items")
    matrix = np.concatenate(chunks)
    np.save(staging / EMBEDDINGS_FILE, matrix)
    seconds = time.perf_counter() - started
    encoder_info = encoder.describe()
    if "weights" in encoder_info:  # relative, so the models folder can move as a whole
        encoder_info["weights"] = _relative(Path(encoder_info["weights"]), out_dir)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "count": int(matrix.shape[0]),
        "dim": int(matrix.shape[1]),
        "dtype": "float16",
        "encoder": encoder_info,
        "fusion": {"text": text_weight, "image": image_weight},
        "items_with_image": with_image,
        "tags": dict(sorted(tag_counts.items())),
        "source": str(jsonl_path),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 2),
    }
    (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return BuildReport(out_dir, int(matrix.shape[0]), int(matrix.shape[1]), with_image, seconds)


def _relative(path: Path, start: Path) -> str:
    import os

    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive (Windows): keep it absolute
        return str(path.resolve())


@dataclass(frozen=True)
class Catalog:
    """A built catalogue, loaded: row ``i`` of ``embeddings`` is item ``ids[i]``."""

    folder: Path
    ids: list[str]
    titles: list[str]
    tags: list[tuple[str, ...]]
    embeddings: np.ndarray
    meta: dict[str, Any]

    @classmethod
    def load(cls, folder: Path) -> Catalog:
        """Read and cross-check a catalogue folder; raises :class:`CatalogError`."""
        meta = read_meta(folder)
        ids, titles, tags = [], [], []
        with (folder / ITEMS_FILE).open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                ids.append(row["id"])
                titles.append(row["title"])
                tags.append(tuple(row.get("tags", ())))
        embeddings = np.load(folder / EMBEDDINGS_FILE, allow_pickle=False)
        if embeddings.shape != (meta["count"], meta["dim"]) or len(ids) != meta["count"]:
            raise CatalogError(
                f"{folder}: embeddings {embeddings.shape}, {len(ids)} items and meta.json "
                f"({meta['count']} x {meta['dim']}) disagree; rebuild the catalogue"
            )
        return cls(folder, ids, titles, tags, embeddings, meta)

    def encoder_weights(self) -> Path | None:
        """Absolute path of the encoder weights recorded at build time, if any."""
        weights = self.meta["encoder"].get("weights")
        return None if weights is None else (self.folder / weights).resolve()


def read_meta(folder: Path) -> dict[str, Any]:
    """``meta.json`` of a built catalogue, checked for format and version."""
    path = folder / META_FILE
    try:
        meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CatalogError(f"{folder} is not a built catalogue (no {META_FILE})") from exc
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise CatalogError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} catalogue")
    return meta
