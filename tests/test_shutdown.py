"""The lifespan's own shutdown is bounded: a step that hangs is left behind, named in the log
with where its tasks wait, and the rest still closes (the process exits on SIGTERM)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from prism.gateway.runtime import Runtime
from prism.gateway.settings import Settings
from tests.support import RedisProcess

POLICY = """
version: 1
models:
  fake:
    versions: {"1": {backend: local, kind: fake, dim: 8}}
routes:
  - {name: text, match: {modality: [text]}, model: fake}
"""


async def _ignores_cancelling(started: asyncio.Event, freed: asyncio.Event) -> None:
    """A task that swallows its cancellation (a bug, somewhere) until the test frees it."""
    started.set()
    while not freed.is_set():
        try:
            await freed.wait()
        except asyncio.CancelledError:
            continue


def _runtime(tmp_path: Path, redis_url: str | None = None) -> Runtime:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return Runtime(Settings(policy=policy, policy_watch_s=0, redis_url=redis_url))  # type: ignore[call-arg]


async def test_a_step_that_hangs_is_named_and_the_rest_still_closes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis = RedisProcess().start()
    try:
        rt = _runtime(tmp_path, redis.url)
        await rt.start()
        started, freed = asyncio.Event(), asyncio.Event()
        stubborn = rt.spawn(_ignores_cancelling(started, freed))
        await started.wait()
        await rt.experiments.sync()  # the experiment client has a connection open
        with caplog.at_level(logging.ERROR, logger="prism.runtime"):
            async with asyncio.timeout(60):  # without the bound this waits forever
                await rt.aclose(timeout_s=0.5)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert "closing background tasks did not finish within 0.5 s" in errors[0]
        assert "_ignores_cancelling" in errors[0]  # where the culprit waits
        # the steps after the one left behind ran: the deployments are closed
        assert not list(rt.deployments.all())
        assert not stubborn.done()  # left behind, as said
        assert await _other_clients(redis.url) == []  # and every Redis connection closed
        freed.set()
        await stubborn
    finally:
        redis.stop()


async def _other_clients(url: str) -> list[dict[str, object]]:
    """The clients Redis has besides this one, once they stop going away (closing is async)."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    try:
        me = await r.client_id()
        for _ in range(50):
            others = [c for c in await r.client_list() if int(c["id"]) != me]
            if not others:
                break
            await asyncio.sleep(0.1)
        return others
    finally:
        await r.aclose()


async def test_a_step_that_fails_is_logged_and_the_rest_still_closes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt = _runtime(tmp_path)
    await rt.start()

    async def broken() -> None:
        raise OSError("disk gone")

    rt.audit.aclose = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="prism.runtime"):
        await rt.aclose()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["shutdown: closing the audit log failed"]
    assert errors[0].exc_info is not None and "disk gone" in str(errors[0].exc_info[1])
    assert not list(rt.deployments.all())
