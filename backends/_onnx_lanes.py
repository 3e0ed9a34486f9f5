"""Running an ONNX Runtime batch on several cores: one single-threaded run per core, each on a
contiguous slice of the batch's rows, instead of one run whose every operator is split across
the cores.

Why: ONNX Runtime's intra-op pool splits each of a transformer's few hundred operators across
its threads and meets at a barrier after every one. On the 2-vCPU VMs Prism is built on, the
int8 MiniLM at batch 32 made 480-490 sentences/s that way in some hours and 640-660 in others,
while two single-threaded runs side by side made 640-670 in both (each ~335 alone: the cores
themselves did not slow down, the barriers did). At batch 1 one thread is faster than two
(605 against 493 sentences/s): there is nothing to split but the barriers. A convolutional
image tower is the exception: one image ran faster on two intra-op threads (928 against 773
images/s for the demo CLIP's), so a caller may pass a session with its own threads for a
single row (``one_row``).

Sessions are made with ``intra_op_num_threads = 1``; ``InferenceSession.run`` may be called
from several threads at once on one session (ONNX Runtime documents it thread-safe), so the
weights are held once.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


def cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def session_options(ort: Any, threads: int = 1) -> Any:
    """Options for a session that runs one slice on the calling thread (``threads`` 1), or a
    single row on ``threads`` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


class BatchLanes:
    """Runs a session on up to ``lanes`` slices of a batch at once (``lanes`` 0: one per
    core); the calling thread runs the first slice itself."""

    def __init__(self, lanes: int = 0) -> None:
        self.lanes = lanes or cores()
        self._pool = (
            ThreadPoolExecutor(self.lanes - 1, thread_name_prefix="onnx-lane")
            if self.lanes > 1
            else None
        )

    def run(
        self,
        session: Any,
        output: str,
        feed: Mapping[str, np.ndarray],
        *,
        mask: str | None = None,
        one_row: Any = None,
    ) -> np.ndarray:
        """``output`` for every row of ``feed`` (arrays with the batch as their first axis),
        in row order. ``mask``: the input whose row sums are the real tokens of right-padded
        token inputs; each slice then drops the columns that are padding in all its rows (the
        model masks them out, so a row's answer does not depend on them). ``one_row``: the
        session that runs a batch of one row, when not ``session`` itself."""
        rows = len(next(iter(feed.values())))
        parts = min(self.lanes, rows)
        if parts <= 1 or self._pool is None:
            single = one_row if one_row is not None and rows == 1 else session
            return np.asarray(single.run([output], dict(feed))[0])
        bounds = np.linspace(0, rows, parts + 1).astype(int)
        slices = []
        for lo, hi in itertools.pairwise(bounds):
            part = {name: array[lo:hi] for name, array in feed.items()}
            if mask is not None:
                width = max(int(part[mask].sum(axis=1).max()), 1)
                part = {name: array[:, :width] for name, array in part.items()}
            slices.append(part)
        later = [self._pool.submit(session.run, [output], part) for part in slices[1:]]
        first = session.run([output], slices[0])[0]
        return np.concatenate([first, *(f.result()[0] for f in later)])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
