"""Compact binary encoding of model outputs for the cache.

Embeddings are stored as raw little-endian float32 (or float16) bytes, not JSON lists: a
384-d vector is 1.5 KiB instead of ~8 KiB of decimal text, and decoding is a memcpy.
Layout: ``b"PR1"`` | u32 header length | JSON header | array bytes (in header order).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgspec
import numpy as np

MAGIC = b"PR1"
_DTYPES: dict[str, np.dtype[Any]] = {"f4": np.dtype("<f4"), "f2": np.dtype("<f2")}


def encode_output(output: dict[str, Any], *, half: bool = False) -> bytes:
    header: dict[str, Any] = {}
    blobs: list[bytes] = []
    for key, value in output.items():
        if isinstance(value, np.ndarray):
            code = "f2" if half else "f4"
            arr = np.ascontiguousarray(value, dtype=_DTYPES[code])
            header[key] = {"__array__": code, "shape": list(arr.shape)}
            blobs.append(arr.tobytes())
        else:
            header[key] = value
    head = msgspec.json.encode(header)
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs)


_decode_header = msgspec.json.Decoder().decode


class CachedOutput(dict[str, Any]):
    """An output read from the cache: shared by every hit on the same entry (read-only, like
    its arrays), so its JSON is made once (``wire``, set by ``gateway/schema.py``)."""

    __slots__ = ("lists", "wire")

    def __init__(self, output: dict[str, Any]) -> None:
        super().__init__(output)
        self.wire: msgspec.Raw | None = None
        #: the JSON list of an array (float32 values), by key: what the other doors send
        self.lists: dict[str, msgspec.Raw] = {}

    def list_json(self, key: str) -> msgspec.Raw:
        """``self[key]`` (an array) as the JSON list ``.tolist()`` encodes to, made once."""
        raw = self.lists.get(key)
        if raw is None:
            values = np.asarray(self[key], dtype=np.float32).tolist()
            raw = self.lists[key] = msgspec.Raw(msgspec.json.encode(values))
        return raw


def decode_output(blob: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_output`; raises ValueError on anything else."""
    if blob[:3] != MAGIC:
        raise ValueError("not a Prism cache entry")
    (n,) = struct.unpack_from("<I", blob, 3)
    header = _decode_header(blob[7 : 7 + n])
    if not isinstance(header, dict):
        raise ValueError("not a Prism cache entry")
    offset = 7 + n
    out: dict[str, Any] = {}
    for key, value in header.items():
        if isinstance(value, dict) and "__array__" in value:
            dtype = _DTYPES[value["__array__"]]
            count = math.prod(value["shape"])  # a hit's hot path: np.prod costs ~10x more
            arr = np.frombuffer(blob, dtype=dtype, count=count, offset=offset)
            offset += count * dtype.itemsize
            # float32 entries are used in place (read-only, like every cached output)
            out[key] = arr.reshape(value["shape"]).astype(np.float32, copy=False)
        else:
            out[key] = value
    return out
