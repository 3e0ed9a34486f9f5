"""Shared helpers for benchmarks: load generation, percentiles, tables and CSV rows."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class LoadResult:
    name: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q / 100 * len(data)))]


async def run_load(
    name: str,
    send: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]],
    *,
    concurrency: int,
    seconds: float,
    max_requests: int = 200_000,
) -> LoadResult:
    """Closed-loop load: ``concurrency`` workers send back to back for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    counter = 0
    # one small pool per 8 workers: httpcore scans every pooled connection on each request,
    # so one pool of 64 connections makes the load generator itself the bottleneck
    shards = -(-concurrency // 8)
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    clients = [httpx.AsyncClient(limits=limits, timeout=30) for _ in range(shards)]
    async with contextlib.AsyncExitStack() as stack:
        for c in clients:
            await stack.enter_async_context(c)
        client = clients[0]
        # warm-up: connections, caches, lazy imports
        for i in range(min(concurrency, 8)):
            await send(client, -1 - i)
        stop = time.perf_counter() + seconds

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal errors, counter
            while time.perf_counter() < stop and counter < max_requests:
                counter += 1
                n = counter
                t0 = time.perf_counter()
                r = await send(client, n)
                latencies.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(clients[i % shards]) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    return LoadResult(name, concurrency, len(latencies), errors, elapsed, latencies)


#: columns of a load table: one row per (run, concurrency), "added" against a baseline run
LOAD_HEADERS = [
    "run",
    "concurrency",
    "requests",
    "errors",
    "req/s",
    "p50 ms",
    "p99 ms",
    "added p50 ms",
]


def load_row(label: str, r: LoadResult, baseline: LoadResult) -> list[object]:
    added = r.pct(50) - baseline.pct(50)
    return [label, r.concurrency, r.requests, r.errors, r.rps, r.pct(50), r.pct(99), added]


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()}cpu"


def versions() -> str:
    import litestar
    import torch

    return f"python {sys.version.split()[0]}; torch {torch.__version__}; litestar {litestar.__version__}"


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for r in cells:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def append_csv(
    file: str, headers: list[str], rows: list[list[object]], *, software: str | None = None
) -> Path:
    """Append rows with machine, versions and date columns; writes the header once.

    ``software``: the versions column when :func:`versions` is not what the run depends on."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / file
    new = not path.exists()
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    software = software or versions()
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow([*headers, "machine", "versions", "date"])
        for r in rows:
            w.writerow(
                [
                    *(f"{c:.4f}" if isinstance(c, float) else c for c in r),
                    machine(),
                    software,
                    stamp,
                ]
            )
    return path
