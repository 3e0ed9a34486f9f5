"""The Triton kernels, run by Triton's CPU interpreter, against the torch references.

The kernels run in one subprocess for the whole module (``_interpret_worker.py``) with
``TRITON_INTERPRET=1``; this process only compares. That keeps the interpreter setting out of
the rest of the test session, which may import triton for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prism.kernels._dispatch import triton_installed
from tests.kernels import _cases

WORKER = Path(__file__).with_name("_interpret_worker.py")
ROOT = WORKER.parents[2]

pytestmark = pytest.mark.skipif(not triton_installed(), reason="triton is not installed")


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    out = tmp_path_factory.mktemp("interpret") / "results.pt"
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    env.pop("PRISM_KERNELS_AUTOTUNE", None)
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"interpreter worker failed:\n{proc.stdout}\n{proc.stderr}"
    results: dict[str, Any] = torch.load(out, weights_only=False)
    return results


@pytest.mark.parametrize("case", _cases.CPU_CASES, ids=lambda c: c.id)
def test_triton_interpreted_matches_reference(
    case: _cases.Case, interpreted: dict[str, Any]
) -> None:
    result = interpreted[case.id]
    assert "error" not in result, result.get("error")
    _cases.check(case, result["inputs"], result["output"])


@pytest.mark.parametrize(
    ("case_id", "path"),
    [("topk-f32-rescore", "rescore_chunks"), ("topk-f32-rescan", "rescan_queries")],
)
def test_both_rescoring_strategies_are_exercised(
    case_id: str, path: str, interpreted: dict[str, Any]
) -> None:
    # These cases put the whole top k in the last chunks; if chunking changes so that they no
    # longer reach the strategy they are named after, the correctness tests above stop
    # covering it.
    assert interpreted[case_id]["paths"] == [path]


@pytest.mark.parametrize("case_id", _cases.FLOOR_CASES)
def test_floor_prepass_is_exercised(case_id: str, interpreted: dict[str, Any]) -> None:
    paths = interpreted[case_id]["paths"]
    assert paths[0] == "_floor"
    # A floor no candidate beats must be repaired by a rescan; a usable one needs no repair.
    assert paths[1:] == (["rescan_queries"] if case_id.endswith("violated") else [])
