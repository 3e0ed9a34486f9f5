"""The Triton kernels on a CUDA GPU at serving sizes, against the torch references."""

from __future__ import annotations

import pytest
import torch

import prism.kernels.ops as kernels
from tests.kernels import _cases

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_auto_dispatch_picks_triton_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRISM_KERNELS", raising=False)
    assert kernels.kernel_backend(torch.device("cuda")) == "triton"


@pytest.mark.parametrize("case", _cases.GPU_CASES, ids=lambda c: c.id)
def test_triton_on_gpu_matches_reference(case: _cases.Case) -> None:
    inputs = _cases.inputs_for(case, "cuda")
    output = _cases.run(case, inputs, "triton")
    torch.cuda.synchronize()
    _cases.check(case, inputs, output)


def test_score_topk_is_deterministic_on_gpu() -> None:
    case = next(c for c in _cases.GPU_CASES if c.id == "topk-bf16-1e6-k100")
    inputs = _cases.inputs_for(case, "cuda", seed=3)
    first = _cases.run(case, inputs, "triton")
    second = _cases.run(case, inputs, "triton")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_floor_prepass_runs_at_five_million_items(monkeypatch: pytest.MonkeyPatch) -> None:
    from prism.kernels import _scoring

    calls: list[int] = []
    original = _scoring._floor

    def counted(*args: object) -> object:
        calls.append(1)
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_scoring, "_floor", counted)
    case = next(c for c in _cases.GPU_CASES if c.id == "topk-bf16-5e6-floor")
    inputs = _cases.inputs_for(case, "cuda")
    _cases.check(case, inputs, _cases.run(case, inputs, "triton"))
    assert calls, "the 5e6-item cases no longer reach the floor pre-pass"
