"""What one upstream call costs the gateway's process, per HTTP client (a benchmark, not a test).

A remote miss used to spend most of its time in the client that calls the model server. This
sends the same OpenAI embeddings request, one after another on one kept-alive connection, to the
raw ASGI upstream of ``bench/_raw_asgi.py`` with each client in turn, in one run: httpx (what
Prism uses for https:// upstreams), httpcore (the transport under httpx, without httpx's
request/response models), aiohttp (already installed with the dev tools) for scale, and Prism's
lean client of plain http:// upstreams (``backends/_plain_http1.py``), each on the default
asyncio loop and on uvloop (what ``prism serve`` runs). It prints microseconds per call and
appends rows to ``bench/results/http_clients.csv``.

    python bench/http_clients.py [--calls 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import append_csv, print_table
from tests.support import free_port, wait_for_port

BODY = json.dumps(
    {"model": "fake", "input": ["a red circle"], "encoding_format": "base64"}
).encode()
HEADERS = {"content-type": "application/json"}


async def _httpx(url: str, calls: int) -> float:
    import httpx

    async with httpx.AsyncClient() as client:
        await client.post(url, content=BODY, headers=HEADERS)
        start = time.perf_counter()
        for _ in range(calls):
            r = await client.post(url, content=BODY, headers=HEADERS)
            r.raise_for_status()
        return time.perf_counter() - start


async def _httpcore(url: str, calls: int) -> float:
    import httpcore

    async with httpcore.AsyncConnectionPool() as pool:
        await pool.request("POST", url, content=BODY, headers=HEADERS)
        start = time.perf_counter()
        for _ in range(calls):
            r = await pool.request("POST", url, content=BODY, headers=HEADERS)
            assert r.status == 200
        return time.perf_counter() - start


async def _aiohttp(url: str, calls: int) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=BODY, headers=HEADERS) as r:
            await r.read()
        start = time.perf_counter()
        for _ in range(calls):
            async with session.post(url, data=BODY, headers=HEADERS) as r:
                assert r.status == 200
                await r.read()
        return time.perf_counter() - start


async def _lean(url: str, calls: int) -> float:
    from prism.backends._plain_http1 import Http1Pool

    base, _, path = url.partition("/v1/")
    pool = Http1Pool(base, max_connections=8)

    async def post() -> int:
        ends_by = time.perf_counter() + 30
        fut = pool.exchange(
            "POST", "/v1/" + path, content=BODY, headers=HEADERS, timeout_s=30, ends_by=ends_by
        )
        return (await fut).status_code

    try:
        await post()
        start = time.perf_counter()
        for _ in range(calls):
            assert await post() == 200
        return time.perf_counter() - start
    finally:
        await pool.aclose()


CLIENTS = {"httpx": _httpx, "httpcore": _httpcore, "aiohttp": _aiohttp, "prism lean": _lean}
LOOPS = ("asyncio", "uvloop")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="sequential calls per client")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (clients interleaved)")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench._raw_asgi", "upstream", str(port)],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        best: dict[tuple[str, str], float] = {}
        for r in range(args.rounds):
            for loop in LOOPS:
                for client, run in CLIENTS.items():
                    name = f"{client} ({loop})"
                    key = (client, loop)
                    if loop == "uvloop":
                        seconds = uvloop.run(run(url, args.calls))
                    else:
                        seconds = asyncio.run(run(url, args.calls))
                    us = seconds / args.calls * 1e6
                    best[key] = min(best.get(key, us), us)
                    print(f"round {r + 1}: {name:20s} {us:7.0f} µs/call", flush=True)
    finally:
        server.terminate()
        server.wait(10)
    # "x httpx": against httpx on the same loop
    headers = ["client", "calls", "best µs/call", "x httpx"]
    rows: list[list[object]] = [
        [f"{client} ({loop})", args.calls, round(us), round(us / best[("httpx", loop)], 2)]
        for (client, loop), us in best.items()
    ]
    print_table(headers, rows)
    path = append_csv("http_clients.csv", headers, rows)
    print(f"rows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
