"""KServe v2 / Open Inference Protocol tensors, and Prism's conventions for them.

One module owns both directions, so the KServe door (gateway and ``prism worker``) and the
remote :class:`~backends._kserve.KServeBackend` can never disagree.

Request (``POST /v2/models/{m}[/versions/{v}]/infer``), one row per input:

- ``text``: BYTES [n] or [n, 1], UTF-8 text;
- ``image``: BYTES [n] or [n, 1], an encoded image file (PNG/JPEG/...): a base64 string in
  JSON; raw bytes (or base64) with the binary extension;
- ``user``: BYTES [n] or [n, 1], a user id (recommend);
- ``history``: BYTES [n], each a JSON array of item ids (``["item-1", "item-7"]``), or
  BYTES [n, h] with one item id per column.

An empty element means "this row has no such input" (so rows may mix modalities); every
row needs at least one. Request ``parameters``: ``task`` (embed | classify | recommend;
when absent: the model's only task, else the task of the outputs named, else classify when
``labels`` are given, else embed), ``labels`` (list, or a JSON array in a string), ``top_k``; Prism-only
``unit`` (experiment unit) and ``cache`` (use | bypass | refresh); other keys go to the
model as parameters. Triton's reserved keys (``sequence_*``, ``priority``, ``timeout``,
``headers``) are ignored.

Response outputs by task: embed -> ``embedding`` FP32 [n, dim]; classify -> ``label`` BYTES
[n, L] + ``score`` FP32 [n, L] (sorted by score); recommend -> ``item`` BYTES [n, k] +
``score`` FP32 [n, k]. Rows with fewer labels/items are padded with ``""`` and 0.

Triton's binary tensor data extension (:mod:`backends._tensors`) is supported both ways:
inputs may be binary; outputs are sent binary when the request asks
(``outputs[].parameters.binary_data`` or ``parameters.binary_data_output``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence

import numpy as np

from . import _json as strict_json
from ._base import InputItem, Modality, Output, Task
from ._tensors import (
    Tensor,
    TensorFormatError,
    read_tensors,
    split_body,
    write_tensors,
)

INPUT_NAMES = ("text", "image", "user", "history")
#: rows one request may carry here (the gateway's own ``max_inputs`` is usually lower)
MAX_ROWS = 65_536
OUTPUTS_BY_TASK: dict[Task, tuple[str, ...]] = {
    Task.EMBED: ("embedding",),
    Task.CLASSIFY: ("label", "score"),
    Task.RECOMMEND: ("item", "score"),
}
#: request parameters that steer Prism rather than the model
CONTROL_PARAMETERS = frozenset(
    {"task", "unit", "cache", "binary_data_output", "sequence_id", "sequence_start"}
    | {"sequence_end", "priority", "timeout", "headers"}
)


# --- requests: rows of inputs <-> tensors ---------------------------------------------------


def _image(raw: bytes, row: int, binary: bool) -> bytes:
    """JSON images are base64; binary ones are the file itself unless they are base64 text."""
    if binary:
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return raw  # an image file is never all base64 alphabet: this is the file
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TensorFormatError(f"input 'image'[{row}] is not valid base64") from exc


def _history(t: Tensor, n: int) -> list[tuple[str, ...] | None]:
    assert isinstance(t.data, list)
    if len(t.shape) == 2:
        width = t.shape[1]
        rows = [t.data[r * width : (r + 1) * width] for r in range(n)]
        try:
            return [tuple(x.decode() for x in row if x) or None for row in rows]
        except UnicodeDecodeError as exc:
            raise TensorFormatError("input 'history': an id is not valid UTF-8") from exc
    out: list[tuple[str, ...] | None] = []
    for r, raw in enumerate(t.data):
        if not raw:
            out.append(None)
            continue
        try:
            ids = strict_json.loads(raw)
        except ValueError as exc:
            raise TensorFormatError(f"input 'history'[{r}] is not a JSON array of ids") from exc
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise TensorFormatError(f"input 'history'[{r}] is not a JSON array of ids")
        out.append(tuple(ids))
    return out


def tensors_to_items(tensors: Sequence[Tensor], binary_names: frozenset[str]) -> list[InputItem]:
    """Input tensors -> one :class:`InputItem` per row (door side)."""
    if not tensors:
        raise TensorFormatError("the request has no inputs")
    by_name: dict[str, Tensor] = {}
    for t in tensors:
        if t.name not in INPUT_NAMES:
            raise TensorFormatError(
                f"unknown input {t.name!r}; expected some of: {', '.join(INPUT_NAMES)}"
            )
        if t.name in by_name:
            raise TensorFormatError(f"input {t.name!r} given twice")
        if t.datatype != "BYTES":
            raise TensorFormatError(f"input {t.name!r} must be BYTES, got {t.datatype}")
        wide = t.name == "history"
        if not (len(t.shape) == 1 or (len(t.shape) == 2 and (wide or t.shape[1] == 1))):
            want = "[n] or [n, h]" if wide else "[n] or [n, 1]"
            raise TensorFormatError(f"input {t.name!r} must have shape {want}, got {list(t.shape)}")
        by_name[t.name] = t
    sizes = {t.rows for t in by_name.values()}
    if len(sizes) != 1:
        raise TensorFormatError(f"inputs disagree on the number of rows: {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise TensorFormatError("the inputs have no rows")
    if n > MAX_ROWS:  # before building anything per row: a [10**9, 0] shape costs no bytes
        raise TensorFormatError(f"{n} rows; at most {MAX_ROWS} per request")

    def column(name: str) -> list[bytes] | None:
        t = by_name.get(name)
        return t.data if t is not None and isinstance(t.data, list) else None

    text, image, user = column("text"), column("image"), column("user")
    history = _history(by_name["history"], n) if "history" in by_name else [None] * n
    items: list[InputItem] = []
    for r in range(n):
        try:
            item = InputItem(
                text=text[r].decode() if text and text[r] else None,
                image=_image(image[r], r, "image" in binary_names) if image and image[r] else None,
                user=user[r].decode() if user and user[r] else None,
                history=history[r],
            )
        except UnicodeDecodeError as exc:
            raise TensorFormatError(f"row {r}: text is not valid UTF-8") from exc
        if item.text is None and item.image is None and item.user is None and item.history is None:
            raise TensorFormatError(f"row {r} carries no input (every element is empty)")
        items.append(item)
    return items


def items_to_tensors(items: Sequence[InputItem]) -> list[Tensor]:
    """Rows of inputs -> JSON-safe BYTES tensors (remote backend side)."""
    used = frozenset().union(*(it.modalities for it in items))
    n = len(items)
    tensors: list[Tensor] = []
    if Modality.TEXT in used:
        tensors.append(Tensor("text", "BYTES", (n,), [(it.text or "").encode() for it in items]))
    if Modality.IMAGE in used:
        images = [base64.b64encode(it.image) if it.image else b"" for it in items]
        tensors.append(Tensor("image", "BYTES", (n,), images))
    if Modality.USER in used:
        tensors.append(Tensor("user", "BYTES", (n,), [(it.user or "").encode() for it in items]))
        hist = [json.dumps(list(it.history)).encode() if it.history else b"" for it in items]
        tensors.append(Tensor("history", "BYTES", (n,), hist))
    return tensors


# --- responses: outputs <-> tensors ---------------------------------------------------------


def _ragged(rows: Sequence[Sequence[tuple[str, float]]], names: tuple[str, str]) -> list[Tensor]:
    n, width = len(rows), max((len(r) for r in rows), default=0)
    ids: list[bytes] = []
    scores = np.zeros((n, width), dtype=np.float32)
    for r, row in enumerate(rows):
        ids.extend(i.encode() for i, _ in row)
        ids.extend(b"" for _ in range(width - len(row)))
        scores[r, : len(row)] = [s for _, s in row]
    return [
        Tensor(names[0], "BYTES", (n, width), ids),
        Tensor(names[1], "FP32", (n, width), scores.ravel()),
    ]


def outputs_to_tensors(task: Task, outputs: Sequence[Output]) -> list[Tensor]:
    """Backend outputs -> response tensors (door side)."""
    if task is Task.EMBED:
        vectors = [np.asarray(o["embedding"], dtype=np.float32) for o in outputs]
        # one row (most requests) needs no stacking: a [1, dim] view of it
        one = len(vectors) == 1 and vectors[0].ndim == 1
        matrix = vectors[0].reshape(1, -1) if one else np.stack(vectors)
        return [Tensor("embedding", "FP32", matrix.shape, matrix.ravel())]
    if task is Task.CLASSIFY:
        rows = [[(x["label"], float(x["score"])) for x in o["labels"]] for o in outputs]
        return _ragged(rows, ("label", "score"))
    rows = [[(x["id"], float(x["score"])) for x in o["items"]] for o in outputs]
    return _ragged(rows, ("item", "score"))


def tensors_to_outputs(task: Task, tensors: Sequence[Tensor], n: int) -> list[Output]:
    """Response tensors -> one output per row (remote backend side); checks every shape."""
    by_name = {t.name: t for t in tensors}
    missing = [name for name in OUTPUTS_BY_TASK[task] if name not in by_name]
    if missing:
        raise TensorFormatError(f"the response lacks output {missing[0]!r}")
    if task is Task.EMBED:
        t = by_name["embedding"]
        if len(t.shape) != 2 or t.shape[0] != n or not isinstance(t.data, np.ndarray):
            raise TensorFormatError(f"'embedding' has shape {list(t.shape)}, expected [{n}, dim]")
        matrix = t.data.astype(np.float32, copy=False).reshape(t.shape)
        if not np.isfinite(matrix).all():  # NaN/inf would be cached and served as null
            raise TensorFormatError("'embedding' has non-finite values")
        return [{"embedding": np.ascontiguousarray(row)} for row in matrix]
    ids_name = "label" if task is Task.CLASSIFY else "item"
    ids, scores = by_name[ids_name], by_name["score"]
    if (
        len(ids.shape) != 2
        or ids.shape[0] != n
        or ids.shape != scores.shape
        or not isinstance(ids.data, list)
        or not isinstance(scores.data, np.ndarray)
    ):
        raise TensorFormatError(
            f"{ids_name!r}/'score' have shapes {list(ids.shape)}/{list(scores.shape)}, "
            f"expected [{n}, k] both"
        )
    width = ids.shape[1]
    values = scores.data.astype(np.float64).tolist()
    out: list[Output] = []
    for r in range(n):
        pairs = [
            (ids.data[r * width + c].decode("utf-8", "replace"), values[r * width + c])
            for c in range(width)
            if ids.data[r * width + c]
        ]
        if task is Task.CLASSIFY:
            out.append({"labels": [{"label": i, "score": s} for i, s in pairs]})
        else:
            out.append({"items": [{"id": i, "score": s} for i, s in pairs], "ignored_history": []})
    return out


__all__ = [
    "CONTROL_PARAMETERS",
    "INPUT_NAMES",
    "OUTPUTS_BY_TASK",
    "Tensor",
    "TensorFormatError",
    "items_to_tensors",
    "outputs_to_tensors",
    "read_tensors",
    "split_body",
    "tensors_to_items",
    "tensors_to_outputs",
    "write_tensors",
]
