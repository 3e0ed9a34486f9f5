"""Gateways with keys on: in-process (file store or a real Redis) for the access tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from prism.gateway.app import create_app
from prism.gateway.settings import Settings
from tests.doors.conftest import POLICY

ADMIN = "admin-bootstrap-secret"
API = "api-bootstrap-secret"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def keyed_settings(tmp: Path, **overrides: Any) -> Settings:
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    values: dict[str, Any] = {
        "policy": policy,
        "policy_watch_s": 0,
        "api_keys": [API],
        "admin_keys": [ADMIN],
        **overrides,
    }
    return Settings(**values)


@pytest.fixture(params=["file", "redis"])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """One gateway with bootstrap keys; managed keys in a file, or in the session's Redis."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    async with AsyncTestClient(create_app(keyed_settings(tmp_path, redis_url=redis_url))) as c:
        yield c


async def make_key(client: Any, **spec: Any) -> dict[str, Any]:
    answer = await client.post("/admin/keys", json={"name": "team", **spec}, headers=bearer(ADMIN))
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()  # type: ignore[no-any-return]
