"""Argument normalisation shared by both backends, and the launcher's per-key config cache."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import prism.kernels.ops as kernels
from prism.kernels import _inputs
from prism.kernels._dispatch import triton_installed

CUDA = torch.device("cuda")  # only consulted as a device type: no GPU needed


def test_host_weights_become_float32_scalars() -> None:
    # A third is not a float32: the scalars must equal what a float32 tensor would hold.
    w = _inputs.modality_weights([1, 1 / 3, 2.5], 4, 3, CUDA)
    assert w == tuple(torch.tensor([1, 1 / 3, 2.5], dtype=torch.float32).tolist())
    assert _inputs.modality_weights(torch.tensor([0.5, 0.5]), 4, 2, CUDA) == (0.5, 0.5)


def test_device_and_per_row_weights_stay_tensors() -> None:
    per_row = torch.rand(4, 2)
    w = _inputs.modality_weights(per_row, 4, 2, torch.device("cpu"))
    assert isinstance(w, torch.Tensor) and w.shape == (4, 2)
    with pytest.raises(ValueError, match=r"weights must be \[2\] or \[4, 2\]"):
        _inputs.modality_weights([1.0, 2.0, 3.0], 4, 2, CUDA)


def test_list_and_tensor_weights_give_the_same_fusion() -> None:
    embs = torch.randn(3, 5, 8)
    listed = kernels.fuse_modalities(embs, [0.2, 0.3, 0.5])
    tensor = kernels.fuse_modalities(embs, torch.tensor([0.2, 0.3, 0.5]))
    torch.testing.assert_close(listed, tensor, rtol=0, atol=0)


def test_fixed_length_bags_build_no_offsets() -> None:
    idx = torch.arange(12).view(3, 4)
    bags = _inputs.bags(idx, None, None, False, torch.device("cpu"))
    assert bags.offsets is None and bags.length == 4 and bags.count == 3
    assert bags.starts().tolist() == [0, 4, 8] and bags.lengths().tolist() == [4, 4, 4]


def test_exclusions_from_host_lists_drop_negative_ids() -> None:
    pairs = _inputs.exclusion_pairs([[3, -1, 7], [], [-5, 2]], 3, torch.device("cpu"))
    assert pairs is not None
    rows, items = pairs
    assert rows.tolist() == [0, 0, 2] and items.tolist() == [3, 7, 2]


def test_exclusion_tensors_keep_ids_out_of_range_and_they_mean_nothing() -> None:
    # No boolean indexing (a host sync on a GPU): negative and too-large ids stay in the pairs,
    # and every backend ignores them.
    padded = torch.tensor([[1, -1, 99], [-1, -1, 0]])
    pairs = _inputs.exclusion_pairs(padded, 2, torch.device("cpu"))
    assert pairs is not None
    rows, items = pairs
    assert rows.tolist() == [0, 0, 0, 1, 1, 1]
    assert items.tolist() == [1, -1, 99, -1, -1, 0]
    q, cat = torch.randn(2, 4), torch.randn(6, 4)
    got = kernels.score_topk(q, cat, 6, exclude=padded)
    want = kernels.score_topk(q, cat, 6, exclude=[[1], [0]])
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


@pytest.mark.skipif(not triton_installed(), reason="triton is not installed")
def test_launcher_chooses_once_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import triton

    from prism.kernels._tuning import Launcher

    launches: list[tuple[Any, ...]] = []

    class Kernel:
        arg_names = ["x"]

        def __getitem__(self, grid: tuple[int, ...]) -> Any:
            return lambda *args, **kwargs: launches.append((grid, args, kwargs))

    chosen: list[int] = []
    launcher = Launcher(Kernel(), [triton.Config({"BLOCK": 4})], triton.Config({"BLOCK": 2}))
    original = launcher._choose

    def counting(*args: Any) -> triton.Config:
        chosen.append(1)
        return original(*args)

    monkeypatch.setattr(launcher, "_choose", counting)
    for key in ("a", "a", "b", "a"):
        launcher(key, lambda meta: (meta["BLOCK"],), 7, FLAG=True)
    assert len(chosen) == 2 and len(launches) == 4
    grid, args, kwargs = launches[-1]
    assert args == (7,) and kwargs["FLAG"] is True and kwargs["BLOCK"] == grid[0]
