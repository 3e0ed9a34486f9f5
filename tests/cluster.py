"""Real pieces of a multi-replica deployment for tests: HAProxy, ``prism worker``, steady load.

HAProxy (Debian's ``haproxy``) runs on loopback in front of ``prism serve`` processes the way a
production load balancer would: health checks on ``/readyz``, retries with redispatch to
another replica, and a stats socket the tests read retries from. :class:`SteadyLoad` drives a
paced stream of ``/v1/infer`` requests from a thread and counts every answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.support import PRISM, ROOT, free_port, wait_for_port

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
)


class HAProxy:
    """``haproxy`` on a free loopback port, balancing ``servers`` (name -> port).

    Health checks: ``GET /readyz`` every 100 ms, down after 2 failures, up after 2 successes.
    A request whose connection fails or is closed without an answer is retried up to 3 times,
    each time on another replica (``option redispatch 1``); answers are never retried, so a
    502/503/504 from Prism reaches the client and is counted.
    """

    def __init__(self, servers: dict[str, int], workdir: Path) -> None:
        if HAPROXY is None:
            raise RuntimeError("haproxy is not installed: make haproxy")
        self.servers = servers
        self.port = free_port()
        self.socket = workdir / "haproxy.sock"
        self.config = workdir / "haproxy.cfg"
        self.log = workdir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def render(self) -> str:
        lines = [
            "global",
            "    maxconn 4096",
            f"    stats socket {self.socket} mode 600 level admin",
            "    log stdout format raw local0",  # one line a request in haproxy.log
            "defaults",
            "    mode http",
            "    log global",
            "    option httplog",
            "    timeout connect 2s",
            "    timeout client 60s",
            "    timeout server 60s",
            "    timeout queue 10s",
            "    retries 3",
            "    option redispatch 1",
            # a replica killed mid-request closes the connection with nothing sent back:
            # inference is idempotent, so such a request is safe to send to another replica
            "    retry-on conn-failure empty-response junk-response",
            # ... which needs the whole request (body too) in HAProxy's buffer before it is
            # sent; otherwise HAProxy just closes the client's connection for it to retry
            "    option http-buffer-request",
            "frontend prism",
            f"    bind 127.0.0.1:{self.port}",
            "    default_backend gateways",
            "backend gateways",
            "    balance roundrobin",
            "    option httpchk GET /readyz",
            "    http-check expect status 200",
            "    default-server inter 100ms fastinter 100ms downinter 100ms fall 2 rise 2",
        ]
        lines += [
            f"    server {name} 127.0.0.1:{port} check" for name, port in self.servers.items()
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> HAProxy:
        self.config.write_text(self.render())
        assert HAPROXY is not None
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(self.config)], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its config: {check.stderr.decode()}")
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.config)],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def command(self, line: str) -> str:
        """One command on the stats socket (``show stat``, ``show servers state``, ...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` as rows by server name (and ``BACKEND`` / ``FRONTEND``) of the
        gateways backend: ``wretr`` retries, ``wredis`` redispatches, ``status``, ..."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r for r in rows if r["pxname"] == "gateways"}

    def retries(self) -> tuple[int, int]:
        """(retries, redispatches) HAProxy made so far, over the whole backend."""
        row = self.stats()["BACKEND"]
        return int(row["wretr"] or 0), int(row["wredis"] or 0)

    def status(self, name: str) -> str:
        return self.stats()[name]["status"]

    def wait_status(self, name: str, wanted: str, timeout_s: float = 60.0) -> float:
        """Wait until server ``name``'s check status starts with ``wanted`` (UP / DOWN);
        returns the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.status(name).startswith(wanted):
                return time.monotonic() - start
            time.sleep(0.05)
        raise TimeoutError(f"haproxy: {name} is {self.status(name)}, not {wanted}")


class WorkerProcess:
    """A real ``prism worker`` serving one local model of ``policy`` on a fixed loopback port
    (restartable on the same port)."""

    def __init__(self, policy: Path, model: str, *, env: dict[str, str] | None = None) -> None:
        self.policy = policy
        self.model = model
        self.port = free_port()
        self.env = {**os.environ, "PRISM_DRAIN_GRACE_S": "0", **(env or {})}
        self.log = policy.parent / f"worker-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 60.0) -> WorkerProcess:
        cmd = [*PRISM, "worker", "--policy", str(self.policy), "--model", self.model]
        cmd += ["--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prism worker exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"worker not ready: {self.log.read_text()[-2000:]}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


Body = Callable[[int], dict[str, Any]]


def text_request(i: int) -> dict[str, Any]:
    """The load's request ``i``: 64 distinct texts (cache hits and misses both), 97 units."""
    return {
        "inputs": [{"text": f"steady load {i % 64}"}],
        "routing": {"unit": f"load-{i % 97}"},
    }


class SteadyLoad:
    """Paced ``POST /v1/infer`` traffic from a thread of its own, counting every answer.

    ``concurrency`` clients each send one request after another, together at most ``rate``
    requests a second. Every response is counted by status; a transport error (nothing came
    back) is counted by its exception type, so no request goes missing from :attr:`outcomes`.
    """

    def __init__(
        self,
        url: str,
        *,
        rate: float = 80.0,
        concurrency: int = 4,
        body: Body = text_request,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = url
        self.rate = rate
        self.concurrency = concurrency
        self.body = body
        self.timeout_s = timeout_s
        self.outcomes: Counter[str] = Counter()
        #: answered requests by ``route.target`` (and whether a fallback answered)
        self.targets: Counter[tuple[str, bool]] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent = 0

    def __enter__(self) -> SteadyLoad:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 10)
            self._thread = None

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def ok(self) -> int:
        return self.outcomes["200"]

    def wait_for(self, answered: int, timeout_s: float = 60.0) -> None:
        """Block until at least ``answered`` more requests have been answered."""
        goal = self.total + answered
        deadline = time.monotonic() + timeout_s
        while self.total < goal:
            if time.monotonic() > deadline:
                raise TimeoutError(f"load: {self.total} answered, waited for {goal}")
            time.sleep(0.05)

    def summary(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes.items()))
        return f"{self.total} requests ({parts})"

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, limits=limits) as client:
            await asyncio.gather(*(self._client(client) for _ in range(self.concurrency)))

    async def _client(self, client: httpx.AsyncClient) -> None:
        interval = self.concurrency / self.rate
        while not self._stop.is_set():
            started = time.monotonic()
            i = self._sent
            self._sent += 1
            try:
                r = await client.post("/v1/infer", json=self.body(i), timeout=self.timeout_s)
            except httpx.HTTPError as exc:
                self.outcomes[type(exc).__name__] += 1
                self.failures.append(f"{type(exc).__name__}: {exc}")
            else:
                self.outcomes[str(r.status_code)] += 1
                if r.status_code == 200:
                    route = r.json()["route"]
                    self.targets[(route["target"], bool(route["fallback"]))] += 1
                else:
                    self.failures.append(f"{r.status_code}: {r.text[:300]}")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


def start_all(processes: Sequence[Any]) -> None:
    """Start processes side by side (their imports and model loads overlap), each ready."""
    with ThreadPoolExecutor(len(processes)) as pool:
        for started in [pool.submit(p.start) for p in processes]:
            started.result()


def stop_all(processes: Sequence[Any]) -> None:
    """Stop every process of a test (gateways, workers, HAProxy, Redis), whatever happened:
    all are signalled first, so their drains run side by side."""
    for p in processes:
        proc = getattr(p, "proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
    for p in processes:
        with contextlib.suppress(Exception):
            p.stop()
