"""What a gateway costs to hold: RSS at ready and after a load, and time to ready (a benchmark).

Three gateways, one after the other, each a real ``prism serve`` on loopback:

- ``remote-only``: a policy with one remote ``openai`` model, in front of a raw-ASGI upstream
  (``bench/_raw_asgi.py upstream``, its own process), run from the dev venv (every extra
  installed: what matters is that none is imported);
- ``remote-only, slim install``: the same, run by ``build/venv-slim/bin/prism`` (the core
  distribution from ``requirements/slim.txt``; skipped when that venv is missing: run
  ``tests/test_slim_install.py`` or ``make venv-slim SLIM=build/venv-slim`` first);
- ``default policy``: ``policies/default.yaml`` (local MiniLM, the demo CLIP, the recommender).

For each: ``--starts`` cold starts, each timed from ``Popen`` to the first 200 on ``/readyz``
(polled every 10 ms) with ``VmRSS`` read from ``/proc`` at that moment (medians reported);
and the CPU time it had used by then (user + system, from ``/proc``: the figure a busy machine
does not distort); then one more start loaded by ``wrk -t1 -cN`` for ``--load-seconds`` (default 240) on
``POST /v1/infer`` with a different text every request, so every request is a cache miss that
goes to the model and fills the in-process cache (``PRISM_CACHE_MAX_*``); RSS after the load
and the peak (``VmHWM``). Whether torch is mapped is read from ``/proc/PID/maps``. The 1-minute
load average before each gateway is in the row: on a shared machine the times are only as good
as it. Prints a table and appends rows to ``bench/results/slim.csv``.

    python bench/slim.py [--load-seconds 240] [--starts 3] [--connections 8] [--only remote]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import append_csv, machine, print_table
from tests.support import ROOT, free_port, wait_for_port

REMOTE = """
version: 1
models:
  remote-embed:
    task: embed
    modalities: [text]
    versions: {{"1": {{backend: openai, url: "{url}", remote_model: emb, max_connections: 64}}}}
routes:
  - {{name: text, match: {{modality: [text]}}, model: remote-embed, cache: {{ttl_s: 3600}}}}
"""
# a new text every request: each one is a miss that reaches the model and adds a cache entry
LUA = """
counter = 0
request = function()
  counter = counter + 1
  local body = '{"inputs": [{"text": "item number ' .. counter .. ' of the load"}]}'
  return wrk.format("POST", "/v1/infer", {["Content-Type"] = "application/json"}, body)
end
"""
QUIET = {"PRISM_LOG_LEVEL": "WARNING", "PRISM_POLICY_WATCH_S": "0"}
SLIM_VENV = ROOT / "build" / "venv-slim"


@dataclass(frozen=True)
class Gateway:
    label: str
    command: list[str]  # the prism executable (or python -m ...)
    policy: Path
    cwd: Path


def _kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
    assert found is not None, field
    return int(found.group(1))


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used: what start-up costs, whatever else
    runs on the machine, unlike the wall-clock time to ready."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _torch_mapped(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


class Running:
    """One ``prism serve`` process, started and timed to ready."""

    def __init__(self, gw: Gateway, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [*gw.command, "serve", "--policy", str(gw.policy), "--port", str(self.port)]
        cmd += ["--data-dir", str(ROOT)]
        env = {**_environ(), **QUIET}
        start = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, cwd=gw.cwd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        with httpx.Client(timeout=1) as client:
            while True:
                if self.proc.poll() is not None:
                    raise SystemExit(f"{gw.label}: prism serve exited: {log.read_text()[-2000:]}")
                try:
                    if client.get(self.url + "/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - start > 300:
                    self.stop()
                    raise SystemExit(f"{gw.label}: not ready after 300 s")
                time.sleep(0.01)
        self.ready_s = time.perf_counter() - start
        self.rss_ready_mib = _kib(self.proc.pid, "VmRSS") / 1024
        self.cpu_ready_s = _cpu_s(self.proc.pid)
        self.torch = _torch_mapped(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _wrk(url: str, script: Path, connections: int, seconds: int) -> tuple[int, float, str]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    done = subprocess.run(
        [*cmd, "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr}{done.stdout}")

    def number(pattern: str) -> str:
        found = re.search(pattern, done.stdout)
        if found is None:
            raise RuntimeError(f"wrk output without {pattern!r}:\n{done.stdout}")
        return found.group(1)

    requests, rps = int(number(r"(\d+) requests in")), float(number(r"Requests/sec:\s+([\d.]+)"))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", done.stdout)
    return requests, rps, non_2xx.group(1) if non_2xx else "0"


def measure(gw: Gateway, args: argparse.Namespace, tmp: Path) -> list[object]:
    log = tmp / f"{re.sub(r'[^a-z]+', '-', gw.label)}.log"
    load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
    starts = []
    for i in range(args.starts):
        run = Running(gw, log)
        run.stop()
        starts.append(run)
        print(f"  {gw.label}: start {i + 1}: ready in {run.ready_s:.2f} s "
              f"({run.cpu_ready_s:.2f} CPU s), {run.rss_ready_mib:.0f} MiB", flush=True)  # fmt: skip
    run = Running(gw, log)
    try:
        check = httpx.post(run.url + "/v1/infer", json={"inputs": [{"text": "check"}]}, timeout=60)
        if check.status_code != 200:
            raise SystemExit(f"{gw.label}: /v1/infer answered {check.status_code}: {check.text}")
        script = tmp / "load.lua"
        script.write_text(LUA)
        print(f"  {gw.label}: wrk -c{args.connections} for {args.load_seconds} s", flush=True)
        requests, rps, errors = _wrk(run.url, script, args.connections, args.load_seconds)
        rss_after = _kib(run.proc.pid, "VmRSS") / 1024
        peak = _kib(run.proc.pid, "VmHWM") / 1024
        torch = run.torch or _torch_mapped(run.proc.pid)
    finally:
        run.stop()
    return [
        gw.label,
        statistics.median(s.ready_s for s in starts),
        min(s.ready_s for s in starts),
        statistics.median(s.cpu_ready_s for s in starts),
        statistics.median(s.rss_ready_mib for s in starts),
        requests,
        errors,
        rps,
        rss_after,
        peak,
        "yes" if torch else "no",
        load_before,
    ]


HEADERS = [
    "gateway",
    "ready s (median)",
    "ready s (best)",
    "CPU s to ready",
    "RSS at ready MiB",
    "load requests",
    "non-2xx",
    "req/s",
    "RSS after load MiB",
    "peak RSS MiB",
    "torch loaded",
    "load avg 1m",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-seconds", type=int, default=240)
    parser.add_argument("--starts", type=int, default=3, help="cold starts timed per gateway")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections")
    parser.add_argument(
        "--only", choices=["remote", "default"], help="only the remote-only or default rows"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: make wrk")
    stack = "; ".join(
        [f"python {platform.python_version()}"]
        + [f"{n} {version(n)}" for n in ("litestar", "uvicorn", "torch")]
    )
    print(f"machine: {machine()}; {stack}", flush=True)
    up_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench._raw_asgi", "upstream", str(up_port)], cwd=ROOT
    )
    rows: list[list[object]] = []
    try:
        wait_for_port(up_port)
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            remote = tmp / "remote.yaml"
            remote.write_text(REMOTE.format(url=f"http://127.0.0.1:{up_port}"))
            gateways = []
            if args.only in (None, "remote"):
                dev = [sys.executable, "-m", "prism.gateway.cli"]
                gateways.append(Gateway("remote-only (dev venv)", dev, remote, ROOT))
                if (SLIM_VENV / "bin" / "prism").exists():
                    slim = [str(SLIM_VENV / "bin" / "prism")]
                    gateways.append(Gateway("remote-only (slim install)", slim, remote, tmp))
                else:
                    print(f"  (no {SLIM_VENV}: the slim-install row is skipped)")
            if args.only in (None, "default"):
                default = ROOT / "policies" / "default.yaml"
                dev = [sys.executable, "-m", "prism.gateway.cli"]
                gateways.append(Gateway("default policy (dev venv)", dev, default, ROOT))
            for gw in gateways:
                rows.append(measure(gw, args, tmp))
    finally:
        upstream.terminate()
        upstream.wait(10)
    print_table(HEADERS, rows)
    path = append_csv("slim.csv", HEADERS, rows, software=stack)
    print(f"appended to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
