"""Requests/s and latency under wrk: Prism's HTTP paths beside a raw-ASGI ceiling (a benchmark).

One run starts, on loopback:

- ``ceiling``: a raw ASGI app answering a constant JSON body (``bench/_raw_asgi.py``) on
  uvicorn + httptools + uvloop, the stack ``prism serve`` runs on: no server can do less;
- ``litestar floor``: the same constant answer from a bare Litestar app (one handler, no
  middleware): what any Litestar app costs before it does anything of its own;
- ``upstream``: a raw ASGI model server with constant answers (OpenAI ``/v1/embeddings`` and
  KServe v2 ``/v2/models/{m}/infer``, 384-d), called directly with the body Prism sends it;
- ``prism serve`` routing to that upstream: ``/v1/infer`` with the ``openai`` and the ``kserve``
  backend, the OpenAI door (``/v1/embeddings``) and the KServe door (``/v2/models/{m}/infer``),
  all cache-off (route ``ttl_s: 0``), then ``/v1/infer`` cache hits (the same body every time)
  with the in-process cache (and the same hits through the OpenAI and KServe doors) and with
  a real ``redis-server``, and with ``--workers 2``;
- the same Redis cache hits on a gateway with keys on (``PRISM_ADMIN_KEYS``, and
  ``PRISM_REQUIRE_KEY=false`` so a row without a key runs there too): no key, a bootstrap key
  (compared in the process), a managed key without limits (no round trip of its own) and
  one with rpm/rpd/max_concurrent limits (one Lua script in Redis per request, its round
  trip overlapped with the request's own work on the fast lane); their "added p50" is over
  the Redis-hit row of the gateway without keys, measured in the same run.

Every row is ``wrk -t1 -cN -dSs --latency`` with a Lua script for the POST body, after a
warm-up at the same concurrency. Each path is checked once before it is loaded (status, and
``x-prism-cache`` where the row is about the cache). Prints a table (requests/s as a fraction
of the ceiling at the same concurrency; added p50 over the direct upstream call for the
cache-off rows) and appends rows to ``bench/results/http.csv``.

    python bench/http_wrk.py [--seconds 10] [--warmup 3] [--concurrency 1 8 64] [--only TEXT ...]
                             [--baseline DIR] [--rounds N]

``--baseline DIR`` runs each row of the plain, the Redis and the keyed gateway a second time,
right after, on the code of another checkout (``git worktree add ../main main``): a change and
what it changes, measured side by side. Only the servers the chosen rows need are started.
``--rounds N`` measures every row N times, the rows taking turns, and reports each row's median
run: one slow minute on a shared machine then moves one run of each row, not the whole of a few.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import append_csv, machine, print_table
from tests.support import ROOT, GatewayProcess, RedisProcess, free_port, wait_for_port

POLICY = """
version: 1
models:
  via-openai:
    versions: {{"1": {{backend: openai, url: "{url}", remote_model: emb, max_connections: 128}}}}
  via-kserve:
    versions: {{"1": {{backend: kserve, url: "{url}", remote_model: emb, max_connections: 128}}}}
  cached:
    versions: {{"1": {{backend: openai, url: "{url}", remote_model: emb, max_connections: 128}}}}
routes:
  # ttl 0: every request is an upstream call, whichever door it comes in by
  - {{name: openai, match: {{model: via-openai}}, model: via-openai, cache: {{ttl_s: 0}}}}
  - {{name: kserve, match: {{model: via-kserve}}, model: via-kserve, cache: {{ttl_s: 0}}}}
  - {{name: cached, match: {{model: cached}}, model: cached, cache: {{ttl_s: 3600}}}}
"""
TEXT = "a red circle above a blue square"
# the watcher polls the policy file; nothing changes it here
QUIET = {"PRISM_LOG_LEVEL": "WARNING", "PRISM_POLICY_WATCH_S": "0"}
CEILING = "ceiling: raw ASGI static"
LITESTAR = "litestar floor: bare handler"
UP_OPENAI = "upstream direct: openai"
UP_KSERVE = "upstream direct: kserve"


def _json(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _kserve_upstream_body() -> bytes:
    """Exactly what Prism's KServe backend sends for one text (backends/_kserve.py)."""
    from prism.backends import InputItem
    from prism.backends._v2 import items_to_tensors, write_tensors

    entries, _ = write_tensors(items_to_tensors([InputItem(text=TEXT)]), {})
    return _json({"inputs": entries, "parameters": {"task": "embed", "binary_data_output": True}})


@dataclass(frozen=True)
class Row:
    """One path under load: where it goes, what it sends, what it is compared with."""

    label: str
    server: str  # key of the base URL: ceiling, upstream, prism, prism-redis, prism-workers
    path: str
    body: bytes
    #: the direct-upstream row whose p50 this row adds to (cache-off Prism rows only)
    baseline: str | None = None
    #: x-prism-cache the check must see (a second identical request, for hits)
    cache: str | None = None
    #: request headers (an API key)
    headers: tuple[tuple[str, str], ...] = ()


REDIS_HIT = "prism /v1/infer redis hit"
#: the bootstrap admin key of the keyed gateway, and a managed key's limits (never reached)
BENCH_ADMIN_KEY = "bench-admin-key"
BENCH_LIMITS = {"rpm": 1_000_000, "rpd": 100_000_000, "max_concurrent": 10_000}


def plan(managed_key: str = "", unlimited_key: str = "") -> list[Row]:
    infer = "/v1/infer"

    def native(model: str) -> bytes:
        return _json({"model": model, "inputs": [{"text": TEXT}]})

    openai_up = _json({"model": "emb", "input": [TEXT], "encoding_format": "base64"})
    text_tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}
    kserve_door = _json({"inputs": [text_tensor]})
    return [
        Row(CEILING, "ceiling", infer, native("via-openai")),
        Row(LITESTAR, "litestar", infer, native("via-openai")),
        Row(UP_OPENAI, "upstream", "/v1/embeddings", openai_up),
        Row(UP_KSERVE, "upstream", "/v2/models/emb/infer", _kserve_upstream_body()),
        Row("prism /v1/infer -> openai", "prism", infer, native("via-openai"), UP_OPENAI, "bypass"),
        Row("prism /v1/infer -> kserve", "prism", infer, native("via-kserve"), UP_KSERVE, "bypass"),
        Row(
            "prism /v1/embeddings (openai door) -> openai",
            "prism",
            "/v1/embeddings",
            _json({"model": "via-openai", "input": [TEXT]}),
            UP_OPENAI,
        ),
        Row(
            "prism /v2 infer (kserve door) -> kserve",
            "prism",
            "/v2/models/via-kserve/infer",
            kserve_door,
            UP_KSERVE,
        ),
        Row("prism /v1/infer memory hit", "prism", infer, native("cached"), cache="hit"),
        Row(
            "prism /v1/embeddings (openai door) memory hit",
            "prism",
            "/v1/embeddings",
            _json({"model": "cached", "input": [TEXT]}),
            cache="hit",
        ),
        Row(
            "prism /v2 infer (kserve door) memory hit",
            "prism",
            "/v2/models/cached/infer",
            kserve_door,
            cache="hit",
        ),
        Row(REDIS_HIT, "prism-redis", infer, native("cached"), cache="hit"),
        Row("prism --workers 2 /v1/infer memory hit", "prism-workers", infer, native("cached")),
        Row(
            "keys on: redis hit, no key",
            "prism-keys",
            infer,
            native("cached"),
            REDIS_HIT,
            "hit",
        ),
        Row(
            "keys on: redis hit, bootstrap key",
            "prism-keys",
            infer,
            native("cached"),
            REDIS_HIT,
            "hit",
            (("Authorization", f"Bearer {BENCH_ADMIN_KEY}"),),
        ),
        Row(
            "keys on: redis hit, managed key, no limits",
            "prism-keys",
            infer,
            native("cached"),
            REDIS_HIT,
            "hit",
            (("Authorization", f"Bearer {unlimited_key}"),),
        ),
        Row(
            "keys on: redis hit, managed key + limits",
            "prism-keys",
            infer,
            native("cached"),
            REDIS_HIT,
            "hit",
            (("Authorization", f"Bearer {managed_key}"),),
        ),
    ]


#: the servers whose rows are run again on the baseline checkout (``--baseline``)
BASELINE_SERVERS = {
    "prism": "baseline",
    "prism-redis": "baseline-redis",
    "prism-keys": "baseline-keys",
}


def with_baseline(rows: list[Row]) -> list[Row]:
    """Each plain, Redis and keyed gateway row, followed by the same row on the baseline
    checkout (measured right after it, so both see the same machine); a baseline row's
    "added p50" is over the baseline's own row where it has one (keys on: its Redis hit)."""
    servers = {r.label: r.server for r in rows}
    out: list[Row] = []
    for row in rows:
        out.append(row)
        if row.server in BASELINE_SERVERS:
            server = BASELINE_SERVERS[row.server]
            over = row.baseline
            if over is not None and servers.get(over) in BASELINE_SERVERS:
                over = f"baseline: {over}"
            out.append(replace(row, label=f"baseline: {row.label}", server=server, baseline=over))
    return out


def selected(rows: list[Row], only: list[str] | None) -> list[Row]:
    """The rows whose label holds one of ``only`` (all when None), with the ceiling and the
    baselines they are compared with."""
    if not only:
        return rows
    keep = {r.label for r in rows if any(o in r.label for o in only)}
    keep |= {CEILING} | {r.baseline for r in rows if r.label in keep and r.baseline}
    return [r for r in rows if r.label in keep]


# --- wrk ----------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int  # wrk counts answers with status >= 400
    socket_errors: int


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _lua(body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> str:
    # a long bracket with a level: JSON never contains "]==]"
    extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers)
    return (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"{extra}"
        f"wrk.body = [==[{body.decode()}]==]\n"
    )


def _parse(out: str) -> WrkResult:
    def number(pattern: str) -> str:
        found = re.search(pattern, out, re.M)
        if found is None:
            raise RuntimeError(f"wrk output without {pattern!r}:\n{out}")
        return found.group(1)

    def pct(q: str) -> float:
        found = re.search(rf"^\s*{q}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if found is None:
            raise RuntimeError(f"wrk output without the {q}% latency:\n{out}")
        return float(found.group(1)) * _UNIT_MS[found.group(2)]

    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return WrkResult(
        requests=int(number(r"(\d+) requests in")),
        rps=float(number(r"^Requests/sec:\s+([\d.]+)")),
        p50_ms=pct("50"),
        p99_ms=pct("99"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sockets.groups()) if sockets else 0,
    )


def wrk(url: str, script: Path, connections: int, seconds: int) -> WrkResult:
    # one thread: on a small machine a second wrk thread only takes a core from the servers
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    done = subprocess.run(
        [*cmd, "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}{done.stdout}")
    return _parse(done.stdout)


def wrk_version() -> str:
    # `wrk -v` prints "wrk <version> [epoll] Copyright ..." and exits 1
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
    return out[1] if len(out) > 1 else "unknown"


def software() -> str:
    names = ("litestar", "uvicorn", "uvloop", "httptools")
    return "; ".join(
        [f"python {platform.python_version()}"]
        + [f"{n} {version(n)}" for n in names]
        + [f"wrk {wrk_version()}"]
    )


# --- servers --------------------------------------------------------------------------------


def _raw_asgi(app: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench._raw_asgi", app, str(port)], cwd=ROOT)
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.kill()
        proc.wait(10)
        raise
    return proc, f"http://127.0.0.1:{port}"


def _wait_for_workers(gw: GatewayProcess, workers: int, timeout_s: float = 120) -> None:
    """/readyz answers once one worker is up; a row over two needs both serving."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gw.log.read_text().count("Application startup complete.") >= workers:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{workers} workers not up: {gw.log.read_text()[-2000:]}")


def check(row: Row, url: str) -> None:
    """One request before the load: a benchmark of error answers is worthless."""
    headers = {"Content-Type": "application/json", **dict(row.headers)}
    r = httpx.post(url + row.path, content=row.body, headers=headers, timeout=30)
    if row.cache == "hit":  # the first one fills the cache
        r = httpx.post(url + row.path, content=row.body, headers=headers, timeout=30)
    if not 200 <= r.status_code < 300:
        raise SystemExit(f"{row.label}: {url + row.path} answered {r.status_code}: {r.text[:500]}")
    got = r.headers.get("x-prism-cache")
    if row.cache is not None and got != row.cache:
        raise SystemExit(f"{row.label}: x-prism-cache is {got!r}, expected {row.cache!r}")


# --- the run --------------------------------------------------------------------------------

HEADERS = [
    "path",
    "c",
    "requests",
    "req/s",
    "p50 ms",
    "p99 ms",
    "x ceiling",
    "added p50 ms",
    "non-2xx",
    "socket errors",
    "seconds",
]


def measure(
    args: argparse.Namespace, urls: dict[str, str], tmp: Path, keys: tuple[str, str]
) -> list[list[object]]:
    rows = selected(plan(*keys), args.only)
    if args.baseline:
        rows = with_baseline(rows)
    scripts = {}
    for i, row in enumerate(rows):
        check(row, urls[row.server])
        scripts[row.label] = tmp / f"row-{i}.lua"
        scripts[row.label].write_text(_lua(row.body, row.headers))
    total = len(rows) * len(args.concurrency) * args.rounds
    minutes = total * (args.seconds + args.warmup) / 60
    print(f"{total} rows, about {minutes:.0f} min", flush=True)
    runs: dict[tuple[str, int], list[WrkResult]] = {}
    n = 0
    for c in args.concurrency:
        # the rounds interleaved: a neighbour busy for a minute slows one run of each row,
        # not every run of some rows
        for _ in range(args.rounds):
            for row in rows:
                n += 1
                print(
                    f"  [{n:2}/{total}] c={c:<3} {row.label}: "
                    f"{args.warmup} s warm-up + {args.seconds} s ...",
                    flush=True,
                )
                url = urls[row.server] + row.path
                if args.warmup > 0:
                    wrk(url, scripts[row.label], c, args.warmup)
                runs.setdefault((row.label, c), []).append(
                    wrk(url, scripts[row.label], c, args.seconds)
                )
    # each row's run with the median requests/s (its own latencies with it)
    results = {k: sorted(v, key=lambda r: r.rps)[len(v) // 2] for k, v in runs.items()}
    table: list[list[object]] = []
    for row in rows:
        for c in args.concurrency:
            r = results[(row.label, c)]
            ceiling = results[(CEILING, c)].rps
            added = r.p50_ms - results[(row.baseline, c)].p50_ms if row.baseline else ""
            ratio = r.rps / ceiling if ceiling else float("nan")
            numbers = [r.requests, round(r.rps), r.p50_ms, r.p99_ms, ratio, added]
            table.append([row.label, c, *numbers, r.non_2xx, r.socket_errors, args.seconds])
    return table


def main(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: run 'make bench-http' (installs it when root)", file=sys.stderr
        )
        return 1
    stack = software()
    print(f"machine: {machine()}; {stack}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="prism-bench-http-"))
    started: list[subprocess.Popen[bytes]] = []
    gateways: list[GatewayProcess] = []
    redis = None
    # only the servers the chosen rows ask (a gateway idling still takes a share of 2 cores)
    rows = selected(plan(), args.only)
    needed = {r.server for r in (with_baseline(rows) if args.baseline else rows)}
    try:
        static, ceiling_url = _raw_asgi("static")
        started.append(static)
        urls = {"ceiling": ceiling_url}
        if "litestar" in needed:
            bare, urls["litestar"] = _raw_asgi("litestar")
            started.append(bare)
        upstream, urls["upstream"] = _raw_asgi("upstream")  # every gateway's models call it
        started.append(upstream)
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY.format(url=urls["upstream"]))
        if needed & {"prism-redis", "prism-keys", "baseline-redis", "baseline-keys"}:
            redis = RedisProcess().start()
        keys_env = {
            **QUIET,
            "PRISM_ADMIN_KEYS": json.dumps([BENCH_ADMIN_KEY]),
            "PRISM_REQUIRE_KEY": "false",
        }
        redis_url = redis.url if redis is not None else None
        # INFO: the workers' "startup complete" lines say when both serve
        workers_env = {**QUIET, "PRISM_WORKERS": "2", "PRISM_LOG_LEVEL": "INFO"}
        servers: dict[str, tuple[str | None, dict[str, str], Path]] = {
            "prism": (None, QUIET, ROOT),
            "prism-redis": (redis_url, QUIET, ROOT),
            "prism-workers": (None, workers_env, ROOT),
            "prism-keys": (redis_url, keys_env, ROOT),
        }
        if args.baseline:
            # its own cache prefix is not needed: the same bodies give the same entries; the
            # keyed one reads the same managed keys from the same Redis
            servers |= {
                "baseline": (None, QUIET, args.baseline),
                "baseline-redis": (redis_url, QUIET, args.baseline),
                "baseline-keys": (redis_url, keys_env, args.baseline),
            }
        for name, (url, env, root) in servers.items():
            if name not in needed:
                continue
            print(f"starting prism serve: {name} ({root})", flush=True)
            gateway = GatewayProcess(policy, redis_url=url, env=env, root=root).start()
            gateways.append(gateway)
            urls[name] = gateway.url
            if name == "prism-workers":
                _wait_for_workers(gateway, 2)
        keys = ("", "")
        if "prism-keys" in urls:
            made = [
                httpx.post(
                    urls["prism-keys"] + "/admin/keys",
                    json={"name": "bench", **limits},
                    headers={"Authorization": f"Bearer {BENCH_ADMIN_KEY}"},
                )
                for limits in (BENCH_LIMITS, {})
            ]
            for answer in made:
                answer.raise_for_status()
            keys = (made[0].json()["key"], made[1].json()["key"])
        table = measure(args, urls, tmp, keys)
    finally:
        for g in gateways:
            g.stop()
        if redis is not None:
            redis.stop()
        for p in started:
            p.terminate()
            p.wait(10)
    print()
    print_table(HEADERS, table)
    failed = sum(n for r in table for n in r[-3:-1] if isinstance(n, int))
    if failed:
        print(f"\nWARNING: {failed} non-2xx answers or socket errors: those rows measure errors")
    path = append_csv("http.csv", HEADERS, table, software=stack)
    print(f"\nappended {len(table)} rows to {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="seconds measured per row")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per row")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="TEXT",
        help="run only the rows whose label holds one of these (plus the ceiling and their "
        "baselines), e.g. --only 'redis hit'",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every row this many times, the rows taking turns, and report the run "
        "with the median requests/s (on a shared machine: 3 or more)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="another checkout of Prism (a worktree of the main branch, say): each row of the "
        "plain, the Redis and the keyed gateway is run again right after on that checkout's code, "
        "labelled 'baseline: ...', so the two are compared on the same machine at the same time",
    )
    t0 = time.perf_counter()
    status = main(parser.parse_args())
    print(f"done in {time.perf_counter() - t0:.0f} s")
    sys.exit(status)
