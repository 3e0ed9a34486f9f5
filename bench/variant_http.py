"""A variant built by ``prism optimize`` and its source, served by one ``prism serve``, compared
through the gateway: embedding by embedding, then timed side by side under ``wrk``.

    .venv/bin/prism optimize text-embed@1 --variant onnx-int8 --out build/opt/minilm-onnx-int8
    .venv/bin/python -m bench.variant_http build/opt/minilm-onnx-int8 [--seconds 5 --rounds 3]

The gateway serves MiniLM as version ``1`` (torch fp32, ``kind: text-encoder``) and the variant
as ``1-variant`` (the report's ``version_spec``). Agreement: the fixed sample of
``prism optimize`` (192 sentences) sent through ``POST /v1/infer`` to each version, the cosine
of each variant embedding with the source's. Speed: ``wrk -t1 -cN`` posting ``--batch``
sentences per request (every n-th of the sample, short queries to paragraphs; ``"cache":
"bypass"``, so every request is computed) to one version, then the other, the order flipped
every round; sentences per second is requests/s times the batch, and the speed-up is the median
of the rounds' own ratios. Prints a table; appends CSV rows to ``results/variant_http.csv``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import append_csv, print_table
from bench.http_wrk import _lua, software, wrk
from prism.backends.optimize import agreement, text_sample
from tests.support import GatewayProcess

SOURCE, VARIANT = "1", "1-variant"
POLICY = """
version: 1
models:
  text-embed:
    task: embed
    modalities: [text]
    versions:
      "{source}": {{backend: local, kind: text-encoder, source: minilm, device: cpu}}
      "{variant}": {spec}
routes:
  - {{name: text, match: {{modality: [text], task: embed}}, model: text-embed}}
"""
HEADERS = [
    "version",
    "c",
    "batch",
    "req/s",
    "sentences/s",
    "p50 ms",
    "p99 ms",
    "speed-up",
    "cosine mean",
    "cosine min",
    "rounds",
    "seconds",
]


def _body(version: str, texts: list[str]) -> bytes:
    doc = {
        "model": "text-embed",
        "version": version,
        "inputs": [{"text": t} for t in texts],
        "cache": "bypass",
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _embed(url: str, version: str, texts: list[str]) -> np.ndarray:
    rows = []
    for start in range(0, len(texts), 32):
        r = httpx.post(
            url + "/v1/infer",
            content=_body(version, texts[start : start + 32]),
            headers={"Content-Type": "application/json"},
            timeout=120,
        )
        if r.status_code != 200:
            raise SystemExit(f"version {version} answered {r.status_code}: {r.text[:500]}")
        doc = r.json()
        if doc["version"] != version:
            raise SystemExit(f"asked for version {version}, served {doc['version']}")
        rows += [o["embedding"] for o in doc["outputs"]]
    return np.asarray(rows, dtype=np.float64)


def main(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: run 'make bench-http' (installs it when root)", file=sys.stderr
        )
        return 1
    report_file = args.variant / "report.json"
    if not report_file.exists():
        print(
            f"{report_file} not found: build the variant first, e.g.\n"
            f"  .venv/bin/prism optimize text-embed@1 --variant onnx-int8 --out {args.variant}",
            file=sys.stderr,
        )
        return 1
    report = json.loads(report_file.read_text())
    spec = {**report["version_spec"], "path": str(args.variant.resolve())}
    tmp = Path(tempfile.mkdtemp(prefix="prism-bench-variant-"))
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.format(source=SOURCE, variant=VARIANT, spec=json.dumps(spec)))
    texts = text_sample()
    print(f"serving text-embed {SOURCE} (torch fp32) and {VARIANT} ({report['variant']})")
    gateway = GatewayProcess(policy, env={"PRISM_LOG_LEVEL": "WARNING"}).start(ready_timeout_s=300)
    try:
        print(f"agreement through the gateway: {len(texts)} sentences to each version")
        agreed = agreement(_embed(gateway.url, SOURCE, texts), _embed(gateway.url, VARIANT, texts))
        # every n-th sentence: short queries to paragraphs, as in the whole sample
        timed = texts[:: max(len(texts) // args.batch, 1)][: args.batch]
        scripts = {}
        for version in (SOURCE, VARIANT):
            scripts[version] = tmp / f"{version}.lua"
            scripts[version].write_text(_lua(_body(version, timed)))
        runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        total = len(args.concurrency) * args.rounds * 2
        n = 0
        for c in args.concurrency:
            for r in range(args.rounds):
                order = (SOURCE, VARIANT) if r % 2 == 0 else (VARIANT, SOURCE)
                for version in order:
                    n += 1
                    print(
                        f"  [{n:2}/{total}] c={c} version {version}: {args.seconds} s", flush=True
                    )
                    url = gateway.url + "/v1/infer"
                    wrk(url, scripts[version], c, 1)  # warm-up at this concurrency
                    got = wrk(url, scripts[version], c, args.seconds)
                    if got.non_2xx or got.socket_errors:
                        raise SystemExit(f"version {version}: {got.non_2xx} non-2xx answers")
                    runs.setdefault((version, c), []).append((got.rps, got.p50_ms, got.p99_ms))
    finally:
        gateway.stop()
    table: list[list[object]] = []
    for c in args.concurrency:
        source, variant = runs[(SOURCE, c)], runs[(VARIANT, c)]
        speedup = statistics.median(v[0] / s[0] for s, v in zip(source, variant, strict=True))
        for version, got in ((SOURCE, source), (VARIANT, variant)):
            rps = statistics.median(g[0] for g in got)
            table.append(
                [
                    version if version == SOURCE else f"{version} ({report['variant']})",
                    c,
                    args.batch,
                    rps,
                    rps * args.batch,
                    statistics.median(g[1] for g in got),
                    statistics.median(g[2] for g in got),
                    1.0 if version == SOURCE else speedup,
                    "" if version == SOURCE else f"{agreed.cosine_mean:.4f}",
                    "" if version == SOURCE else f"{agreed.cosine_min:.4f}",
                    args.rounds,
                    args.seconds,
                ]
            )
    print()
    print_table(HEADERS, table)
    path = append_csv("variant_http.csv", HEADERS, table, software=software())
    print(f"\nappended {len(table)} rows to {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variant", type=Path, help="the folder prism optimize wrote (--out)")
    parser.add_argument("--batch", type=int, default=32, help="sentences per request")
    parser.add_argument("--seconds", type=int, default=5, help="seconds measured per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per version, taking turns")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    t0 = time.perf_counter()
    status = main(parser.parse_args())
    print(f"done in {time.perf_counter() - t0:.0f} s")
    sys.exit(status)
