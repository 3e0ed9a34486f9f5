"""Kernel test cases shared by the interpreter worker, the CPU tests and the GPU tests.

A case builds the keyword arguments of one public kernel call; :func:`run` calls it on a chosen
backend; :func:`check` compares an output with the torch reference on the same inputs, with
tolerances per output dtype. Keeping the three steps apart lets the Triton interpreter run in a
subprocess (see ``test_kernels_interpret.py``) while the assertions run here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import prism.kernels.ops as kernels

Inputs = dict[str, Any]

#: (rtol, atol) for outputs of each dtype. float32: summation order only; 16-bit: one or two
#: units in the last place of the rounded output (bf16 has 8 significant bits).
TOLERANCE = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


@dataclass(frozen=True)
class Case:
    """One kernel call: ``kind`` names the public function, ``build`` makes its arguments."""

    id: str
    kind: str
    build: Callable[[torch.Generator, torch.device], Inputs]
    #: score_topk only: scores are exact integers, so the (score desc, index asc) order is
    #: unique and the indices must match it exactly.
    exact: bool = False
    #: score_topk only: ... and the scores are distinct, so torch.topk's indices must match.
    distinct: bool = False


def _randn(
    g: torch.Generator, device: torch.device, *shape: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    return torch.randn(*shape, generator=g, device=device).to(dtype)


def _randint(g: torch.Generator, device: torch.device, low: int, high: int, *shape: int) -> Tensor:
    return torch.randint(low, high, shape, generator=g, device=device)


def _jagged_offsets(device: torch.device, lengths: list[int]) -> Tensor:
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    return torch.tensor(starts, device=device)


# ---------------------------------------------------------------- fuse_modalities


def fuse_case(
    rows: int,
    dim: int,
    dtypes: tuple[torch.dtype, ...],
    *,
    row_weights: bool = False,
    masked: bool = False,
    stacked: bool = True,
    out_dtype: torch.dtype | None = None,
    list_weights: bool = False,
) -> Callable[[torch.Generator, torch.device], Inputs]:
    """Random modalities; with ``masked``, row 0 has nothing present and row 1 only modality 0,
    and every absent slot holds NaN (it must never be read). ``list_weights``: the weights as
    Python floats (they reach the kernel as scalar arguments)."""

    def build(g: torch.Generator, device: torch.device) -> Inputs:
        parts = [_randn(g, device, rows, dim, dtype=d) for d in dtypes]
        count = len(parts)
        shape = (rows, count) if row_weights else (count,)
        weights = torch.rand(*shape, generator=g, device=device) + 0.1
        mask = None
        if masked:
            mask = torch.rand(rows, count, generator=g, device=device) > 0.3
            mask[0] = False
            if rows > 1:
                mask[1] = False
                mask[1, 0] = True
            for m, p in enumerate(parts):
                p[~mask[:, m]] = float("nan")
        embs: Any = torch.stack(parts) if stacked else parts
        w: Any = weights.tolist() if list_weights else weights
        return {"embs": embs, "weights": w, "mask": mask, "out_dtype": out_dtype}

    return build


# ---------------------------------------------------------------- pooled bags


def bag_case(
    items: int,
    dim: int,
    lengths: list[int],
    dtype: torch.dtype,
    *,
    mode: str = "mean",
    index_dtype: torch.dtype = torch.int64,
    weighted: bool = False,
    normalize: bool = False,
    include_last_offset: bool = False,
    fixed_length: bool = False,
) -> Callable[[torch.Generator, torch.device], Inputs]:
    """Random bags of the given lengths (0 = empty bag) over a random table."""

    def build(g: torch.Generator, device: torch.device) -> Inputs:
        table = _randn(g, device, items, dim, dtype=dtype)
        total = sum(lengths)
        indices = _randint(g, device, 0, items, total).to(index_dtype)
        offsets: Tensor | None = _jagged_offsets(device, lengths).to(index_dtype)
        if include_last_offset:
            assert offsets is not None
            offsets = torch.cat([offsets, offsets.new_tensor([total])])
        if fixed_length:
            indices, offsets = indices.view(len(lengths), lengths[0]), None
        weights = torch.rand(indices.shape, generator=g, device=device) if weighted else None
        return {
            "table": table,
            "indices": indices,
            "offsets": offsets,
            "per_sample_weights": weights,
            "mode": mode,
            "normalize": normalize,
            "include_last_offset": include_last_offset,
        }

    return build


def history_case(
    items: int,
    dim: int,
    lengths: list[int],
    dense: int,
    dtype: torch.dtype,
    *,
    masked: bool = False,
    weighted: bool = False,
    list_weights: bool = False,
    fixed_length: bool = False,
) -> Callable[[torch.Generator, torch.device], Inputs]:
    """``dense`` random modalities plus bags; with ``masked`` row 0 has nothing present.
    ``list_weights``: one weight per modality as Python floats (else one per row and modality).
    ``fixed_length``: 2-D ``[B, L]`` indices (all ``lengths`` equal)."""
    bag = bag_case(items, dim, lengths, dtype, weighted=weighted, fixed_length=fixed_length)

    def build(g: torch.Generator, device: torch.device) -> Inputs:
        args = bag(g, device)
        rows = len(lengths)
        embs = [_randn(g, device, rows, dim, dtype=dtype) for _ in range(dense)]
        weights: Any = torch.rand(rows, dense + 1, generator=g, device=device) + 0.1
        if list_weights:
            weights = weights[0].tolist()
        mask = None
        if masked:
            mask = torch.rand(rows, dense + 1, generator=g, device=device) > 0.3
            mask[0] = False
        return {
            "embs": embs,
            "weights": weights,
            "table": args["table"],
            "indices": args["indices"],
            "offsets": args["offsets"],
            "per_sample_weights": args["per_sample_weights"],
            "mask": mask,
        }

    return build


# ---------------------------------------------------------------- score_topk


def distinct_integer_problem(
    g: torch.Generator, device: torch.device, queries: int, items: int, dim: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Integer-valued queries and catalogue whose scores are distinct integers below 2**24.

    Item ``n`` carries the bits of a random permutation of ``n`` in its first dimensions;
    each query weighs bit ``j`` by ``+-2**(j + shift)``, which makes the score injective in the
    permutation, and the remaining dimensions add noise in ``(-2**(shift-1), 2**(shift-1))``.
    Every value is exact in bfloat16 and every partial sum exact in float32, so any correct
    implementation returns exactly ``torch.topk``'s indices.
    """
    bits = max(1, (items - 1).bit_length())
    noise_dims = dim - bits
    shift = (2 * noise_dims + 1).bit_length()
    if noise_dims < 1 or bits + shift > 23:
        raise ValueError("dim too small or items too many for exact integer scores")
    perm = torch.randperm(items, generator=g, device=device)
    code = ((perm[:, None] >> torch.arange(bits, device=device)) & 1).float()
    sign = _randint(g, device, 0, 2, queries, bits).float() * 2 - 1
    weight = sign * 2.0 ** (torch.arange(bits, device=device) + shift).float()
    catalogue = torch.cat([code, _randint(g, device, -1, 2, items, noise_dims).float()], dim=1)
    q = torch.cat([weight, _randint(g, device, -1, 2, queries, noise_dims).float()], dim=1)
    return q.to(dtype), catalogue.to(dtype)


def topk_case(
    queries: int,
    items: int,
    dim: int,
    k: int,
    dtype: torch.dtype,
    *,
    integer: bool = False,
    ties: bool = False,
    sorted_items: bool = False,
    exclude: str | None = None,
    bias: bool = False,
    scale: float = 1.0,
    sparse: int = 0,
) -> Callable[[torch.Generator, torch.device], Inputs]:
    """A score_topk call.

    ``integer``: distinct integer scores (see :func:`distinct_integer_problem`). ``ties``:
    scores from a handful of integer values, so ties decide the order. ``sorted_items``: the
    score grows with the item index, so the whole top k sits in the last chunk (forces the
    saturated-chunk rescoring). ``exclude``: ``"list"``, ``"jagged"`` (indices, offsets) or
    ``"padded"`` ([B, H] with -1); a few items per query, some among the best. ``sparse``:
    all-ones queries and an all-zero catalogue but for that many random items, so most scores
    are exactly 0 and the top k ends in a tie at 0 (the floor pre-pass then finds a bound of
    0 that the main pass cannot beat: the rescan after a floor violation).
    """

    def build(g: torch.Generator, device: torch.device) -> Inputs:
        if integer:
            q, cat = distinct_integer_problem(g, device, queries, items, dim, dtype)
        elif ties:
            q = _randint(g, device, -1, 2, queries, dim).to(dtype)
            cat = _randint(g, device, -1, 2, items, dim).to(dtype)
        else:
            q = _randn(g, device, queries, dim, dtype=dtype)
            cat = _randn(g, device, items, dim, dtype=dtype)
        if sparse:
            q = torch.ones(queries, dim, device=device, dtype=dtype)
            cat = torch.zeros(items, dim, device=device, dtype=dtype)
            cat[torch.randperm(items, generator=g, device=device)[:sparse]] = 1
        if sorted_items:
            q = q.abs()
            ramp = torch.linspace(0.0, 1.0, items, device=device)[:, None]
            cat = (cat.float().abs() * 0.01 + ramp).to(dtype)
        args: Inputs = {"queries": q, "catalogue": cat, "k": k, "scale": scale}
        if bias:
            args["bias"] = torch.randn(items, generator=g, device=device)
        if exclude is not None:
            best = torch.topk(q.float() @ cat.float().T, min(3, items), dim=1).indices
            rand = _randint(g, device, 0, items + 5, queries, 4)  # some out of range
            per_query = torch.cat([best, rand], dim=1)
            if exclude == "list":
                args["exclude"] = [row[: 1 + b % 7].tolist() for b, row in enumerate(per_query)]
            elif exclude == "jagged":
                args["exclude"] = (per_query.reshape(-1), torch.arange(queries, device=device) * 7)
            else:
                padded = per_query.clone()
                padded[:, ::3] = -1
                args["exclude"] = padded
        return args

    return build


# ---------------------------------------------------------------- run and check

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "fuse": kernels.fuse_modalities,
    "bag": kernels.pooled_embedding_bag,
    "history": kernels.fuse_with_history,
    "topk": kernels.score_topk,
}


def inputs_for(case: Case, device: torch.device | str, seed: int = 0) -> Inputs:
    """Deterministic inputs of ``case`` on ``device``."""
    dev = torch.device(device)
    g = torch.Generator(dev)
    g.manual_seed(seed)
    return case.build(g, dev)


def run(case: Case, inputs: Inputs, backend: str) -> Any:
    """Call the case's public kernel on ``backend`` (``triton`` or ``reference``).

    Kind ``candidates`` runs only pass 1 of the Triton ``score_topk`` (white box: the rescoring
    in pass 2 would hide a wrong candidate set) and has no reference backend.
    """
    if case.kind == "candidates":
        from prism.kernels import _inputs, _scoring

        cat = inputs["catalogue"]
        q = inputs["queries"].to(cat.dtype)
        pairs = _inputs.exclusion_pairs(inputs.get("exclude"), q.shape[0], cat.device)
        scale, bias = inputs.get("scale", 1.0), inputs.get("bias")
        return _scoring.candidates(q, cat, inputs["k"], pairs, scale, bias)
    return _FUNCTIONS[case.kind](**inputs, backend=backend)


def _tolerance(dtype: torch.dtype) -> tuple[float, float]:
    return TOLERANCE[dtype]


def check(case: Case, inputs: Inputs, output: Any) -> None:
    """Assert ``output`` (from any backend) matches the reference on ``inputs``."""
    if case.kind == "candidates":
        _check_candidates(inputs, output)
        return
    expected = run(case, inputs, "reference")
    if case.kind == "topk":
        _check_topk(case, inputs, output, expected)
        return
    assert output.dtype == expected.dtype and output.shape == expected.shape
    assert torch.isfinite(output.float()).all(), "output holds NaN or inf"
    rtol, atol = _tolerance(output.dtype)
    torch.testing.assert_close(output.float(), expected.float(), rtol=rtol, atol=atol)
    if case.kind in ("fuse", "history") and inputs.get("mask") is not None:
        nothing = ~inputs["mask"].any(dim=1)
        assert (output[nothing] == 0).all(), "rows with no modality must be exactly zero"


def exact_scores(inputs: Inputs) -> Tensor:
    """float64 ``[B, N]`` scores by the definition (queries rounded to the catalogue dtype)."""
    cat = inputs["catalogue"]
    q = inputs["queries"].to(cat.dtype).double()
    s = (q @ cat.double().T) * inputs.get("scale", 1.0)
    bias = inputs.get("bias")
    return s if bias is None else s + bias.double()


def _excluded(inputs: Inputs, queries: int, items: int, device: torch.device) -> Tensor:
    """Bool ``[B, N]``: True where the query excludes the item."""
    from prism.kernels._inputs import exclusion_pairs

    out = torch.zeros(queries, items, dtype=torch.bool, device=device)
    pairs = exclusion_pairs(inputs.get("exclude"), queries, device)
    if pairs is not None:
        rows, cols = pairs
        inside = (cols >= 0) & (cols < items)  # other ids mean nothing
        out[rows[inside], cols[inside]] = True
    return out


def _check_candidates(inputs: Inputs, output: tuple[Tensor, int]) -> None:
    """Each (query, chunk) holds exactly the chunk's best keys (integer data: exact scores)."""
    from prism.kernels import _keys

    cand, chunk_rows = output
    queries, chunks, keep = cand.shape
    items = inputs["catalogue"].shape[0]
    assert chunks == -(-items // chunk_rows)
    truth = exact_scores(inputs).masked_fill(
        _excluded(inputs, queries, items, cand.device), float("-inf")
    )
    keys = _keys.encode(truth.float(), torch.arange(items, device=cand.device))
    for c in range(chunks):
        expected = _keys.top_keys(keys[:, c * chunk_rows : (c + 1) * chunk_rows], keep)
        got = cand[:, c].sort(dim=1, descending=True).values
        assert torch.equal(got, expected), f"chunk {c}: wrong candidates"


def _check_topk(case: Case, inputs: Inputs, output: Any, expected: Any) -> None:
    scores, index = output
    k = inputs["k"]
    queries, items = inputs["queries"].shape[0], inputs["catalogue"].shape[0]
    assert scores.shape == index.shape == (queries, k)
    assert scores.dtype == torch.float32 and index.dtype == torch.int64
    exact = exact_scores(inputs)
    truth = exact.masked_fill(_excluded(inputs, queries, items, exact.device), float("-inf"))
    real = index >= 0
    # Padding: as many real results as items remain (at most k), then (-inf, -1).
    assert torch.equal(real.sum(dim=1), truth.isfinite().sum(dim=1).clamp(max=k))
    assert real[:, :-1].ge(real[:, 1:]).all(), "padding must come last"
    assert (scores[~real] == float("-inf")).all()
    safe = index.clamp(min=0)
    assert truth.gather(1, safe)[real].isfinite().all(), "an excluded item was returned"
    assert (index.sort(dim=1).values.diff(dim=1)[real.sort(dim=1).values[:, 1:]] != 0).all()
    # Each score is its item's true score, and position j holds the true j-th best score:
    # together with distinct, non-excluded items that makes it a true top k.
    finite = truth[truth.isfinite()]
    magnitude = max(finite.abs().max().item(), 1.0) if finite.numel() else 1.0
    tol = magnitude * (1e-6 if inputs["catalogue"].dtype == torch.float32 else 1e-5)
    torch.testing.assert_close(scores[real].double(), exact.gather(1, safe)[real], rtol=0, atol=tol)
    best = truth.sort(dim=1, descending=True, stable=True)
    width = min(k, items)
    torch.testing.assert_close(
        scores[:, :width][real[:, :width]].double(),
        best.values[:, :width][real[:, :width]],
        rtol=0,
        atol=tol,
    )
    torch.testing.assert_close(scores, expected[0], rtol=0, atol=tol)
    if case.exact:
        # Exact integer scores: (score desc, index asc) is a unique order; ties go to the lower
        # index, as a stable sort of the index-ordered scores gives.
        assert torch.equal(index[real], best.indices[:, :width][real[:, :width]])
        assert torch.equal(index, expected[1])
    if case.distinct:
        dense = inputs["queries"].float() @ inputs["catalogue"].float().T
        assert torch.equal(index, torch.topk(dense, k, dim=1).indices)


# ---------------------------------------------------------------- the case lists

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

#: Small enough for Triton's interpreter; odd sizes on purpose (D not a power of two, one row,
#: N not a multiple of any tile, k larger than what is left, empty bags, all masked).
CPU_CASES = [
    Case("fuse-f32-b1-d7", "fuse", fuse_case(1, 7, (F32, F32, F32))),
    Case(
        "fuse-f32-rowweights-masked",
        "fuse",
        fuse_case(9, 33, (F32, F32), row_weights=True, masked=True),
    ),
    Case("fuse-bf16-masked", "fuse", fuse_case(6, 48, (BF16, BF16, BF16), masked=True)),
    Case("fuse-mixed-list", "fuse", fuse_case(5, 20, (BF16, F32, F16), stacked=False)),
    Case("fuse-f16-to-bf16", "fuse", fuse_case(7, 16, (F16,) * 4, out_dtype=BF16)),
    Case("bag-f32-sum-empty", "bag", bag_case(50, 19, [0, 3, 0, 11, 1, 0], F32, mode="sum")),
    Case("bag-f32-mean-b1", "bag", bag_case(10, 8, [5], F32)),
    Case(
        "bag-bf16-weighted-normalized",
        "bag",
        bag_case(
            40, 24, [2, 0, 9, 4], BF16, index_dtype=torch.int32, weighted=True, normalize=True
        ),
    ),
    Case("bag-f32-last-offset", "bag", bag_case(30, 13, [4, 0, 6], F32, include_last_offset=True)),
    Case("bag-bf16-fixed-length", "bag", bag_case(30, 33, [6, 6, 6], BF16, fixed_length=True)),
    Case(
        "history-f32-masked", "history", history_case(30, 21, [3, 0, 7, 1, 0], 2, F32, masked=True)
    ),
    Case(
        "history-bf16-only-weighted",
        "history",
        history_case(25, 16, [5, 2, 0], 0, BF16, weighted=True),
    ),
    Case(
        "topk-f32-int-exact",
        "topk",
        topk_case(3, 300, 20, 10, F32, integer=True),
        exact=True,
        distinct=True,
    ),
    Case(
        "topk-bf16-int-exact",
        "topk",
        topk_case(2, 200, 16, 12, BF16, integer=True),
        exact=True,
        distinct=True,
    ),
    Case("topk-f32-ties", "topk", topk_case(4, 150, 6, 20, F32, ties=True), exact=True),
    # k <= 8 candidates per chunk: no chunk is ever rescored, so the kernel's own tie-break
    # decides.
    Case("topk-f32-ties-small-k", "topk", topk_case(6, 150, 4, 5, F32, ties=True), exact=True),
    Case("topk-bf16-b1-k1", "topk", topk_case(1, 97, 24, 1, BF16)),
    Case("candidates-f32-ties", "candidates", topk_case(6, 150, 4, 8, F32, ties=True)),
    Case(
        "candidates-bf16-int-exclude",
        "candidates",
        topk_case(70, 130, 12, 3, BF16, integer=True, exclude="list"),
    ),
    # The top k sits in the last chunks: a few saturated chunks are rescored ...
    Case("topk-f32-rescore", "topk", topk_case(2, 300, 8, 20, F32, sorted_items=True)),
    # ... or, when that would read more than the catalogue, the affected queries are rescanned.
    Case(
        "topk-f32-rescan",
        "topk",
        topk_case(3, 300, 8, 150, F32, sorted_items=True, exclude="list"),
    ),
    Case(
        "topk-f16-bias-scale-list",
        "topk",
        topk_case(5, 120, 12, 6, F16, bias=True, scale=0.5, exclude="list"),
    ),
    Case("topk-f32-k-over-n-jagged", "topk", topk_case(3, 40, 10, 50, F32, exclude="jagged")),
    Case("topk-bf16-qblocks-padded", "topk", topk_case(70, 64, 8, 5, BF16, exclude="padded")),
    # Chunks long enough for the floor pre-pass (see _scoring): with bias and exclusions, with
    # exact ties at the top, and with a floor the main pass cannot beat (rescan).
    Case(
        "topk-f32-floor-bias-list",
        "topk",
        topk_case(3, 3000, 16, 8, F32, bias=True, scale=0.5, exclude="list"),
    ),
    Case("topk-f32-floor-ties", "topk", topk_case(4, 3000, 6, 8, F32, ties=True), exact=True),
    Case("topk-f32-floor-violated", "topk", topk_case(2, 3000, 8, 8, F32, sparse=3), exact=True),
    Case(
        "fuse-bf16-list-weights-masked",
        "fuse",
        fuse_case(5, 40, (BF16,) * 3, list_weights=True, masked=True),
    ),
    Case(
        "history-f32-list-fixed-masked",
        "history",
        history_case(30, 20, [4, 4, 4], 2, F32, list_weights=True, fixed_length=True, masked=True),
    ),
]

#: CPU cases that must take the floor pre-pass of the Triton score_topk.
FLOOR_CASES = ["topk-f32-floor-bias-list", "topk-f32-floor-ties", "topk-f32-floor-violated"]

#: Serving sizes, for the GPU.
GPU_CASES = [
    Case("fuse-bf16-65536x512", "fuse", fuse_case(65536, 512, (BF16,) * 3, masked=True)),
    Case("fuse-f32-1000x1000", "fuse", fuse_case(1000, 1000, (F32,) * 2, row_weights=True)),
    Case("fuse-f16-b1-d256", "fuse", fuse_case(1, 256, (F16,) * 3)),
    Case(
        "bag-bf16-4096x50",
        "bag",
        bag_case(1_000_000, 256, [50] * 4096, BF16, index_dtype=torch.int32),
    ),
    Case(
        "bag-f32-jagged-1024",
        "bag",
        bag_case(
            100_000, 1000, [0, 1, 7, 200, 3] * 200, F32, mode="sum", weighted=True, normalize=True
        ),
    ),
    Case(
        "history-bf16-4096x50",
        "history",
        history_case(1_000_000, 256, [50] * 4096, 2, BF16, masked=True),
    ),
    Case(
        "topk-bf16-1e6-k100",
        "topk",
        topk_case(64, 1_000_000, 256, 100, BF16, exclude="jagged", bias=True),
    ),
    Case("topk-bf16-b1-d1000", "topk", topk_case(1, 200_003, 1000, 10, BF16)),
    Case("topk-f16-b1000", "topk", topk_case(1000, 100_000, 128, 50, F16, exclude="list")),
    Case(
        "topk-f32-int-65536",
        "topk",
        topk_case(64, 65536, 32, 100, F32, integer=True),
        exact=True,
        distinct=True,
    ),
    Case(
        "topk-bf16-int-65536",
        "topk",
        topk_case(16, 65536, 32, 64, BF16, integer=True),
        exact=True,
        distinct=True,
    ),
    Case("topk-bf16-ties", "topk", topk_case(32, 100_000, 16, 100, BF16, ties=True), exact=True),
    Case("topk-bf16-ties-k8", "topk", topk_case(64, 100_000, 8, 8, BF16, ties=True), exact=True),
    Case("candidates-bf16-ties", "candidates", topk_case(100, 300_000, 8, 8, BF16, ties=True)),
    Case("topk-bf16-rescore", "topk", topk_case(8, 1_000_000, 64, 300, BF16, sorted_items=True)),
    # Chunks of >= 4096 rows: the floor pre-pass runs (bias + exclusions; exact ties at the top;
    # a floor nothing beats, repaired by a rescan).
    Case(
        "topk-bf16-5e6-floor",
        "topk",
        topk_case(16, 5_000_000, 64, 100, BF16, exclude="jagged", bias=True),
    ),
    Case(
        "topk-bf16-5e6-floor-ties",
        "topk",
        topk_case(16, 5_000_000, 16, 100, BF16, ties=True),
        exact=True,
    ),
    Case(
        "topk-bf16-5e6-floor-violated",
        "topk",
        topk_case(4, 5_000_000, 8, 100, BF16, sparse=3),
        exact=True,
    ),
]
