"""KServe v2 over HTTP vs gRPC to the same Triton model (PyTriton), through Prism's backends.

Starts a PyTriton peer (``make peers``) serving ``embedder`` (TEXT BYTES -> EMBEDDING FP32 [8])
and the raw MiniLM ``bert`` (token ids -> last_hidden_state, Prism tokenises and pools), builds
one HTTP and one gRPC backend per model with the same tensor contract, and runs closed-loop
load on each, side by side in one run (the two transports alternate per row, so a noisy
machine hits both alike). Prints a table and appends rows to bench/results/grpc_vs_http.csv.

    .venv/bin/python bench/grpc_vs_http.py [--seconds 5] [--concurrency 1,8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import append_csv, print_table  # noqa: E402
from prism.backends import Task  # noqa: E402
from prism.backends._base import InputItem  # noqa: E402
from prism.backends._kserve import KServeBackend  # noqa: E402
from prism.backends._kserve_grpc import KServeGrpcBackend  # noqa: E402
from prism.backends._tensor_specs import TensorContract  # noqa: E402
from tests.peers import pytriton  # noqa: E402

CONTRACTS = {
    "embedder": TensorContract.model_validate(
        {"inputs": {"text": "TEXT"}, "outputs": {"embedding": "EMBEDDING"}}
    ),
    "bert": TensorContract.model_validate(
        {
            "inputs": {
                "text": {"tokenize": {"tokenizer": "minilm", "token_type_ids": "token_type_ids"}}
            },
            "outputs": {
                "embedding": {"name": "last_hidden_state", "pooling": "mean", "normalize": True}
            },
        }
    ),
}
SENTENCE = "A man is riding a white horse on an enclosed ground."


async def load(backend: Any, concurrency: int, seconds: float, batch: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    items = [InputItem(text=f"{SENTENCE} {i}") for i in range(batch)]
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                await backend.infer(Task.EMBED, items, {}, timeout_s=10)
            except Exception:
                errors += 1
                continue
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))]

    return {
        "rps": len(latencies) / elapsed,
        "p50": pct(50) if latencies else float("nan"),
        "p99": pct(99) if latencies else float("nan"),
        "errors": errors,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per row (default 5)")
    parser.add_argument("--concurrency", default="1,8", help="comma list (default 1,8)")
    parser.add_argument("--batch", type=int, default=1, help="inputs per request (default 1)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    print("==> starting PyTriton (embedder, bert)", flush=True)
    peer = pytriton(["embedder", "bert"]).start(timeout_s=240)
    rows: list[list[object]] = []
    try:
        assert peer.grpc_port is not None
        for model, contract in CONTRACTS.items():
            http = KServeBackend(
                peer.url, model, name=f"{model}/http", contract=contract, base_dir=ROOT
            )
            grpc = KServeGrpcBackend(
                f"grpc://127.0.0.1:{peer.grpc_port}",
                model,
                name=f"{model}/grpc",
                contract=contract,
                base_dir=ROOT,
            )
            await http.start()
            await grpc.start()
            try:
                for c in levels:
                    results = {}
                    for name, backend in (("http", http), ("grpc", grpc)):
                        await load(backend, c, min(1.0, args.seconds), args.batch)  # warm up
                        print(f"--> {model} {name} c={c}", flush=True)
                        results[name] = await load(backend, c, args.seconds, args.batch)
                    for name in ("http", "grpc"):
                        r = results[name]
                        rows.append(
                            [
                                model,
                                name,
                                c,
                                args.batch,
                                r["rps"],
                                r["p50"],
                                r["p99"],
                                int(r["errors"]),
                                r["rps"] / results["http"]["rps"],
                            ]
                        )
            finally:
                await http.aclose()
                await grpc.aclose()
    finally:
        peer.stop()
    headers = ["model", "transport", "conc", "batch", "req/s", "p50 ms", "p99 ms", "errors"]
    headers.append("vs http")
    print_table(headers, rows)
    import grpc as grpc_module
    import httpx

    software = (
        f"python {sys.version.split()[0]}; httpx {httpx.__version__}; "
        f"grpcio {grpc_module.__version__}; pytriton 0.7.0 (Triton 2.51)"
    )
    path = append_csv("grpc_vs_http.csv", headers, rows, software=software)
    print(f"appended to {path} (a shared, noisy machine: compare rows of one run only)")


if __name__ == "__main__":
    asyncio.run(main())
