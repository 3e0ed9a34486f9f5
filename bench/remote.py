"""Remote backends and dynamic batching on loopback (a benchmark, not a test).

Suite ``remote``: a fast fake model server (``tests/upstream.py``, KServe v2 + OpenAI
embeddings, 384-d vectors) called directly, then through a ``prism serve`` process routing
to it with ``backend: kserve`` and ``backend: openai`` (``/v1/infer``, cache bypassed), and
through Prism's own KServe door; concurrency 1, 8 and 64. The added latency is Prism's cost
(parse, policy, pooled upstream call, serialise) on top of the same upstream.

Suite ``batching``: the packaged MiniLM text encoder at concurrency 32, single-sentence
requests, with ``max_batch_size`` 1 and then 32: requests/s and the ratio, once calling the
batcher in-process (``LocalBackend.infer``) and once through ``prism serve`` over HTTP.

``OMP_NUM_THREADS=1`` runs torch single-threaded (the fair baseline on a machine whose cores
are busy with other work: two OpenMP threads fighting for one free core make small forwards
very slow). Prints a table per suite and appends rows to ``bench/results/remote.csv`` and
``bench/results/batching.csv``. Every process runs on this machine, so on small machines the
load generator, the gateway and the upstream share the same cores.

    python bench/remote.py [--suite remote batching] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import LOAD_HEADERS, LoadResult, append_csv, load_row, print_table, run_load
from tests.support import GatewayProcess, free_port, wait_for_port

Send = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]
QUIET = {"PRISM_LOG_LEVEL": "WARNING"}
ROOT = Path(__file__).resolve().parent.parent

REMOTE_POLICY = """
version: 1
models:
  via-kserve:
    versions: {{"1": {{backend: kserve, url: "{url}", remote_model: ok, max_connections: 128}}}}
  via-openai:
    versions: {{"1": {{backend: openai, url: "{url}", remote_model: ok, max_connections: 128}}}}
routes:
  - {{name: kserve, match: {{model: via-kserve}}, model: via-kserve, cache: {{ttl_s: 0}}}}
  - {{name: openai, match: {{model: via-openai}}, model: via-openai, cache: {{ttl_s: 0}}}}
"""

BATCH_POLICY = """
version: 1
models:
  text:
    versions:
      "1": {{backend: local, kind: text-encoder, source: minilm, device: cpu,
            batching: {{max_batch_size: {size}, max_queue_delay_ms: 2, max_queue_size: 4096}}}}
routes:
  - {{name: text, model: text, cache: {{ttl_s: 0}}}}
"""


def _sentence(n: int) -> str:
    return f"sentence number {n} about a red circle and a blue square"


def _post(url: str, body: Callable[[int], object]) -> Send:
    async def send(client: httpx.AsyncClient, n: int) -> httpx.Response:
        return await client.post(url, json=body(n))

    return send


def _kserve_body(n: int) -> object:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [_sentence(n)]}]}


def _native_body(model: str) -> Callable[[int], object]:
    return lambda n: {"model": model, "inputs": [{"text": _sentence(n)}], "cache": "bypass"}


def _upstream_kind(label: str) -> str:
    """Which direct run a label compares with: the protocol Prism speaks to the upstream."""
    return "openai" if "openai" in label else "kserve"


async def _measure(
    plan: list[tuple[str, Send]], concurrency: list[int], seconds: float
) -> list[tuple[str, LoadResult]]:
    results: list[tuple[str, LoadResult]] = []
    for c in concurrency:
        for label, send in plan:
            print(f"  {label} at concurrency {c} for {seconds:.0f} s ...", flush=True)
            results.append((label, await run_load(label, send, concurrency=c, seconds=seconds)))
    return results


async def remote_suite(args: argparse.Namespace, tmp: Path) -> None:
    port = free_port()
    upstream = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "tests.upstream", "--port", str(port), "--dim", "384"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    policy = tmp / "remote.yaml"
    policy.write_text(REMOTE_POLICY.format(url=url))
    try:
        wait_for_port(port)
        gw = GatewayProcess(policy, env=QUIET).start()
        try:
            plan = [
                ("direct kserve upstream", _post(url + "/v2/models/ok/infer", _kserve_body)),
                (
                    "prism /v1/infer -> kserve",
                    _post(gw.url + "/v1/infer", _native_body("via-kserve")),
                ),
                (
                    "prism /v2 door -> kserve",
                    _post(gw.url + "/v2/models/via-kserve/infer", _kserve_body),
                ),
                (
                    "direct openai upstream",
                    _post(
                        url + "/v1/embeddings", lambda n: {"model": "ok", "input": [_sentence(n)]}
                    ),
                ),
                (
                    "prism /v1/infer -> openai",
                    _post(gw.url + "/v1/infer", _native_body("via-openai")),
                ),
            ]
            results = await _measure(plan, args.concurrency, args.seconds)
        finally:
            gw.stop()
    finally:
        upstream.terminate()
        upstream.wait(10)
    headers = LOAD_HEADERS
    rows: list[list[object]] = []
    base: dict[tuple[str, int], LoadResult] = {}
    for label, r in results:
        if label.startswith("direct"):
            base[(_upstream_kind(label), r.concurrency)] = r
    for label, r in results:
        rows.append(load_row(label, r, base[(_upstream_kind(label), r.concurrency)]))
    print()
    print_table(headers, rows)
    print(f"\nappended {len(rows)} rows to {append_csv('remote.csv', headers, rows)}")


async def _in_process(size: int, seconds: float, concurrency: int = 32) -> LoadResult:
    """The batcher alone: ``concurrency`` tasks calling LocalBackend.infer, no HTTP."""
    from prism.backends import Batching, InputItem, LocalBackend, Task, TextEncoderSpec
    from prism.backends import build_local_model as build

    spec = TextEncoderSpec(backend="local", kind="text-encoder", source="minilm", device="cpu")
    batching = Batching(max_batch_size=size, max_queue_delay_ms=2, max_queue_size=4096)
    backend = LocalBackend(build(spec, ROOT), batching, name=f"minilm-{size}")
    await backend.start()
    latencies: list[float] = []
    counter = 0

    async def worker(stop: float) -> None:
        nonlocal counter
        while time.perf_counter() < stop:
            counter += 1
            t0 = time.perf_counter()
            await backend.infer(Task.EMBED, [InputItem(text=_sentence(counter))], {})
            latencies.append((time.perf_counter() - t0) * 1000)

    try:
        await asyncio.gather(*(worker(time.perf_counter() + 2) for _ in range(concurrency)))
        latencies.clear()  # the first seconds warm up threads and allocator
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + seconds) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    finally:
        await backend.aclose()
    return LoadResult(f"in-process {size}", concurrency, len(latencies), 0, elapsed, latencies)


async def batching_suite(args: argparse.Namespace, tmp: Path) -> None:
    results: list[tuple[str, int, LoadResult]] = []
    for size in (1, 32):
        print(f"  minilm in-process, max_batch_size {size}, concurrency 32 ...", flush=True)
        results.append(("LocalBackend.infer", size, await _in_process(size, args.seconds)))
    for size in (1, 32):
        policy = tmp / f"batch-{size}.yaml"
        policy.write_text(BATCH_POLICY.format(size=size))
        gw = GatewayProcess(policy, env=QUIET).start(ready_timeout_s=300)
        try:
            label = f"minilm, max_batch_size {size}"
            print(f"  {label} via prism serve, concurrency 32 ...", flush=True)
            send = _post(gw.url + "/v1/infer", _native_body("text"))
            await run_load(label, send, concurrency=32, seconds=2)  # warm-up: threads, caches
            result = await run_load(label, send, concurrency=32, seconds=args.seconds)
            results.append(("prism serve /v1/infer", size, result))
            async with httpx.AsyncClient() as client:
                stats = (await client.get(gw.url + "/metrics")).text
            print(f"    mean batch size {_mean_batch(stats):.1f}")
        finally:
            gw.stop()
    # torch's thread count changes the picture on a busy machine: say which one ran
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    headers = ["path", "torch threads", "max_batch_size", "concurrency", "requests", "errors"]
    headers += ["req/s", "p50 ms", "p99 ms", "speed-up"]
    base = {path: r.rps for path, size, r in results if size == 1}
    rows: list[list[object]] = []
    for path, size, r in results:
        speed_up = r.rps / base[path]
        rows.append(
            [path, threads, size, 32, r.requests, r.errors, r.rps, r.pct(50), r.pct(99), speed_up]
        )
    print()
    print_table(headers, rows)
    print(f"\nappended {len(rows)} rows to {append_csv('batching.csv', headers, rows)}")


def _mean_batch(metrics: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = count = 0.0
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == "prism_batch_size_sum":
                total += s.value
            elif s.name == "prism_batch_size_count":
                count += s.value
    return total / count if count else float("nan")


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="prism-bench-remote-"))
    if "remote" in args.suite:
        await remote_suite(args, tmp)
    if "batching" in args.suite:
        await batching_suite(args, tmp)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--suite", nargs="+", choices=["remote", "batching"], default=["remote", "batching"]
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    started = time.perf_counter()
    asyncio.run(main(parser.parse_args()))
    print(f"done in {time.perf_counter() - started:.0f} s")
