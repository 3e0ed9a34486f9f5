"""``Drain`` in this process: a real SIGTERM, delivered to the test's own process, is taken
over from the server's handler and handed back to it once the grace period is over."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from types import FrameType

import pytest

from prism.gateway.draining import Drain


class ServerHandler:
    """Stands where uvicorn's ``Server.handle_exit`` stands: records each signal it gets."""

    def __init__(self) -> None:
        self.got: list[int] = []

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        self.got.append(sig)


@pytest.fixture
def server() -> Iterator[ServerHandler]:
    handler = ServerHandler()
    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


async def _until(condition: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Let the loop run (the signal's work is scheduled on it) until ``condition()``."""
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("condition not met")


async def test_sigterm_drains_first_and_reaches_the_server_after_the_grace(
    server: ServerHandler,
) -> None:
    drain = Drain(grace_s=0.3)
    assert drain.install()
    os.kill(os.getpid(), signal.SIGTERM)
    await _until(lambda: drain.draining)
    assert server.got == []  # still serving: the server has not heard of it yet
    await _until(lambda: server.got)
    assert server.got == [signal.SIGTERM]
    # the server has its handler back (it restores its own predecessor on exit)
    assert signal.getsignal(signal.SIGTERM) is server


async def test_a_second_sigterm_skips_the_rest_of_the_grace(server: ServerHandler) -> None:
    drain = Drain(grace_s=3600)
    assert drain.install()
    os.kill(os.getpid(), signal.SIGTERM)
    await _until(lambda: drain.draining)
    os.kill(os.getpid(), signal.SIGTERM)
    await _until(lambda: server.got)
    assert server.got == [signal.SIGTERM]


async def test_uninstall_gives_sigterm_back_untouched(server: ServerHandler) -> None:
    drain = Drain(grace_s=1)
    assert drain.install()
    assert signal.getsignal(signal.SIGTERM) is not server
    drain.uninstall()
    assert signal.getsignal(signal.SIGTERM) is server
    assert not drain.draining


def test_outside_the_main_thread_it_leaves_signals_alone(server: ServerHandler) -> None:
    import threading

    installed: list[bool] = []

    async def install() -> None:
        installed.append(Drain().install())

    thread = threading.Thread(target=lambda: asyncio.run(install()))
    thread.start()
    thread.join()
    assert installed == [False]
    assert signal.getsignal(signal.SIGTERM) is server
