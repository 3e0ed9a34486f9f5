"""One misbehaving upstream on loopback for the whole remote suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.upstream import Upstream


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    server = Upstream(dim=8, slow_s=0.3).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _healthy_upstream(upstream: Upstream) -> Iterator[None]:
    """Each test starts with a healthy upstream, whatever the previous one did to it."""
    upstream.healthy = True
    yield
    upstream.healthy = True
