"""A gateway on fake models for the door tests: in-process (AsyncTestClient) and on a socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from prism.gateway.app import create_app
from prism.gateway.settings import Settings
from tests.upstream import UvicornThread

POLICY = """
version: 1
models:
  fake:
    modalities: [text, image, user]
    versions:
      "1": {backend: local, kind: fake, dim: 16, batching: {max_queue_delay_ms: 5}}
      "2": {backend: local, kind: fake, dim: 16, seed: 7}
    labels: {stable: "1", canary: "2"}
  tagger:
    task: classify
    modalities: [text]
    versions:
      "1": {backend: local, kind: fake, dim: 4}
routes:
  - name: text
    match: {modality: [text], task: embed}
    model: fake
    version: stable
    cache: {ttl_s: 60}
"""


def make_app(tmp: Path, policy: str = POLICY, **settings: object) -> Litestar:
    path = tmp / "policy.yaml"
    path.write_text(policy)
    return create_app(Settings(policy=path, policy_watch_s=0, **settings))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(make_app(tmp_path_factory.mktemp("doors"))) as c:
        yield c


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same gateway on a real loopback socket (the official clients need one)."""
    server = UvicornThread(make_app(tmp_path_factory.mktemp("live"))).start()
    yield server.url
    server.stop()
