"""Benchmark Prism's Triton kernels against torch eager and torch.compile on one GPU.

For every case it times (``triton.testing.do_bench``, median, L2 flushed between runs):

* ``fuse``     fuse_modalities (M=3)             vs eager torch, torch.compile
* ``bag``      pooled_embedding_bag (mean)       vs F.embedding_bag, torch.compile(gather+mean)
* ``history``  fuse_with_history (2 dense + bag) vs F.embedding_bag + separate fusion, compiled
* ``topk``     score_topk (k=100)                vs torch.topk(q @ c.T), torch.compile of that

and reports milliseconds, GB/s over the fewest bytes the operation must move (inputs read once,
outputs written once; for ``bag``/``history`` that is dominated by the gathered rows, for
``topk`` by the catalogue), and that rate as a fraction of the device-to-device copy bandwidth
measured at the start of the same run. ``ms`` times the Python call (launch overhead included,
which dominates below ~0.1 ms); ``graph_ms`` times CUDA-graph replays of the same call, i.e.
the GPU work alone, for every implementation that can be captured (not score_topk, which
synchronises once). ``host_us`` (non-target shapes with B <= 64) is the CPU time per call of 200 calls
issued back to back without a sync: the per-call host overhead while the GPU keeps up (for
score_topk, which syncs, it includes the GPU time). Rows are appended to a CSV with the GPU
name, the torch and triton versions and the date; a markdown table and the target verdicts go
to ``--md``. The top-k target also runs ``triton-nofloor`` (the kernel without its floor
pre-pass), an A/B of that pass.

Grid (bf16 everywhere). The full cross product does not fit memory and time, so:
  fuse     B in {1, 64, 1024, 16384, 65536} x D in {256, 512, 1024}
  bag      L=50; D=256 x N in {1e5, 1e6, 1e7} x B in {1, 64, 1024, 16384}, plus
           D in {512, 1024} at N=1e6, plus the target (N=1e6, D=256, B=4096)
  history  as bag at N=1e6 only
  topk     k=100; D=256 x N in {1e5, 1e6, 1e7} x B in {1, 64, 1024, 16384} where B*N <= 1.1e10
           (the Triton side is compute-bound beyond), D in {512, 1024} at N=1e6, B <= 1024;
           the eager/compiled baselines only where the [B, N] score matrix is <= 4 GB.
Targets run first; ``--budget-s`` stops the grid (not the targets) when time runs out.
``--serving``: the targets, then B in {1, 64} of each kernel (the shapes above at D=256) only.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prism.kernels.ops as kernels

BF16 = torch.bfloat16
FIELDS = [
    "date", "gpu", "torch", "triton", "kernel", "impl", "dtype", "B", "D", "N", "M", "L", "k",
    "ms", "gbytes", "gbps", "frac_copy", "copy_gbps", "speedup_vs_eager", "speedup_vs_compile",
    "max_err", "target", "config", "graph_ms", "graph_frac_copy", "graph_speedup_vs_eager",
    "graph_speedup_vs_compile", "host_us", "note",
]  # fmt: skip


@dataclass
class Case:
    """One benchmark shape: ``make()`` builds inputs and returns (impl name -> callable)."""

    kernel: str
    dims: dict[str, int]
    target: bool = False
    #: Bytes the operation must move at least; for fractions of copy bandwidth.
    moved: int = 0
    impls: dict[str, Callable[[], Any]] = field(default_factory=dict)
    #: Largest error of our output (vs the eager output unless a case says otherwise).
    error: Callable[[Any, Any], float] | None = None


# ----------------------------------------------------------------------------- torch baselines


def fuse_eager(parts: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Eager fusion: normalise each modality, weighted sum, normalise (float32 math)."""
    w = weights.float() / weights.float().sum()
    acc = sum(w[m] * F.normalize(p.float(), dim=-1) for m, p in enumerate(parts))
    return F.normalize(acc, dim=-1).to(parts[0].dtype)  # type: ignore[arg-type]


def bag_mean_dense(table: torch.Tensor, idx2d: torch.Tensor) -> torch.Tensor:
    """Fixed-length bags as gather + mean, a form torch.compile can fuse into one kernel."""
    return table[idx2d].float().mean(dim=1).to(table.dtype)


def history_eager(
    parts: list[torch.Tensor],
    weights: torch.Tensor,
    table: torch.Tensor,
    idx: torch.Tensor,
    off: torch.Tensor,
) -> torch.Tensor:
    """F.embedding_bag, then a separate fusion pass over its written-out result."""
    pooled = F.embedding_bag(idx, table, off, mode="sum")
    return fuse_eager([*parts, pooled], weights)


def history_dense(
    parts: list[torch.Tensor], weights: torch.Tensor, table: torch.Tensor, idx2d: torch.Tensor
) -> torch.Tensor:
    pooled = table[idx2d].float().sum(dim=1)
    return fuse_eager([*parts, pooled.to(table.dtype)], weights)


def topk_eager(q: torch.Tensor, cat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.topk(q @ cat.T, k, dim=1)


# ----------------------------------------------------------------------------- cases


def _compiled(fn: Callable[..., Any], enabled: bool) -> Callable[..., Any] | None:
    return torch.compile(fn) if enabled else None


def fuse_case(
    shape: tuple[int, ...], dev: torch.device, compiled: Callable[..., Any] | None, target: bool
) -> Case:
    b, d = shape
    m = 3
    parts = [torch.randn(b, d, device=dev, dtype=BF16) for _ in range(m)]
    w = torch.rand(m, device=dev) + 0.1
    case = Case("fuse", {"B": b, "D": d, "M": m}, target, moved=(m + 1) * b * d * 2)
    case.impls["triton"] = lambda: kernels.fuse_modalities(parts, w)
    case.impls["eager"] = lambda: fuse_eager(parts, w)
    if compiled is not None:
        case.impls["compile"] = lambda: compiled(parts, w)
    return case


def bag_case(
    kind: str,
    shape: tuple[int, ...],
    dev: torch.device,
    compiled: Callable[..., Any] | None,
    target: bool,
) -> Case:
    n, d, b = shape
    length = 50
    table = torch.randn(n, d, device=dev, dtype=BF16)
    idx2d = torch.randint(0, n, (b, length), device=dev, dtype=torch.int32)
    idx = idx2d.reshape(-1)
    off = torch.arange(0, b * length, length, device=dev, dtype=torch.int32)
    gathered = b * length * d * 2 + idx.numel() * 4
    dims = {"B": b, "D": d, "N": n, "L": length}
    if kind == "bag":
        case = Case("bag", dims, target, moved=gathered + b * d * 2)
        case.impls["triton"] = lambda: kernels.pooled_embedding_bag(table, idx, off)
        case.impls["eager"] = lambda: F.embedding_bag(idx, table, off, mode="mean")
        if compiled is not None:
            case.impls["compile"] = lambda: compiled(table, idx2d)
        return case
    parts = [torch.randn(b, d, device=dev, dtype=BF16) for _ in range(2)]
    w = torch.rand(3, device=dev) + 0.1
    case = Case("history", {**dims, "M": 2}, target, moved=gathered + 3 * b * d * 2)
    case.impls["triton"] = lambda: kernels.fuse_with_history(parts, w, table, idx, off)
    case.impls["eager"] = lambda: history_eager(parts, w, table, idx, off)
    if compiled is not None:
        case.impls["compile"] = lambda: compiled(parts, w, table, idx2d)
    return case


def topk_case(
    shape: tuple[int, ...], dev: torch.device, compiled: Callable[..., Any] | None, target: bool
) -> Case:
    n, d, b = shape
    k = 100
    cat = torch.randn(n, d, device=dev, dtype=BF16)
    q = torch.randn(b, d, device=dev, dtype=BF16)
    case = Case(
        "topk", {"B": b, "D": d, "N": n, "k": k}, target, moved=n * d * 2 + b * d * 2 + b * k * 12
    )
    case.impls["triton"] = lambda: kernels.score_topk(q, cat, k)
    if target:
        case.impls["triton-nofloor"] = lambda: _without_floor(q, cat, k)
    # Eager scores are rounded to bf16; check ours against float32 rescoring instead.
    case.error = lambda ours, _eager: float(
        (ours[0] - (q.float()[:, None, :] * cat[ours[1]].float()).sum(-1)).abs().max()
    )
    if b * n * 2 <= 4 << 30:  # the eager score matrix
        case.impls["eager"] = lambda: topk_eager(q, cat, k)
        if compiled is not None:
            case.impls["compile"] = lambda: compiled(q, cat, k)
    return case


def _without_floor(q: torch.Tensor, cat: torch.Tensor, k: int) -> Any:
    """score_topk with the floor pre-pass switched off (an A/B of that pass)."""
    from prism.kernels import _scoring

    _scoring.USE_FLOOR = False
    try:
        return kernels.score_topk(q, cat, k)
    finally:
        _scoring.USE_FLOOR = True


def plan(quick: bool, serving: bool = False) -> list[tuple[str, tuple[Any, ...], bool]]:
    """(kernel, shape, is_target) in run order: targets first, then the grid."""
    targets = [("fuse", (65536, 512), True), ("topk", (10**7, 256, 64), True),
               ("bag", (10**6, 256, 4096), True), ("history", (10**6, 256, 4096), True)]  # fmt: skip
    if serving:
        return targets + [
            case
            for b in (1, 64)
            for case in (
                ("fuse", (b, 256), False), ("bag", (10**5, 256, b), False),
                ("history", (10**6, 256, b), False), ("topk", (10**5, 256, b), False),
            )
        ]  # fmt: skip
    if quick:
        grid: list[tuple[str, tuple[Any, ...], bool]] = [
            ("fuse", (64, 256), False), ("bag", (10**5, 256, 64), False),
            ("topk", (10**5, 256, 64), False),
        ]  # fmt: skip
        return targets + grid
    bs = (1, 64, 1024, 16384)
    per_kernel: list[list[tuple[str, tuple[Any, ...], bool]]] = [
        [("fuse", (b, d), False) for d in (256, 512, 1024) for b in (*bs, 65536)],
        [("bag", (n, 256, b), False) for n in (10**5, 10**6, 10**7) for b in bs]
        + [("bag", (10**6, d, b), False) for d in (512, 1024) for b in bs],
        [("history", (10**6, d, b), False) for d in (256, 512, 1024) for b in bs],
        [("topk", (n, 256, b), False) for n in (10**5, 10**6, 10**7) for b in bs if b * n <= 1.1e10]
        + [("topk", (10**6, d, b), False) for d in (512, 1024) for b in bs[:3]],
    ]
    # Round-robin over kernels, so a time budget cuts every kernel's grid evenly.
    grid = [c for group in itertools.zip_longest(*per_kernel) for c in group if c is not None]
    done = {(kind, shape) for kind, shape, _ in targets}
    return targets + [g for g in grid if (g[0], g[1]) not in done]


# ----------------------------------------------------------------------------- timing


def copy_bandwidth(dev: torch.device, timer: Callable[[Callable[[], Any]], float]) -> float:
    """Device-to-device copy rate in GB/s, counting bytes read plus bytes written."""
    n = 1 << 31 if dev.type == "cuda" else 1 << 26
    buffers = torch.empty(2, n, dtype=torch.uint8, device=dev).random_()
    ms = timer(lambda: buffers[1].copy_(buffers[0]))
    return 2 * n / ms / 1e6


def graph_ms(fn: Callable[[], Any], rep_ms: int) -> float | None:
    """Median GPU time of ``fn`` replayed from a CUDA graph: the kernels' own time, without
    Python and launch overhead (which dominates below ~0.1 ms). None if ``fn`` cannot be
    captured (e.g. it synchronises with the host, as score_topk does). No L2 flush between
    replays, so inputs that fit the 60 MB L2 read faster than from memory."""
    from triton.testing import do_bench_cudagraph

    try:
        return float(do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
    except Exception:
        torch.cuda.synchronize()
        return None


def host_us(fn: Callable[[], Any], calls: int = 200) -> float:
    """CPU microseconds per call of ``calls`` calls issued back to back, no sync between."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def make_timer(dev: torch.device, rep_ms: int) -> Callable[[Callable[[], Any]], float]:
    if dev.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: float(
            do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median")
        )

    def cpu_timer(fn: Callable[[], Any]) -> float:  # for --device cpu harness checks only
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[1]

    return cpu_timer


def max_error(a: Any, b: Any) -> float:
    """Largest absolute difference; for top-k, between the score lists."""
    if isinstance(a, tuple):
        a, b = a[0], b[0]
    return float((a.float() - b.float()).abs().max())


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="targets plus three small shapes")
    parser.add_argument(
        "--serving", action="store_true", help="targets plus B in {1, 64} of each kernel"
    )
    parser.add_argument("--no-targets", action="store_true", help="skip the (large) target shapes")
    parser.add_argument("--csv", default="bench/results/kernels.csv", help="CSV to append rows to")
    parser.add_argument(
        "--md", default=None, help="also write a markdown table + target verdicts here"
    )
    parser.add_argument(
        "--budget-s", type=float, default=float("inf"), help="stop the grid after this"
    )
    parser.add_argument("--rep-ms", type=int, default=60, help="do_bench time per measurement")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile baselines"
    )
    parser.add_argument(
        "--compile-targets-only",
        action="store_true",
        help="torch.compile baselines for the target shapes only (each new shape recompiles)",
    )
    parser.add_argument("--only", choices=["fuse", "bag", "history", "topk"], action="append")
    parser.add_argument(
        "--device", default="cuda", help=argparse.SUPPRESS
    )  # cpu: harness smoke test
    args = parser.parse_args(argv)

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("bench/kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    # The kernels' own dispatch picks the implementation: Triton on the GPU; the --device cpu
    # harness check runs the references.
    backend = "triton" if dev.type == "cuda" else "reference"
    os.environ["PRISM_KERNELS"] = backend
    start = time.monotonic()
    timer = make_timer(dev, args.rep_ms)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    meta = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "gpu": gpu,
            "torch": torch.__version__, "triton": triton_version}  # fmt: skip
    copy_gbps = copy_bandwidth(dev, timer)
    print(f"{gpu}  torch {torch.__version__}  triton {triton_version}  copy {copy_gbps:,.0f} GB/s")

    compile_on = not args.no_compile
    compiled = {
        "fuse": _compiled(fuse_eager, compile_on),
        "bag": _compiled(bag_mean_dense, compile_on),
        "history": _compiled(history_dense, compile_on),
        "topk": _compiled(topk_eager, compile_on),
    }
    csv_path = Path(args.csv)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    if csv_path.exists() and csv_path.read_text().split("\n", 1)[0] != ",".join(FIELDS):
        # Columns changed since that file was started: never append misaligned rows.
        csv_path = csv_path.with_name(f"{csv_path.stem}-{meta['date'][:10]}{csv_path.suffix}")
        print(f"{args.csv} has other columns; writing {csv_path}")
    new_file = not csv_path.exists()
    out = csv_path.open("a", newline="")
    writer = csv.DictWriter(out, fieldnames=FIELDS)
    if new_file:
        writer.writeheader()
    rows: list[dict[str, Any]] = []
    todo = [
        p
        for p in plan(args.quick, args.serving)
        if (not args.only or p[0] in args.only) and not (args.no_targets and p[2])
    ]
    header = f"{'kernel':8} {'shape':34} {'triton ms':>10} {'eager ms':>10} {'compile ms':>10} {'GB/s':>8} {'of copy':>8} {'x eager':>8} {'x compile':>9}"  # fmt: skip
    print(header)
    for i, (kind, shape, target) in enumerate(todo, 1):
        if not target and time.monotonic() - start > args.budget_s:
            print(f"[{i}/{len(todo)}] budget spent: skipping the rest of the grid")
            break
        results = run_case(
            kind,
            shape,
            target,
            dev,
            compiled[kind] if target or not args.compile_targets_only else None,
            timer,
            copy_gbps,
            meta,
            backend,
            args.rep_ms,
        )
        for row in results:
            writer.writerow(row)
            rows.append(row)
        out.flush()
        print(f"[{i}/{len(todo)}] " + summary(results), flush=True)
        if args.md:  # after every case, so a run cut short still leaves its table
            write_markdown(Path(args.md), meta, copy_gbps, rows, judge(rows))
    out.close()
    verdicts = judge(rows)
    for line in verdicts:
        print(line)
    print(f"done in {time.monotonic() - start:.0f} s; rows appended to {csv_path}")
    return 0


def run_case(
    kind: str,
    shape: tuple[Any, ...],
    target: bool,
    dev: torch.device,
    compiled: Callable[..., Any] | None,
    timer: Callable[[Callable[[], Any]], float],
    copy_gbps: float,
    meta: dict[str, str],
    backend: str,
    rep_ms: int = 60,
) -> list[dict[str, Any]]:
    """Time every implementation of one case; one CSV row each (errors become a note)."""
    base = {**meta, "kernel": kind, "dtype": "bf16", "copy_gbps": round(copy_gbps, 1)}
    try:
        if kind == "fuse":
            case = fuse_case(shape, dev, compiled, target)
        elif kind == "topk":
            case = topk_case(shape, dev, compiled, target)
        else:
            case = bag_case(kind, shape, dev, compiled, target)
    except Exception as exc:  # e.g. out of memory: record and move on
        return [{**base, "impl": "setup", "note": f"{type(exc).__name__}: {exc}"[:200]}]
    base.update(case.dims)
    timings: dict[str, float] = {}
    graphs: dict[str, float] = {}
    outputs: dict[str, Any] = {}
    rows = []
    for impl, fn in case.impls.items():
        name = impl.replace("triton", backend)
        row: dict[str, Any] = {**base, "impl": name, "target": int(case.target)}
        try:
            outputs[impl] = fn()
            if dev.type == "cuda" and not case.target and case.dims["B"] <= 64:
                row["host_us"] = round(host_us(fn), 1)
            ms = timer(fn)
            timings[impl] = ms
            if impl.startswith("triton") and dev.type == "cuda":
                row["config"] = tuned_config(kind)
            row.update(ms=round(ms, 4), gbytes=round(case.moved / 1e9, 4))
            row.update(gbps=round(case.moved / ms / 1e6, 1))
            row.update(frac_copy=round(case.moved / ms / 1e6 / copy_gbps, 3))
            replay = graph_ms(fn, rep_ms) if dev.type == "cuda" and kind != "topk" else None
            if replay:
                graphs[impl] = replay
                row.update(graph_ms=round(replay, 4))
                row.update(graph_frac_copy=round(case.moved / replay / 1e6 / copy_gbps, 3))
        except Exception as exc:
            row["note"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
            traceback.print_exc(limit=2)
        rows.append(row)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    for impl, row in zip(case.impls, rows, strict=True):
        ours = timings.get(impl)
        if not impl.startswith("triton") or not ours:
            continue
        for other in ("eager", "compile"):
            if other in timings:
                row[f"speedup_vs_{other}"] = round(timings[other] / ours, 2)
            if impl in graphs and other in graphs:
                row[f"graph_speedup_vs_{other}"] = round(graphs[other] / graphs[impl], 2)
        if case.error is not None:
            row["max_err"] = round(case.error(outputs[impl], outputs.get("eager")), 5)
        elif "eager" in outputs:
            row["max_err"] = round(max_error(outputs[impl], outputs["eager"]), 5)
    del case, outputs
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def tuned_config(kind: str) -> str:
    """The launch configuration the autotuner picked for the last call (diagnostics only)."""
    from prism.kernels import _fusion, _scoring

    launcher = {"fuse": _fusion._FUSE, "topk": _scoring._SCORE}.get(kind, _fusion._BAG)
    best = launcher.last_config
    return "" if best is None else str(best).replace(",", ";")


def summary(rows: list[dict[str, Any]]) -> str:
    by = {r["impl"]: r for r in rows}
    ours = rows[0]
    extra = "".join(
        f" [{r['impl']} {r.get('ms', '')} ms]" for r in rows[1:] if "-" in str(r["impl"])
    )
    shape = " ".join(f"{k}={ours[k]}" for k in ("B", "D", "N", "M", "L", "k") if k in ours)
    ms = [by.get(i, {}).get("ms", "") for i in (ours["impl"], "eager", "compile")]
    return (
        f"{ours['kernel']:8} {shape:34} {ms[0]!s:>10} {ms[1]!s:>10} {ms[2]!s:>10} "
        f"{ours.get('gbps', '')!s:>8} {ours.get('frac_copy', '')!s:>8} "
        f"{ours.get('speedup_vs_eager', '')!s:>8} {ours.get('speedup_vs_compile', '')!s:>9} "
        f"{ours.get('note', '')}{extra}"
    )


def judge(rows: list[dict[str, Any]]) -> list[str]:
    """Verdicts for the issue's targets, from the target rows of this run."""

    def row(kernel: str) -> dict[str, Any]:
        found = [
            r
            for r in rows
            if r["kernel"] == kernel and r.get("target") and r["impl"] in ("triton", "reference")
        ]
        return found[0] if found else {}

    def check(label: str, value: Any, goal: float) -> str:
        if value in ("", None):
            return f"  {label}: not measured"
        verdict = "MET" if float(value) >= goal else "NOT MET"
        return f"  {label}: {float(value):.2f} (target >= {goal}) {verdict}"

    fuse, bag, hist, topk = row("fuse"), row("bag"), row("history"), row("topk")
    lines = [
        "targets (end to end: do_bench of the Python call, launch overhead included):",
        check("fuse M=3 B=65536 D=512: fraction of copy bandwidth", fuse.get("frac_copy"), 0.8),
        check("fuse: speedup vs torch.compile", fuse.get("speedup_vs_compile"), 1.0),
        check(
            "bag N=1e6 D=256 B=4096 L=50: fraction of copy bw (pooled)", bag.get("frac_copy"), 0.7
        ),
        check("history (bag fused): fraction of copy bw", hist.get("frac_copy"), 0.7),
        check("history: speedup vs F.embedding_bag + fusion", hist.get("speedup_vs_eager"), 2.0),
        check("topk N=1e7 D=256 B=64 k=100: fraction of copy bw", topk.get("frac_copy"), 0.7),
        check("topk: speedup vs torch.topk(q @ c.T)", topk.get("speedup_vs_eager"), 2.0),
    ]
    if any(r.get("graph_ms") for r in (fuse, bag, hist)):
        lines += [
            "targets (GPU time: CUDA-graph replay, all implementations alike; not for topk):",
            check("fuse: fraction of copy bandwidth", fuse.get("graph_frac_copy"), 0.8),
            check("fuse: speedup vs torch.compile", fuse.get("graph_speedup_vs_compile"), 1.0),
            check("bag: fraction of copy bw (pooled)", bag.get("graph_frac_copy"), 0.7),
            check("history: fraction of copy bw", hist.get("graph_frac_copy"), 0.7),
            check(
                "history: speedup vs embedding_bag + fusion",
                hist.get("graph_speedup_vs_eager"),
                2.0,
            ),
        ]
    return lines


def write_markdown(
    path: Path,
    meta: dict[str, str],
    copy_gbps: float,
    rows: list[dict[str, Any]],
    verdicts: list[str],
) -> None:
    cols = ["kernel", "impl", "B", "D", "N", "M", "L", "k", "ms", "gbps", "frac_copy",
            "speedup_vs_eager", "speedup_vs_compile", "graph_ms", "graph_frac_copy",
            "graph_speedup_vs_eager", "graph_speedup_vs_compile", "host_us", "max_err",
            "target", "config", "note"]  # fmt: skip
    lines = [
        f"# Kernel benchmark: {meta['gpu']}",
        "",
        f"{meta['date']}, torch {meta['torch']}, triton {meta['triton']}; device-to-device copy "
        f"{copy_gbps:,.0f} GB/s (read + write). bf16 inputs; ms = do_bench median.",
        "",
        "```",
        *verdicts,
        "```",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
