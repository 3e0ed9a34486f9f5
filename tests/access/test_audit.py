"""Every admin action lands in the audit log: who (key id), what, target, outcome, never a
secret; in Redis (a capped list shared by replicas) or a 0600 JSON-lines file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from prism.gateway.access import bootstrap_id
from prism.gateway.app import create_app
from prism.gateway.audit import AuditLog
from tests.access.conftest import ADMIN, bearer, keyed_settings, make_key

EXPERIMENT_POLICY = """
version: 1
models:
  fake:
    modalities: [text]
    versions:
      "1": {backend: local, kind: fake, dim: 8}
      "2": {backend: local, kind: fake, dim: 8, seed: 7}
routes:
  - {name: everything, match: {}, model: fake, version: "1"}
experiments:
  fake-v2:
    route: everything
    arms: {control: {version: "1", weight: 50}, treatment: {version: "2", weight: 50}}
"""


@pytest.mark.parametrize("where", ["file", "redis"])
async def test_policy_and_experiment_actions_are_audited(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    redis_url = request.getfixturevalue("redis_url") if where == "redis" else None
    settings = keyed_settings(tmp_path, redis_url=redis_url)
    settings.policy.write_text(EXPERIMENT_POLICY)
    admin = bearer(ADMIN)
    async with AsyncTestClient(create_app(settings)) as c:
        operator = await make_key(c, admin=True)
        op = bearer(operator["key"])
        assert (await c.post("/admin/policy/reload", headers=op)).status_code == 200
        settings.policy.write_text("version: 1\nmodels: {}\nroutes: [}")
        assert (await c.post("/admin/policy/reload", headers=admin)).status_code == 422
        stop = await c.post("/admin/experiments/fake-v2/stop?arm=treatment", headers=op)
        assert stop.status_code == 200
        assert (await c.post("/admin/experiments/fake-v2/resume", headers=op)).status_code == 200
        entries = (await c.get("/admin/audit?limit=4", headers=admin)).json()["entries"]
    actions = [(e["action"], e["key_id"], e["outcome"].split(":")[0]) for e in entries]
    assert actions == [
        ("experiment.resume", operator["id"], "ok"),
        ("experiment.stop", operator["id"], "ok"),
        ("policy.reload", bootstrap_id(ADMIN), "refused"),
        ("policy.reload", operator["id"], "ok"),
    ]
    assert entries[0]["before"] == {"stopped": ["treatment"]}
    assert entries[1]["target"] == "fake-v2/treatment"
    assert entries[3]["after"]["policy"] and entries[3]["time"] > 0
    assert operator["key"] not in str(entries) and ADMIN not in str(entries)


async def test_entries_never_carry_secrets_and_the_newest_come_first(tmp_path: Path) -> None:
    log = AuditLog(None, tmp_path / "audit.jsonl")
    for i in range(5):
        await log.record(
            action="models.load",
            target=f"m{i}",
            key_id="k1",
            outcome="ok",
            after={"name": "x", "key": "prism_secret", "nested": [{"digest": "d", "ok": 1}]},
        )
    entries: list[dict[str, Any]] = await log.entries(limit=2)
    assert [e["target"] for e in entries] == ["m4", "m3"]
    assert entries[0]["after"] == {"name": "x", "nested": [{"ok": 1}]}
    assert (tmp_path / "audit.jsonl").stat().st_mode & 0o777 == 0o600


async def test_the_redis_log_is_capped(redis_url: str) -> None:
    import redis.asyncio as redis

    from prism.gateway import audit

    log = AuditLog(redis_url, None)
    client = redis.Redis.from_url(redis_url)
    await client.delete(audit.AUDIT_KEY)
    for i in range(3):
        await log.record(action="a", target=str(i), key_id=None, outcome="ok")
    assert [e["target"] for e in await log.entries(10)] == ["2", "1", "0"]
    assert await client.llen(audit.AUDIT_KEY) == 3 <= audit.AUDIT_MAX
    await client.aclose()
    await log.aclose()


async def test_a_refused_admin_call_is_not_an_action(tmp_path: Path) -> None:
    async with AsyncTestClient(create_app(keyed_settings(tmp_path))) as c:
        await make_key(c)
        user = await make_key(c)
        refused = await c.delete(f"/admin/keys/{user['id']}", headers=bearer(user["key"]))
        assert refused.status_code == 403
        entries = (await c.get("/admin/audit", headers=bearer(ADMIN))).json()["entries"]
    assert [e["action"] for e in entries] == ["keys.create", "keys.create"]
