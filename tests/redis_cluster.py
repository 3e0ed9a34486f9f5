"""A real Redis Cluster for tests: three masters on free loopback ports, no replicas."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tests.support import free_port, wait_for_port


class RedisClusterProcesses:
    """``redis-server --cluster-enabled yes`` x ``masters`` + ``redis-cli --cluster create``.

    Each node keeps its ``nodes.conf`` and an append-only file (fsync on every write) in a
    folder of its own, so :meth:`restart` brings a killed master back with the same id, slots
    and data, as a master with persistence (or a failover to a replica) would."""

    def __init__(self, root: Path, masters: int = 3) -> None:
        exe, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if exe is None or cli is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        self.exe, self.cli = exe, cli
        self.root = root
        # the cluster bus port is chosen too: port + 10000 may not be free (or valid)
        self.ports = [(free_port(), free_port()) for _ in range(masters)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * masters

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p, _ in self.ports)

    def _start_node(self, i: int) -> None:
        port, bus = self.ports[i]
        folder = self.root / f"node-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        self.procs[i] = subprocess.Popen(
            [
                self.exe,
                "--port", str(port),
                "--cluster-port", str(bus),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                # a dead master is marked failed after ~1 s, not the default 15 s
                "--cluster-node-timeout", "1000",
                "--dir", str(folder),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--protected-mode", "no",
            ],
            stdout=(folder / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for_port(port)

    def start(self) -> RedisClusterProcesses:
        for i in range(len(self.ports)):
            self._start_node(i)
        nodes = [f"127.0.0.1:{p}" for p, _ in self.ports]
        subprocess.run(
            [self.cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def info(self, i: int) -> dict[str, str]:
        out = subprocess.run(
            [self.cli, "-p", str(self.ports[i][0]), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return dict(line.split(":", 1) for line in out.split() if ":" in line)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every node says ``cluster_state:ok`` with all 16384 slots served."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            infos = [self.info(i) for i in range(len(self.ports)) if self.procs[i] is not None]
            if infos and all(
                x.get("cluster_state") == "ok" and x.get("cluster_slots_ok") == "16384"
                for x in infos
            ):
                return
            time.sleep(0.1)
        raise TimeoutError("redis cluster not ok")

    def wait_failed(self, timeout_s: float = 30.0) -> None:
        """Until the live nodes see the cluster as down (a master without a replica died)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            live = [i for i in range(len(self.ports)) if self.procs[i] is not None]
            if all(self.info(i).get("cluster_state") == "fail" for i in live):
                return
            time.sleep(0.1)
        raise TimeoutError("redis cluster never noticed the dead master")

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self.procs[i] = None

    def restart(self, i: int) -> None:
        self.kill(i)
        self._start_node(i)

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)
