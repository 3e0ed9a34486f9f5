"""What the Redis commands Prism issues cost Redis itself (redis-benchmark + INFO commandstats).

For each command shape Prism sends (cache lookup and fill with a 384-float embedding, the
experiment counter push and read, feedback ids, a rate-limit script of the kind managed keys
use), against a fresh ``redis-server`` on loopback:

- ``ops/s``: redis-benchmark's throughput, 50 connections, one command per round trip (how
  Prism sends most of them), then 16 pipelined (how a batch or a counter push goes);
- ``cpu us/op``: the redis-server process's CPU time (user + system, from /proc) over the
  run divided by the commands: everything Redis spends per command, sockets and protocol
  included; robust to a busy machine (time on CPU, not wall time);
- ``us/call``: Redis's time inside the command alone (``INFO commandstats``).

Shard count in docs/scaling.md comes from ``cpu us/op``. The client and Redis share this
machine: ``ops/s`` is a floor for a dedicated Redis node; the CPU columns are what a command
costs wherever it runs.

    .venv/bin/python bench/redis_ops.py [--requests 200000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import append_csv, print_table
from tests.support import RedisProcess

#: a cached 384-float32 embedding, as the codec stores it (header + 1,536 bytes)
VALUE_BYTES = 1_560
KEYSPACE = 100_000
RATE_LIMIT = (
    "local n = redis.call('INCR', KEYS[1]) "
    "if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return n"
)


def cases(value: str) -> list[tuple[str, str, list[str]]]:
    """(what Prism does, the command's name in commandstats, redis-benchmark arguments)."""
    return [
        ("cache lookup, 1 input (MGET 1 key, hit)", "mget", ["MGET", "prism:c:__rand_int__"]),
        ("cache fill (SET value PX ttl)", "set", ["SET", "prism:c:__rand_int__", value, "PX", "3600000"]),
        ("counter push (HINCRBY arm field)", "hincrby", ["HINCRBY", "prism:x:{exp}:arm:a", "requests", "1"]),
        ("counter read (HGETALL arm, ~20 fields)", "hgetall", ["HGETALL", "prism:x:{exp}:arm:b"]),
        ("feedback id (SET EX)", "set", ["SET", "prism:x:req:__rand_int__", '["exp","a"]', "EX", "86400"]),
        ("rate limit (EVAL INCR+PEXPIRE, 1 key)", "eval", ["EVAL", RATE_LIMIT, "1", "prism:{k:__rand_int__}:rl", "1000"]),
    ]  # fmt: skip


def cli(port: int, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True
    ).stdout


def usec_per_call(port: int, command: str) -> float:
    for line in cli(port, "INFO", "commandstats").splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            fields = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
            return float(fields["usec_per_call"])
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def benchmark(port: int, args: list[str], requests: int, pipeline: int) -> float:
    out = subprocess.run(
        [
            *("redis-benchmark", "-p", str(port), "-c", "50", "-n", str(requests)),
            *("-r", str(KEYSPACE), "-P", str(pipeline), "--csv", *args),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # "test","rps",...: the test name may hold unescaped quotes, the numbers never do
    found = re.search(r'","([0-9.]+)","', out.splitlines()[1])
    if found is None:
        raise RuntimeError(f"redis-benchmark printed no rate:\n{out}")
    return float(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000, help="commands per row")
    args = parser.parse_args()
    for tool in ("redis-server", "redis-cli", "redis-benchmark"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install redis-server", file=sys.stderr)
            return 1
    server = RedisProcess().start()
    try:
        port = server.port
        value = "x" * VALUE_BYTES
        # every cache key exists (lookups are hits), the arm hash has ~20 fields
        subprocess.run(
            [
                *("redis-benchmark", "-p", str(port), "-n", str(KEYSPACE * 3)),
                *("-r", str(KEYSPACE), "-P", "64", "-q", "SET", "prism:c:__rand_int__", value),
            ],
            capture_output=True,
            check=True,
        )
        for i in range(20):
            cli(port, "HSET", "prism:x:{exp}:arm:b", f"h{i}", str(i))
        version = cli(port, "INFO", "server").split("redis_version:")[1].split()[0]
        rows: list[list[object]] = []
        for label, command, argv in cases(value):
            assert server.proc is not None
            pid = server.proc.pid
            cli(port, "CONFIG", "RESETSTAT")
            before = cpu_s(pid)
            single = benchmark(port, argv, args.requests, 1)
            cpu_single = (cpu_s(pid) - before) / args.requests * 1e6
            cost = usec_per_call(port, command)
            before = cpu_s(pid)
            piped = benchmark(port, argv, args.requests, 16)
            cpu_piped = (cpu_s(pid) - before) / args.requests * 1e6
            rows.append([label, round(single), cpu_single, round(piped), cpu_piped, cost])
            print(
                f"  {label}: {single:,.0f} ops/s ({cpu_single:.1f} cpu us/op), "
                f"{piped:,.0f} pipelined ({cpu_piped:.1f}), {cost} us in the command"
            )
    finally:
        server.stop()
    headers = [
        "command",
        "ops/s P1",
        "cpu us/op P1",
        "ops/s P16",
        "cpu us/op P16",
        "us/call in command",
    ]
    print_table(headers, rows)
    path = append_csv("redis.csv", headers, rows, software=f"redis-server {version}")
    print(f"rows appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
