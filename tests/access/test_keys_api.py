"""Managed keys through the admin API: create (secret once), use, list, change, revoke."""

from __future__ import annotations

import stat
from pathlib import Path

from litestar.testing import AsyncTestClient

from prism.gateway.access import bootstrap_id
from prism.gateway.app import create_app
from tests.access.conftest import ADMIN, API, bearer, keyed_settings, make_key, problem

INFER = {"inputs": [{"text": "hello"}]}


async def test_a_key_is_shown_once_and_works_until_revoked(gateway: AsyncTestClient) -> None:  # type: ignore[type-arg]
    made = await make_key(gateway, models=["fake"], rpm=100)
    secret = made["key"]
    assert secret.startswith("prism_" + made["id"] + "_") and len(secret) > 50
    assert "digest" not in made and made["models"] == ["fake"] and made["rpm"] == 100
    ok = await gateway.post("/v1/infer", json=INFER, headers=bearer(secret))
    assert ok.status_code == 200, ok.text
    also = await gateway.post("/v1/infer", json=INFER, headers={"x-api-key": secret})
    assert also.status_code == 200

    listed = (await gateway.get("/admin/keys", headers=bearer(ADMIN))).json()["keys"]
    mine = next(k for k in listed if k["id"] == made["id"])
    assert "key" not in mine and "digest" not in mine
    assert secret not in str(listed)
    assert mine["usage"]["requests_today"] == 2 and mine["usage"]["last_used_at"] is not None

    revoked = await gateway.delete(f"/admin/keys/{made['id']}", headers=bearer(ADMIN))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = problem(await gateway.post("/v1/infer", json=INFER, headers=bearer(secret)), 401)
    assert refused["detail"] == "this API key was revoked"
    assert secret not in str(refused)


async def test_a_wrong_secret_with_a_real_id_is_refused(gateway: AsyncTestClient) -> None:  # type: ignore[type-arg]
    made = await make_key(gateway)
    forged = made["key"][:-4] + ("AAAA" if not made["key"].endswith("AAAA") else "BBBB")
    assert (
        problem(await gateway.post("/v1/infer", json=INFER, headers=bearer(forged)), 401)["detail"]
        == "invalid API key"
    )


async def test_patch_changes_scope_and_limits(gateway: AsyncTestClient) -> None:  # type: ignore[type-arg]
    made = await make_key(gateway, models=["fake"])
    secret = made["key"]
    assert (await gateway.post("/v1/infer", json=INFER, headers=bearer(secret))).status_code == 200
    changed = await gateway.patch(
        f"/admin/keys/{made['id']}", json={"models": ["tagger"], "rpd": 5}, headers=bearer(ADMIN)
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["models"] == ["tagger"] and changed.json()["rpd"] == 5
    body = problem(await gateway.post("/v1/infer", json=INFER, headers=bearer(secret)), 403)
    assert body["code"] == "out_of_scope" and body["scope"] == "models"
    cleared = await gateway.patch(
        f"/admin/keys/{made['id']}", json={"models": None}, headers=bearer(ADMIN)
    )
    assert cleared.json()["models"] is None and cleared.json()["rpd"] == 5
    assert (await gateway.post("/v1/infer", json=INFER, headers=bearer(secret))).status_code == 200


async def test_expired_keys_and_bad_specs(gateway: AsyncTestClient) -> None:  # type: ignore[type-arg]
    made = await make_key(gateway, expires_at=1.0)
    body = problem(await gateway.post("/v1/infer", json=INFER, headers=bearer(made["key"])), 401)
    assert body["detail"] == "this API key has expired"
    bad = await gateway.post("/admin/keys", json={"name": "x", "rpm": 0}, headers=bearer(ADMIN))
    assert problem(bad, 422)["errors"][0]["path"] == "rpm"
    missing = await gateway.patch("/admin/keys/0123456789ab", json={}, headers=bearer(ADMIN))
    assert problem(missing, 404)["code"] == "not_found"


async def test_only_admin_keys_manage_keys(gateway: AsyncTestClient) -> None:  # type: ignore[type-arg]
    plain = await make_key(gateway)
    admin = await make_key(gateway, admin=True)
    body = problem(await gateway.get("/admin/keys", headers=bearer(plain["key"])), 403)
    assert plain["id"] in body["detail"]
    assert (
        problem(await gateway.get("/admin/keys", headers=bearer(API)), 403)["code"] == "forbidden"
    )
    made = await gateway.post("/admin/keys", json={"name": "b"}, headers=bearer(admin["key"]))
    assert made.status_code == 201
    audit = (await gateway.get("/admin/audit?limit=1", headers=bearer(ADMIN))).json()["entries"]
    assert audit[0]["action"] == "keys.create" and audit[0]["key_id"] == admin["id"]
    assert audit[0]["target"] == made.json()["id"]


async def test_bootstrap_keys_have_stable_ids_in_the_audit_log(gateway: AsyncTestClient) -> None:  # type: ignore[type-arg]
    made = await make_key(gateway)
    await gateway.delete(f"/admin/keys/{made['id']}", headers=bearer(ADMIN))
    entries = (await gateway.get("/admin/audit", headers=bearer(ADMIN))).json()["entries"]
    assert [e["action"] for e in entries[:2]] == ["keys.revoke", "keys.create"]
    assert entries[0]["key_id"] == bootstrap_id(ADMIN) and ADMIN not in str(entries)
    assert bootstrap_id(ADMIN).startswith("env-") and len(bootstrap_id(ADMIN)) == 16


async def test_the_key_file_is_private_and_holds_no_secret(tmp_path: Path) -> None:
    settings = keyed_settings(tmp_path)
    async with AsyncTestClient(create_app(settings)) as c:
        made = await make_key(c)
        await c.post("/admin/policy/reload", headers=bearer(ADMIN))
    keys_file = settings.keys_path()
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert made["key"] not in keys_file.read_text() and made["id"] in keys_file.read_text()
    audit_file = settings.audit_path()
    assert stat.S_IMODE(audit_file.stat().st_mode) == 0o600
    assert "policy.reload" in audit_file.read_text()
    # a restarted gateway (same file) knows the key
    async with AsyncTestClient(create_app(settings)) as c:
        assert (
            await c.post("/v1/infer", json=INFER, headers=bearer(made["key"]))
        ).status_code == 200


async def test_without_bootstrap_keys_managed_keys_are_refused(tmp_path: Path) -> None:
    settings = keyed_settings(tmp_path, api_keys=[], admin_keys=[])
    async with AsyncTestClient(create_app(settings)) as c:
        assert problem(await c.post("/admin/keys", json={"name": "x"}), 409)["code"] == "conflict"


async def test_made_up_ids_are_not_looked_up_again_and_again(tmp_path: Path) -> None:
    app = create_app(keyed_settings(tmp_path))
    async with AsyncTestClient(app) as c:
        access = app.state.runtime.access
        fetched: list[str] = []
        real_fetch = access.store.fetch

        async def counting(key_id: str) -> object:
            fetched.append(key_id)
            return await real_fetch(key_id)

        access.store.fetch = counting
        forged = "prism_0123456789ab_" + "x" * 43
        for _ in range(20):
            assert (
                await c.post("/v1/infer", json=INFER, headers=bearer(forged))
            ).status_code == 401
        assert fetched == ["0123456789ab"]


async def test_an_unknown_key_is_refused_while_redis_is_down(tmp_path: Path) -> None:
    from tests.support import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with AsyncTestClient(create_app(keyed_settings(tmp_path, redis_url=dead))) as c:
        forged = "prism_0123456789ab_" + "x" * 43
        answer = await c.post("/v1/infer", json=INFER, headers=bearer(forged))
        body = problem(answer, 503)
        assert body["code"] == "limits_unavailable" and int(answer.headers["retry-after"]) >= 1
        assert (await c.post("/v1/infer", json=INFER, headers=bearer(API))).status_code == 200
        ready = (await c.get("/readyz")).json()["keys"]
        assert ready == {"store": "redis", "reachable": False, "on_store_down": "fail_open"}
        metrics = (await c.get("/metrics")).text
        assert 'prism_key_store_errors_total{mode="refused"} 1.0' in metrics
