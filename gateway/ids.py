"""Random ids for answers, leases and anonymous units: the OS's CSPRNG, read in blocks.

``secrets.token_hex`` makes one ``getrandom`` system call per id: measured with py-spy on a
remote miss through the KServe door, that call was 3% of the request's CPU. These ids come
from the same source (``os.urandom``) with one call per :data:`BLOCK_IDS` ids, so they stay
unguessable (a feedback id is what lets a caller score an answer). A forked child starts
with a fresh block, so two processes never hand out the ids of one block.
"""

from __future__ import annotations

import os
import threading

#: ids per ``os.urandom`` call
BLOCK_IDS = 256
#: hex digits per id (64 random bits, as ``secrets.token_hex(8)``)
ID_HEX = 16

_block = ""
_used = 0
#: the event loop takes ids, and so may a thread of the process: no id is handed out twice
_lock = threading.Lock()


def random_hex() -> str:
    """16 random hex digits (64 bits from the OS's CSPRNG)."""
    global _block, _used
    with _lock:
        if _used >= len(_block):
            _block = os.urandom(BLOCK_IDS * ID_HEX // 2).hex()
            _used = 0
        start = _used
        _used = start + ID_HEX
        return _block[start : start + ID_HEX]


def _forget_block() -> None:
    global _block, _used, _lock
    _block, _used = "", 0
    _lock = threading.Lock()  # a lock held by a thread of the parent stays held in the child


os.register_at_fork(after_in_child=_forget_block)

__all__ = ["random_hex"]
