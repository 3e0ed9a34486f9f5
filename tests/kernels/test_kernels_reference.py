"""The torch references (the spec and the CPU path) against independent float64 arithmetic,
torch's own embedding_bag and topk, and each other across input forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import prism.kernels.ops as kernels
from prism.kernels import _keys, _reference
from tests.kernels import _cases


def _naive_fuse(embs: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The formula, one row at a time, in float64."""
    count, rows, dim = embs.shape
    out = torch.zeros(rows, dim, dtype=torch.float64)
    for b in range(rows):
        w = [float(weights[b, m]) if mask[b, m] else 0.0 for m in range(count)]
        if sum(w) == 0:
            continue
        acc = torch.zeros(dim, dtype=torch.float64)
        for m in range(count):
            if mask[b, m]:
                x = embs[m, b].double()
                acc += w[m] / sum(w) * x / max(x.norm().item(), 1e-12)
        out[b] = acc / max(acc.norm().item(), 1e-12)
    return out


def test_fuse_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(1)
    embs = torch.randn(3, 6, 10, generator=g)
    weights = torch.rand(6, 3, generator=g)
    mask = torch.rand(6, 3, generator=g) > 0.4
    mask[2] = False
    out = kernels.fuse_modalities(embs, weights, mask, backend="reference")
    torch.testing.assert_close(out.double(), _naive_fuse(embs, weights, mask), rtol=1e-6, atol=1e-6)
    assert (out[2] == 0).all()


def test_fuse_input_forms_agree() -> None:
    g = torch.Generator().manual_seed(2)
    embs = torch.randn(2, 4, 5, generator=g)
    stacked = kernels.fuse_modalities(embs, torch.tensor([0.3, 0.7]), backend="reference")
    listed = kernels.fuse_modalities(list(embs), [0.3, 0.7], backend="reference")
    per_row = kernels.fuse_modalities(embs, torch.tensor([[0.3, 0.7]] * 4), backend="reference")
    # Only the direction of the weighted sum matters, so scaled weights give the same rows.
    scaled = kernels.fuse_modalities(embs, [3.0, 7.0], backend="reference")
    for other in (listed, per_row, scaled):
        torch.testing.assert_close(other, stacked)
    torch.testing.assert_close(stacked.norm(dim=1), torch.ones(4))


def test_fuse_zero_weights_and_absent_nan_give_zero_or_ignore() -> None:
    embs = torch.randn(2, 3, 4)
    embs[1, 0] = float("nan")
    mask = torch.tensor([[True, False], [True, True], [True, True]])
    out = kernels.fuse_modalities(embs, torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]), mask)
    torch.testing.assert_close(out[0], F.normalize(embs[0, 0], dim=0))  # NaN slot never read
    assert (out[1] == 0).all()  # present, but weights sum to 0
    torch.testing.assert_close(out[2], F.normalize(embs[0, 2], dim=0))


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("include_last_offset", [False, True])
def test_pool_matches_torch_embedding_bag(mode: str, include_last_offset: bool) -> None:
    g = torch.Generator().manual_seed(3)
    table = torch.randn(40, 7, generator=g)
    indices = torch.randint(0, 40, (20,), generator=g)
    offsets = torch.tensor([0, 0, 4, 9, 9, 15] + ([20] if include_last_offset else []))
    weights = torch.rand(20, generator=g) if mode == "sum" else None
    ours = kernels.pooled_embedding_bag(
        table, indices, offsets, weights, mode=mode, include_last_offset=include_last_offset
    )
    theirs = F.embedding_bag(
        indices,
        table,
        offsets,
        mode=mode,
        per_sample_weights=weights,
        include_last_offset=include_last_offset,
    )
    torch.testing.assert_close(ours, theirs)
    assert (ours[0] == 0).all()  # empty bag


def test_pool_weighted_mean_normalized_int32_and_fixed_length() -> None:
    g = torch.Generator().manual_seed(4)
    table = torch.randn(10, 3, generator=g)
    idx = torch.randint(0, 10, (4, 3), generator=g, dtype=torch.int32)
    w = torch.rand(4, 3, generator=g)
    out = kernels.pooled_embedding_bag(table, idx, None, w, mode="mean", normalize=True)
    expected = (table[idx.long()] * w[..., None]).sum(1) / 3
    torch.testing.assert_close(out, F.normalize(expected, dim=1))


def test_history_is_fusion_with_the_pooled_bags() -> None:
    g = torch.Generator().manual_seed(5)
    table = torch.randn(30, 6, generator=g)
    indices = torch.randint(0, 30, (9,), generator=g)
    offsets = torch.tensor([0, 4, 4])  # bag 1 is empty: history absent there
    embs = torch.randn(1, 3, 6, generator=g)
    out = kernels.fuse_with_history(embs, [1.0, 2.0], table, indices, offsets)
    pooled = F.embedding_bag(indices, table, offsets, mode="sum")
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    expected = kernels.fuse_modalities(torch.stack([embs[0], pooled]), [1.0, 2.0], mask)
    torch.testing.assert_close(out, expected)


def test_keys_roundtrip_and_order() -> None:
    scores = torch.tensor([1.5, -0.0, 0.0, -2.0, float("inf"), 3e-39, -1e30, 1.5, float("-inf")])
    index = torch.arange(scores.numel())
    keys = _keys.encode(scores, index)
    back_scores, back_index = _keys.decode(keys)
    finite = ~torch.isneginf(scores)
    torch.testing.assert_close(back_scores[finite], (scores + 0.0)[finite])  # -0.0 -> 0.0
    assert torch.equal(back_index[finite], index[finite])
    assert back_index[-1] == -1 and torch.isneginf(back_scores[-1])
    # Descending keys = score descending, then index ascending.
    order = torch.sort(keys, descending=True).indices.tolist()
    assert order == [4, 0, 7, 5, 1, 2, 3, 6, 8]


def test_topk_reference_equals_torch_topk_on_distinct_integers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = torch.Generator().manual_seed(6)
    q, cat = _cases.distinct_integer_problem(g, torch.device("cpu"), 5, 1000, 24, torch.float32)
    # Several catalogue chunks, so the running merge is exercised too.
    monkeypatch.setattr(_reference, "_SCORE_CHUNK_ELEMENTS", 5 * 64)
    scores, index = kernels.score_topk(q, cat, 17)
    dense = torch.topk(q @ cat.T, 17, dim=1)
    assert torch.equal(index, dense.indices)
    assert torch.equal(scores, dense.values)


def test_topk_ties_go_to_the_lower_index() -> None:
    q = torch.ones(1, 2)
    cat = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [0.5, 0.5], [1.0, 0.0]])
    scores, index = kernels.score_topk(q, cat, 4)
    assert index.tolist() == [[2, 0, 1, 3]]
    assert scores.tolist() == [[4.0, 1.0, 1.0, 1.0]]


def test_topk_exclusion_forms_agree_and_pad() -> None:
    g = torch.Generator().manual_seed(7)
    q, cat = torch.randn(3, 4, generator=g), torch.randn(6, 4, generator=g)
    listed = [[0, 1, 2], [], [5, 5, 99]]
    forms = [
        listed,
        (torch.tensor([0, 1, 2, 5, 5, 99]), torch.tensor([0, 3, 3])),
        (torch.tensor([0, 1, 2, 5, 5, 99]), torch.tensor([0, 3, 3, 6])),
        torch.tensor([[0, 1, 2], [-1, -1, -1], [5, 5, 99]]),
    ]
    results = [kernels.score_topk(q, cat, 5, exclude=f) for f in forms]
    for scores, index in results[1:]:
        assert torch.equal(index, results[0][1]) and torch.equal(scores, results[0][0])
    scores, index = results[0]
    assert index[0, 3:].tolist() == [-1, -1] and torch.isneginf(scores[0, 3:]).all()
    assert set(index[0, :3].tolist()) == {3, 4, 5}
    assert 5 not in index[2].tolist() and (index[1] >= 0).all()


def test_topk_bias_scale_and_query_rounding() -> None:
    g = torch.Generator().manual_seed(8)
    q = torch.randn(2, 8, generator=g)
    cat = torch.randn(30, 8, generator=g).bfloat16()
    bias = torch.randn(30, generator=g)
    scores, index = kernels.score_topk(q, cat, 30, scale=0.25, bias=bias)
    dense = 0.25 * (q.bfloat16().float() @ cat.float().T) + bias
    torch.testing.assert_close(scores, dense.gather(1, index))
    assert torch.equal(scores, scores.sort(dim=1, descending=True).values)
    assert sorted(index[0].tolist()) == list(range(30))


def test_k_zero_and_k_larger_than_catalogue() -> None:
    q, cat = torch.randn(2, 3), torch.randn(4, 3)
    scores, index = kernels.score_topk(q, cat, 0)
    assert scores.shape == index.shape == (2, 0)
    scores, index = kernels.score_topk(q, cat, 6)
    assert (index[:, 4:] == -1).all() and math.isinf(scores[0, 5].item())


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: kernels.fuse_modalities(torch.randn(2, 3), [1.0]), ValueError),
        (lambda: kernels.fuse_modalities(torch.randn(2, 3, 4), [1.0, 1.0, 1.0]), ValueError),
        (lambda: kernels.fuse_modalities(torch.randn(2, 3, 4).long(), [1.0, 1.0]), TypeError),
        (
            lambda: kernels.fuse_modalities([torch.randn(3, 4), torch.randn(3, 5)], [1, 1]),
            ValueError,
        ),
        (
            lambda: kernels.pooled_embedding_bag(torch.randn(5, 2), torch.tensor([1.0]), None),
            TypeError,
        ),
        (
            lambda: kernels.pooled_embedding_bag(torch.randn(5, 2), torch.tensor([1]), None),
            ValueError,
        ),
        (
            lambda: kernels.pooled_embedding_bag(
                torch.randn(5, 2),
                torch.tensor([1]),
                torch.tensor([0]),
                mode="max",  # type: ignore[arg-type]
            ),
            ValueError,
        ),
        (lambda: kernels.score_topk(torch.randn(2, 3), torch.randn(5, 4), 1), ValueError),
        (lambda: kernels.score_topk(torch.randn(2, 3), torch.randn(5, 3), -1), ValueError),
        (
            lambda: kernels.score_topk(torch.randn(2, 3), torch.randn(5, 3), 1, exclude=[[1]]),
            ValueError,
        ),
        (
            lambda: kernels.score_topk(
                torch.randn(2, 3), torch.randn(5, 3), 1, bias=torch.randn(4)
            ),
            ValueError,
        ),
    ],
)
def test_bad_arguments_are_rejected(call: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()  # type: ignore[operator]
