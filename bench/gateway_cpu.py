"""Gateway CPU per request, by what the request does: the number pods are sized by.

wrk (one thread, 8 connections) against ``prism serve`` for each kind of request, and the
gateway process's CPU time (user + system, /proc) over the run divided by the requests it
answered. CPU time per request holds on a busy machine where req/s does not, which is why
docs/scaling.md sizes pods from it:

- ``memory hit``: in-process cache hit (no Redis);
- ``redis hit``: the same with one ``redis-server`` (``--redis-url redis://``);
- ``cluster hit``: the same with a 3-master Redis Cluster (``redis+cluster://``);
- ``remote miss``: cache off, every request a call to a fast raw-ASGI model server
  (OpenAI embeddings, 384 floats): the gateway's own share of a miss.

    .venv/bin/python bench/gateway_cpu.py [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import append_csv, print_table
from bench.http_wrk import _lua, _raw_asgi, software, wrk
from tests.redis_cluster import RedisClusterProcesses
from tests.support import GatewayProcess, RedisProcess

POLICY = """
version: 1
models:
  cached:
    versions: {{"1": {{backend: openai, url: "{url}", remote_model: emb, max_connections: 128}}}}
  remote:
    versions: {{"1": {{backend: openai, url: "{url}", remote_model: emb, max_connections: 128}}}}
routes:
  - {{name: cached, match: {{model: cached}}, model: cached, cache: {{ttl_s: 3600}}}}
  - {{name: remote, match: {{model: remote}}, model: remote, cache: {{ttl_s: 0}}}}
"""
QUIET = {"PRISM_LOG_LEVEL": "WARNING", "PRISM_POLICY_WATCH_S": "0"}
BODY = '{{"model": "{model}", "inputs": [{{"text": "a red circle above a blue square"}}]}}'


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def row(label: str, gw: GatewayProcess, model: str, tmp: Path, seconds: int) -> list[object]:
    script = tmp / f"{model}.lua"
    script.write_text(_lua(BODY.format(model=model).encode()))
    wrk(gw.url + "/v1/infer", script, 8, 1)  # warm-up; fills the cache
    assert gw.proc is not None
    before = cpu_s(gw.proc.pid)
    result = wrk(gw.url + "/v1/infer", script, 8, seconds)
    cpu_us = (cpu_s(gw.proc.pid) - before) / result.requests * 1e6
    if result.non_2xx or result.socket_errors:
        raise SystemExit(f"{label}: {result.non_2xx} non-2xx, {result.socket_errors} socket errors")
    return [label, round(result.rps), result.p50_ms, round(cpu_us)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="each row this many times")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        upstream, url = _raw_asgi("upstream")
        redis = RedisProcess().start()
        cluster = RedisClusterProcesses(tmp / "cluster").start()
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY.format(url=url))
        gateways = {
            "memory": GatewayProcess(policy, env=QUIET),
            "redis": GatewayProcess(policy, env=QUIET, redis_url=redis.url),
            "cluster": GatewayProcess(policy, env=QUIET, redis_url=cluster.url),
        }
        rows: list[list[object]] = []
        try:
            for gw in gateways.values():
                gw.start()
            for _ in range(args.rounds):  # interleaved: a noisy minute hits every row alike
                for name, gw in gateways.items():
                    rows.append(row(f"{name} hit", gw, "cached", tmp, args.seconds))
                    print("  ", rows[-1])
                rows.append(row("remote miss", gateways["memory"], "remote", tmp, args.seconds))
                print("  ", rows[-1])
        finally:
            for gw in gateways.values():
                gw.stop()
            cluster.stop()
            redis.stop()
            upstream.kill()
            upstream.wait(10)
    headers = ["request", "req/s (c=8)", "p50 ms", "gateway cpu us/request"]
    rows.sort(key=lambda r: str(r[0]))
    print_table(headers, rows)
    print(f"rows appended to {append_csv('gateway_cpu.csv', headers, rows, software=software())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
