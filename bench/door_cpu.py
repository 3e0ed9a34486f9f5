"""CPU per request inside the gateway, without HTTP: each door's cache hit and remote miss.

The app (``create_app``, its lifespan run here) is called through its ASGI callable, each
request in a task of its own as uvicorn runs them, ``--concurrency`` at a time, against the
raw-ASGI fake model server of ``bench/http_wrk.py`` (``bench/_raw_asgi.py upstream``, in a
process of its own, with the same policy and bodies). Per row: this process's CPU time per
request (``time.process_time``) over rounds in which the rows take turns (the lowest and the
median are printed: a busy neighbour slows some rounds, rarely all), and the collector's
young-generation collections per 1,000 requests. What uvicorn and the sockets add on top is
``bench/gateway_cpu.py``'s to measure (wrk, ``/proc``).

    python bench/door_cpu.py [--requests 2000] [--rounds 10] [--concurrency 8] [--only TEXT ...]
                             [--code DIR]

``--code DIR`` runs another checkout's gateway (a worktree of main, say) in the same loop:
a change and its baseline, measured alike.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import append_csv, print_table
from bench.http_wrk import POLICY, QUIET, Row, _raw_asgi, plan

HEADERS = ["path", "c", "cpu us/request (lowest)", "median", "young collections / 1,000"]


def rows(only: list[str] | None) -> list[Row]:
    """http_wrk's gateway rows: the doors' memory hits and remote misses."""
    chosen = [
        r for r in plan() if r.server == "prism" and ("memory hit" in r.label or "->" in r.label)
    ]
    return [r for r in chosen if not only or any(o in r.label for o in only)]


class Driver:
    """Requests straight to the ASGI app, as uvicorn hands them over."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.never = asyncio.Event()  # the client stays: receive() waits after the body

    async def request(self, row: Row) -> tuple[int, dict[str, str]]:
        body = row.body
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8080),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "POST",
            "root_path": "",
            "path": row.path,
            "raw_path": row.path.encode(),
            "query_string": b"",
            "headers": [
                (b"host", b"127.0.0.1:8080"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "state": {},
        }
        sent = False
        start: dict[str, Any] = {}

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await self.never.wait()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)

        await asyncio.create_task(self.app(scope, receive, send))
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
        return int(start["status"]), headers

    async def load(self, row: Row, concurrency: int, requests: int) -> None:
        async def worker() -> None:
            for _ in range(requests // concurrency):
                status, _ = await self.request(row)
                if status != 200:
                    raise SystemExit(f"{row.label}: answered {status}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(args: argparse.Namespace, chosen: list[Row]) -> list[list[object]]:
    from prism.gateway.app import create_app
    from prism.gateway.settings import Settings

    upstream, url = _raw_asgi("upstream")
    young = 0

    def count(phase: str, info: dict[str, int]) -> None:
        nonlocal young
        if phase == "start" and info["generation"] == 0:
            young += 1

    try:
        with tempfile.TemporaryDirectory() as folder:
            policy = Path(folder) / "policy.yaml"
            policy.write_text(POLICY.format(url=url))
            logging.getLogger("prism").setLevel(QUIET["PRISM_LOG_LEVEL"])
            app = create_app(Settings(policy=policy, policy_watch_s=0, data_dir=Path(folder)))
            async with app.lifespan():
                driver = Driver(app)
                for row in chosen:  # each path answers 200, each hit row hits
                    for _ in range(2):  # the first fills a hit's entry
                        status, headers = await driver.request(row)
                    if status != 200 or (row.cache and headers["x-prism-cache"] != row.cache):
                        raise SystemExit(f"{row.label}: {status} {headers}")
                    await driver.load(row, 8, 400)  # warm
                cpu: dict[tuple[str, int], list[float]] = {}
                collections: dict[tuple[str, int], int] = {}
                gc.callbacks.append(count)
                try:
                    for c in args.concurrency:
                        for _ in range(args.rounds):
                            for row in chosen:
                                young_before, t0 = young, time.process_time()
                                await driver.load(row, c, args.requests)
                                done = args.requests // c * c
                                key = (row.label, c)
                                cpu.setdefault(key, []).append((time.process_time() - t0) / done)
                                collections[key] = collections.get(key, 0) + young - young_before
                finally:
                    gc.callbacks.remove(count)
    finally:
        upstream.terminate()
        upstream.wait(10)
    table: list[list[object]] = []
    for row in chosen:
        for c in args.concurrency:
            times = cpu[(row.label, c)]
            per_1000 = collections[(row.label, c)] * 1000 / (len(times) * (args.requests // c * c))
            table.append([row.label, c, min(times) * 1e6, statistics.median(times) * 1e6, per_1000])
    return table


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per row and round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8])
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="rows whose label holds one")
    parser.add_argument("--code", type=Path, metavar="DIR", help="the checkout whose gateway runs")
    args = parser.parse_args()
    if args.code is not None:  # its prism first (the helpers above are this checkout's)
        sys.path.insert(0, str(args.code.resolve()))
    import uvloop

    chosen = rows(args.only)
    if not chosen:
        labels = ", ".join(r.label for r in rows(None))
        raise SystemExit(f"no row's label holds any of {args.only}; the rows: {labels}")
    table = uvloop.run(measure(args, chosen))
    print_table(HEADERS, table)
    import prism.gateway

    checkout = Path(prism.gateway.__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    stack = "; ".join(
        [f"python {platform.python_version()}", f"prism at {commit or 'unknown'}"]
        + [f"{n} {version(n)}" for n in ("litestar", "uvloop", "httptools")]
    )
    print(f"rows appended to {append_csv('door_cpu.csv', HEADERS, table, software=stack)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
