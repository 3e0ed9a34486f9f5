"""Session-wide real services: one redis-server for the whole run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import RedisProcess


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """A real redis-server on a free loopback port, shared by the session."""
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisProcess) -> str:
    return redis_server.url
