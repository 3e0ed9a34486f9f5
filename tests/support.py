"""Real things for tests: free ports, a redis-server process, a `prism serve` process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PRISM = [sys.executable, "-m", "prism.gateway.cli"]


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait until ``check()`` is true (polled every 50 ms); fail naming ``what`` after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


class RedisProcess:
    """A throwaway redis-server on a free loopback port (no persistence)."""

    def __init__(self, port: int | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        self.exe = exe
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


class GatewayProcess:
    """A real ``prism serve`` subprocess on a free loopback port."""

    def __init__(
        self,
        policy: Path,
        *,
        redis_url: str | None = None,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        root: Path = ROOT,
    ) -> None:
        self.port = free_port()
        self.policy = policy
        self.redis_url = redis_url
        self.data_dir = data_dir or ROOT
        #: the checkout whose code runs (``python -m`` imports from the working directory)
        self.root = root
        # stopped at once unless a test drains on purpose (PRISM_DRAIN_GRACE_S in ``env``)
        base = {"PRISM_POLICY_WATCH_S": "0.2", "PRISM_DRAIN_GRACE_S": "0"}
        self.env = {**os.environ, **base, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = policy.parent / f"gateway-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 120.0) -> GatewayProcess:
        cmd = [
            *PRISM,
            "serve",
            "--policy",
            str(self.policy),
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prism serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"gateway not ready: {self.log.read_text()[-2000:]}")

    def stacks(self) -> str:
        """What a process that does not stop is doing: every thread's stack (``prism serve``
        dumps them on SIGUSR2), then the log's last lines before them."""
        assert self.proc is not None
        before = len(self.log.read_text())
        self.proc.send_signal(signal.SIGUSR2)
        time.sleep(1.0)
        text = self.log.read_text()
        return f"{text[max(0, before - 3000) : before]}\n--- stacks on SIGUSR2 ---\n{text[before:]}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@contextmanager
def gateway_pair(policy: Path, **kwargs: Any) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two replicas of one policy with the same settings (``GatewayProcess``'s keywords),
    started one after the other, both stopped at the end (or if the second does not start)."""
    a = GatewayProcess(policy, **kwargs).start()
    try:
        b = GatewayProcess(policy, **kwargs).start()
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()
