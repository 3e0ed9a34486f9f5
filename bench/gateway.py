"""Gateway overhead and cache-hit latency on loopback (a benchmark, not a test).

Runs the same embedding requests (a) against a bare Litestar app that calls the backend
directly and (b) through Prism's ``POST /v1/infer`` routed to the same fake backend, at
concurrency 1, 8 and 64, each for ``--seconds``; then cache-hit runs with the in-process cache
and with Redis. Prints a table and appends rows to ``bench/results/gateway.csv``.

    python bench/gateway.py [--seconds 5] [--concurrency 1 8 64]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import LOAD_HEADERS, LoadResult, append_csv, load_row, print_table, run_load
from tests.support import GatewayProcess, RedisProcess, free_port, wait_for_port

POLICY = """
version: 1
models:
  fake:
    versions:
      "1": {backend: local, kind: fake, dim: 384}
routes:
  - name: text
    match: {modality: [text]}
    model: fake
    cache: {ttl_s: 600}
"""


def _native(cache: str, same: bool):  # type: ignore[no-untyped-def]
    async def send(client: httpx.AsyncClient, n: int) -> httpx.Response:
        text = "the same sentence" if same else f"sentence number {n}"
        return await client.post(
            URL["prism"] + "/v1/infer", json={"inputs": [{"text": text}], "cache": cache}
        )

    return send


async def _floor(client: httpx.AsyncClient, n: int) -> httpx.Response:
    return await client.get(URL["prism"] + "/healthz")


async def _bare(client: httpx.AsyncClient, n: int) -> httpx.Response:
    return await client.post(
        URL["bare"] + "/infer", json={"inputs": [{"text": f"sentence number {n}"}]}
    )


URL: dict[str, str] = {}


async def main(args: argparse.Namespace) -> None:
    results: list[tuple[str, LoadResult]] = []
    tmp = Path(tempfile.mkdtemp(prefix="prism-bench-"))
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    port = free_port()
    bare = subprocess.Popen([sys.executable, str(Path(__file__).parent / "_bare.py"), str(port)])  # noqa: ASYNC220
    redis = RedisProcess().start()
    gw = GatewayProcess(policy, env={"PRISM_LOG_LEVEL": "WARNING"}).start()
    gw_redis = GatewayProcess(
        policy, redis_url=redis.url, env={"PRISM_LOG_LEVEL": "WARNING"}
    ).start()
    try:
        wait_for_port(port)
        URL["bare"] = f"http://127.0.0.1:{port}"
        plan = [("http floor (prism /healthz)", "prism", _floor, gw)]
        plan.append(("direct (bare app)", "bare", _bare, gw))
        plan.append(("prism, no cache", "prism", _native("bypass", False), gw))
        plan.append(("prism, memory cache hit", "prism", _native("use", True), gw))
        plan.append(("prism, redis cache hit", "prism", _native("use", True), gw_redis))
        for c in args.concurrency:
            for label, _, send, target in plan:
                URL["prism"] = target.url
                print(
                    f"  running {label} at concurrency {c} for {args.seconds:.0f} s ...", flush=True
                )
                results.append(
                    (label, await run_load(label, send, concurrency=c, seconds=args.seconds))
                )
    finally:
        gw.stop()
        gw_redis.stop()
        redis.stop()
        bare.terminate()
        bare.wait(10)

    headers = LOAD_HEADERS
    rows: list[list[object]] = []
    base = {r.concurrency: r for label, r in results if label.startswith("direct")}
    for label, r in results:
        rows.append(load_row(label, r, base[r.concurrency]))
    print()
    print_table(headers, rows)
    path = append_csv("gateway.csv", headers, rows)
    print(f"\nappended {len(rows)} rows to {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    started = time.perf_counter()
    asyncio.run(main(parser.parse_args()))
    print(f"done in {time.perf_counter() - started:.0f} s")
