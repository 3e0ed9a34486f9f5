"""Run the CPU cases through the Triton kernels in Triton's interpreter; save the results.

Usage: ``python tests/kernels/_interpret_worker.py OUT.pt``. Started by
``test_kernels_interpret.py`` in a fresh process, because ``TRITON_INTERPRET=1`` only works
when set before triton is imported and must not leak into the rest of the test session.
Writes ``{case id: {"inputs": ..., "output": ...} or {"error": traceback}}`` with
``torch.save``; the calling test does the comparing.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

os.environ["TRITON_INTERPRET"] = "1"
os.environ["PRISM_KERNELS"] = "triton"

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests.kernels import _cases  # noqa: E402


def _record_rescoring(paths: list[str]) -> None:
    """Note in ``paths`` which of score_topk's rescoring strategies and its floor pre-pass
    (``_floor``) run."""
    from prism.kernels import _rescoring, _scoring

    for module, name in (
        (_rescoring, "rescore_chunks"),
        (_rescoring, "rescan_queries"),
        (_scoring, "_floor"),
    ):
        original = getattr(module, name)

        def wrapped(*args: Any, _original: Any = original, _name: str = name) -> Any:
            paths.append(_name)
            return _original(*args)

        setattr(module, name, wrapped)


def main(out_path: str, wanted: list[str]) -> int:
    torch.set_num_threads(1)  # many tiny numpy ops: threads only add overhead
    paths: list[str] = []
    _record_rescoring(paths)
    results: dict[str, dict[str, object]] = {}
    for case in _cases.CPU_CASES:
        if wanted and case.id not in wanted:
            continue
        inputs = _cases.inputs_for(case, "cpu")
        paths.clear()
        try:
            output = _cases.run(case, inputs, "triton")
            results[case.id] = {"inputs": inputs, "output": output, "paths": list(paths)}
        except Exception:
            results[case.id] = {"error": traceback.format_exc()}
    torch.save(results, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
