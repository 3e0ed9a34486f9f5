"""Helpers for the policy-engine tests: in-process gateways and deployed fake targets.

Redis comes from the session-wide ``redis_url`` fixture in ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from prism.gateway.app import create_app
from prism.gateway.deployments import Deployments
from prism.gateway.dispatch import Dispatcher
from prism.gateway.policy import CompiledPolicy, parse_policy
from prism.gateway.settings import Settings

Client = AsyncTestClient[Litestar]


def compile_text(text: str) -> CompiledPolicy:
    return CompiledPolicy(parse_policy(text, "<test>"), source="<test>")


@asynccontextmanager
async def deployed(text: str) -> AsyncIterator[tuple[CompiledPolicy, Dispatcher]]:
    """A policy's fake targets, loaded, behind a fresh Dispatcher."""
    policy = compile_text(text)
    deployments = Deployments(Path.cwd())
    await deployments.apply(policy)
    try:
        yield policy, Dispatcher(deployments)
    finally:
        await deployments.aclose()


GatewayFactory = Callable[..., AbstractAsyncContextManager[Client]]


@pytest.fixture
def gateway(tmp_path: Path) -> GatewayFactory:
    """``async with gateway(policy_text, **settings) as client``: a whole app, in process."""

    @asynccontextmanager
    async def _gateway(text: str, **settings: Any) -> AsyncIterator[Client]:
        path = tmp_path / settings.pop("file_name", "policy.yaml")
        path.write_text(text)
        settings.setdefault("policy_watch_s", 0)
        app = create_app(Settings(policy=path, **settings))
        async with AsyncTestClient(app) as client:
            yield client

    return _gateway


def text_request(text: str = "hello", **routing: Any) -> dict[str, Any]:
    return {"inputs": [{"text": text}], "routing": routing}
