"""The KServe v2 / Open Inference Protocol wire format: tensors in JSON, or binary after it.

A body is a JSON document, optionally followed by raw tensor bytes (Triton's binary tensor
data extension): the ``Inference-Header-Content-Length`` header gives the JSON's length, and
each binary tensor says its ``parameters.binary_data_size``, in order. BYTES elements in
binary form are a 4-byte little-endian length followed by the bytes; numbers are
little-endian. Prism's conventions for which tensors mean what live in :mod:`backends._v2`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _json as strict_json

NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
#: the binary extension's byte order (little-endian), each dtype made once
LITTLE_ENDIAN = {name: np.dtype(t).newbyteorder("<") for name, t in NUMPY_DTYPES.items()}


class TensorFormatError(ValueError):
    """A v2 body that breaks the protocol or Prism's conventions; the message says where."""


@dataclass
class Tensor:
    """One named tensor. ``data`` is flat: a list of bytes for BYTES, else a numpy array."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[bytes] | np.ndarray

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1


# --- the body: JSON header + binary tail ----------------------------------------------------


def split_body(body: bytes, header_length: str | int | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header (a dict) and the binary tail of a v2 request or response body."""
    if not body.strip():
        raise TensorFormatError("the request body is empty; send a JSON object")
    if header_length is None or header_length == "":
        head, tail = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError as exc:
            raise TensorFormatError("Inference-Header-Content-Length is not a number") from exc
        if not 0 < n <= len(body):
            raise TensorFormatError(
                f"Inference-Header-Content-Length {n} does not fit a {len(body)}-byte body"
            )
        head, tail = body[:n], body[n:]
    try:
        doc = strict_json.loads(head)
    except ValueError as exc:
        raise TensorFormatError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise TensorFormatError("body must be a JSON object")
    return doc, tail


def _unpack_bytes(buf: bytes, name: str) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos < len(buf):
        if pos + 4 > len(buf):
            raise TensorFormatError(f"tensor {name!r}: truncated BYTES element length")
        (size,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if pos + size > len(buf):
            raise TensorFormatError(f"tensor {name!r}: BYTES element runs past the data")
        out.append(buf[pos : pos + size])
        pos += size
    return out


def _pack_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _flatten(data: Any) -> list[Any]:
    """Nested lists in row-major order; iterative, so any nesting the JSON parser took is fine."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise TensorFormatError(f"tensor {name!r}: shape must be a list of non-negative ints")
    return tuple(raw)


def read_tensors(entries: Any, tail: bytes, *, kind: str = "input") -> list[Tensor]:
    """Parse the ``inputs`` (or ``outputs``) list of a v2 body, taking binary data in order."""
    if not isinstance(entries, list):
        raise TensorFormatError(f"'{kind}s' must be a list of tensors")
    tensors: list[Tensor] = []
    offset = 0
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise TensorFormatError(f"{kind}s[{i}] must be an object with a 'name'")
        name = entry["name"]
        datatype = entry.get("datatype")
        if not isinstance(datatype, str) or (datatype != "BYTES" and datatype not in NUMPY_DTYPES):
            raise TensorFormatError(f"{kind} {name!r}: unknown datatype {datatype!r}")
        shape = _shape(entry.get("shape"), name)
        count = math.prod(shape)
        params = entry.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        data: list[bytes] | np.ndarray
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(tail):
                raise TensorFormatError(f"{kind} {name!r}: binary_data_size exceeds the body")
            chunk = tail[offset : offset + size]
            offset += size
            if datatype == "BYTES":
                data = _unpack_bytes(chunk, name)
            else:
                dtype = LITTLE_ENDIAN[datatype]
                if size % dtype.itemsize:
                    raise TensorFormatError(
                        f"{kind} {name!r}: {size} bytes is not whole {datatype}"
                    )
                data = np.frombuffer(chunk, dtype=dtype).astype(NUMPY_DTYPES[datatype])
        elif "data" in entry:
            if not isinstance(entry["data"], list):
                raise TensorFormatError(f"{kind} {name!r}: 'data' must be a list")
            flat = _flatten(entry["data"])
            if datatype == "BYTES":
                if not all(isinstance(x, str) for x in flat):
                    raise TensorFormatError(f"{kind} {name!r}: BYTES data must be strings")
                try:
                    data = [x.encode() for x in flat]
                except UnicodeEncodeError as exc:  # a lone surrogate escape, "\ud800"
                    raise TensorFormatError(
                        f"{kind} {name!r}: a string is not valid Unicode"
                    ) from exc
            else:
                try:
                    data = np.asarray(flat, dtype=NUMPY_DTYPES[datatype])
                except (TypeError, ValueError, OverflowError) as exc:
                    raise TensorFormatError(f"{kind} {name!r}: data is not {datatype}") from exc
        else:
            raise TensorFormatError(f"{kind} {name!r} has no 'data'")
        if len(data) != count:
            raise TensorFormatError(
                f"{kind} {name!r}: shape {list(shape)} needs {count} elements, got {len(data)}"
            )
        tensors.append(Tensor(name, datatype, shape, data))
    return tensors


def write_tensors(
    tensors: Sequence[Tensor], binary: Mapping[str, bool]
) -> tuple[list[dict[str, Any]], bytes]:
    """Tensors as v2 JSON entries plus the binary tail for those with ``binary[name]``."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for t in tensors:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if binary.get(t.name, False):
            if isinstance(t.data, np.ndarray):
                raw = t.data.astype(t.data.dtype.newbyteorder("<"), copy=False).tobytes()
            else:
                raw = _pack_bytes(t.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif isinstance(t.data, np.ndarray):
            entry["data"] = t.data.tolist()
        else:
            entry["data"] = [b.decode("utf-8", "replace") for b in t.data]
        entries.append(entry)
    return entries, b"".join(chunks)
