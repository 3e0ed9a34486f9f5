"""Real model servers at the far edge (Triton via PyTriton, KServe's ModelServer), run from
their own venv (``.venv-peers``, ``make peers``) as subprocesses on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, free_port

PEERS_VENV = ROOT / ".venv-peers"
PEERS_PYTHON = PEERS_VENV / "bin" / "python"
BERT_ONNX = ROOT / "build" / "minilm-onnx" / "model.onnx"
HERE = Path(__file__).resolve().parent


def require_peers() -> None:
    if not PEERS_PYTHON.exists():
        pytest.skip("the peer servers' venv is missing: run `make peers`")


def bert_onnx() -> Path:
    """The raw MiniLM ONNX graph, exported once with this venv's torch."""
    if not BERT_ONNX.exists():
        subprocess.run(
            [sys.executable, "-m", "tests.peers.export_minilm_onnx", str(BERT_ONNX)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return BERT_ONNX


class PeerProcess:
    """One peer server subprocess, in its own process group (Triton forks a server)."""

    def __init__(self, args: list[str], ready_paths: list[str], port: int) -> None:
        self.args = args
        self.ready_paths = ready_paths
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        #: the gRPC port, for servers that have one
        self.grpc_port: int | None = None
        self.log = ROOT / "build" / f"peer-{port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> PeerProcess:
        require_peers()
        env = dict(os.environ)
        # pyenv's (and other non-Debian) Pythons keep libpython outside the loader's path,
        # and the Triton server PyTriton starts links against it
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(PEERS_PYTHON), *self.args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"peer exited: {self.log.read_text()[-2000:]}")
            try:
                if all(
                    httpx.get(self.url + p, timeout=1).status_code == 200 for p in self.ready_paths
                ):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"peer not ready after {timeout_s} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # the server PyTriton forked may outlive its parent: the port is free only once the
        # whole group is gone (a restart on the same port needs it)
        deadline = time.monotonic() + 30
        while _listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def pytriton(models: list[str], *, variant: str = "plain", port: int | None = None) -> PeerProcess:
    """A PyTriton server with ``models`` (see ``pytriton_peer.py``); ``grpc_port`` set on it."""
    http, grpc, metrics = port or free_port(), free_port(), free_port()
    args = [
        str(HERE / "pytriton_peer.py"),
        *("--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)),
        *("--models", ",".join(models), "--variant", variant),
    ]
    if "bert" in models:
        args += ["--onnx", str(bert_onnx())]
    peer = PeerProcess(args, [f"/v2/models/{m}/ready" for m in models], http)
    peer.grpc_port = grpc
    return peer
