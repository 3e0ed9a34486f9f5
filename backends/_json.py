"""Strict JSON for what callers send: standard JSON only, valid Unicode only.

Python's ``json`` takes ``NaN``/``Infinity`` and unpaired surrogate escapes (``"\\ud800"``),
which then fail far from the parser (a surrogate cannot be encoded to UTF-8; an infinity
overflows an ``int``). msgspec refuses both at parse time, and a document nested past the
recursion limit becomes the same :class:`ValueError`, so a caller's body is a 400, never a 500.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()
#: a UTF-16 surrogate escape; with a valid pair msgspec decodes it, so a failure with one in
#: the text is (nearly always) an unpaired one
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def loads(data: bytes | str) -> Any:
    """Parse one JSON document; :class:`ValueError` (with the parser's reason) otherwise."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        if _SURROGATE.search(raw):  # msgspec's own words for this are "truncated"
            raise ValueError("a \\ud800-\\udfff escape without its pair is not Unicode") from exc
        raise ValueError(str(exc)) from exc
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


__all__ = ["loads"]
