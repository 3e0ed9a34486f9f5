"""What the auth + limit check adds to one request, measured in-process (a benchmark).

wrk rows (``bench/http_wrk.py``, "keys on: ...") measure the whole server, where a 0.1 ms
difference drowns in the noise of a shared machine. This times the check alone: the real
:class:`AccessMiddleware` around an app shaped like a Redis cache hit, against a real
``redis-server`` on loopback, on uvloop (what ``prism serve`` runs), rounds interleaved so
the cases see the same machine.

The app is what a cache hit does after the middleware, in the order the pipeline does it:
``--work-us`` of Python (half before the cache read: decision and cache keys; half after:
the answer), one pipelined ``MGET`` of a real entry in between, and the wait for the key's
admission (``RequestRecord.admitted``) before the second half. An app that returned at once
would hide what the fast lane's overlap saves: the check's round trip runs while the request
does its own work.

- ``no keys``: the app alone (keys off: no middleware is installed at all);
- ``bootstrap key``: a ``PRISM_ADMIN_KEYS`` key, compared in the process;
- ``managed key``: no limits: the cached record, re-checked by a loop every 0.25 s (no
  round trip of its own);
- ``managed key + limits, waited for``: the same script taking rpm, rpd and a concurrency
  lease, its answer awaited before the app runs (Litestar's routes);
- ``managed key + limits, overlapped``: the same, sent while the app runs (the fast lane);
  the lease is given back after the response, off the request's path, in both;
- ``redis PING``: one bare redis-py round trip, the floor of any redis-py check.

Prints per-call p50/p90 in µs and what each adds over ``no keys`` at p50; appends rows to
``bench/results/auth_overhead.csv``.

    python bench/auth_overhead.py [--rounds 40] [--calls 250] [--work-us 80]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import append_csv, print_table
from tests.support import RedisProcess

ADMIN = "bench-admin-key"


class _Handler:
    opt = {"metered": True}


def _spin(us: float) -> None:
    """``us`` of the event loop's time, as Python work takes it."""
    until = time.perf_counter_ns() + int(us * 1000)
    while time.perf_counter_ns() < until:
        pass


def _scope(key: str | None) -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return {
        "type": "http",
        "path": "/v1/infer",
        "headers": headers,
        "state": {},
        "route_handler": _Handler(),
        "path_params": {},
    }


async def run(args: argparse.Namespace, redis_url: str, tmp: Path) -> list[list[object]]:
    import redis.asyncio as redis

    from prism.gateway.access import KeyRecord, digest, new_secret
    from prism.gateway.auth import Access, AccessMiddleware
    from prism.gateway.cache._reader import PipelinedReader
    from prism.gateway.metrics import Metrics
    from prism.gateway.recording import record_of
    from prism.gateway.settings import Settings

    policy = tmp / "policy.yaml"
    policy.write_text("version: 1\nmodels: {}\nroutes: []\n")
    settings = Settings(policy=policy, admin_keys=[ADMIN], redis_url=redis_url)
    # one reader for the cache read and the limit check, as the runtime shares it
    cache = PipelinedReader(redis_url, timeout_s=1.0)
    access = Access(settings, Metrics(), None, reader=cache)
    entry = "prism:c:bench"
    half = args.work_us / 2

    async def hit(scope: Any, receive: Any, send: Any) -> None:
        _spin(half)  # facts, decision, cache keys
        await cache.mget([entry])
        await record_of(scope).admitted()  # as the pipeline waits, before any work leaves
        _spin(half)  # decode, answer, serialise

    middleware = AccessMiddleware(hit, access)
    overlapped = AccessMiddleware(hit, access, overlap=True)
    keys = {}
    for name, limits in (
        ("plain", {}),
        ("limited", {"rpm": 10**6, "rpd": 10**8, "max_concurrent": 10**4}),
    ):
        key_id, secret = new_secret()
        await access.store.save(KeyRecord(id=key_id, name=name, digest=digest(secret), **limits))
        keys[name] = secret
    access.start()  # the loop that vouches for cached keys without limits
    client = redis.Redis.from_url(redis_url)
    await client.set(entry, b"x" * 1500)  # about one cached embedding

    async def ping(scope: Any, receive: Any, send: Any) -> None:
        await client.ping()

    cases: dict[str, tuple[Any, str | None]] = {
        "no keys": (hit, None),
        "bootstrap key": (middleware, ADMIN),
        "managed key": (middleware, keys["plain"]),
        "managed key + limits, waited for": (middleware, keys["limited"]),
        "managed key + limits, overlapped": (overlapped, keys["limited"]),
        "redis PING": (ping, None),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.rounds + 2):  # two warm-up rounds
        for name, (app, key) in cases.items():
            for _ in range(args.calls):
                scope = _scope(key)
                t0 = time.perf_counter_ns()
                await app(scope, None, None)
                elapsed = time.perf_counter_ns() - t0
                if r >= 2:
                    samples[name].append(elapsed / 1000)
                if access._releases:  # leases go back between calls, outside the timing
                    await asyncio.gather(*access._releases)
    await client.aclose()
    await cache.aclose()
    await access.aclose()
    base = statistics.median(samples["no keys"])
    rows: list[list[object]] = []
    for name, values in samples.items():
        values.sort()
        p50 = statistics.median(values)
        p90 = values[int(0.9 * len(values))]
        rows.append([name, len(values), round(p50, 1), round(p90, 1), round(p50 - base, 1)])
    return rows


def main(args: argparse.Namespace) -> int:
    import tempfile

    import uvloop

    server = RedisProcess().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = uvloop.run(run(args, server.url, Path(tmp)))
    finally:
        server.stop()
    headers = ["case", "calls", "p50 us", "p90 us", "added p50 us"]
    print_table(headers, rows)
    print("\nthe machine is shared and noisy: compare rows of one run, not numbers across runs")
    path = append_csv("auth_overhead.csv", headers, rows)
    print(f"appended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=250, help="calls per case and round")
    parser.add_argument(
        "--work-us",
        type=float,
        default=80,
        help="the app's own Python per call (about a cache hit's: bench/README.md)",
    )
    sys.exit(main(parser.parse_args()))
