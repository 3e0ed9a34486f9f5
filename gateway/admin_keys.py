"""The operator's API for managed keys (``/admin/keys``) and the audit log (``/admin/audit``).

``POST /admin/keys`` answers the secret once (``key``); only its SHA-256 is stored.
``GET`` lists keys with their usage (last used, requests today, in flight), never a secret;
``PATCH`` changes scopes, limits, expiry or name; ``DELETE`` revokes. Every replica sees a
change on its next request with that key (``gateway/auth.py``). Each action lands in the
audit log with the caller's key id.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, patch, post, route
from litestar.di import NamedDependency
from litestar.enums import HttpMethod
from litestar.params import FromPath, JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from prism.backends import Conflict, NotFound

from .access import KeyChange, KeyRecord, NewKey, digest, new_secret
from .auth import key_id_of
from .doors._openapi import PROBLEM, documented
from .runtime import Runtime

_NO_KEY = {404: "No managed key with this id"}


async def _view(runtime: Runtime, record: KeyRecord) -> dict[str, Any]:
    return {**record.public(), "usage": await runtime.access.store.usage(record)}


async def _existing(runtime: Runtime, key_id: str) -> KeyRecord:
    record = await runtime.access.store.fetch(key_id)
    if record is None:
        raise NotFound(f"no managed key {key_id!r}")
    return record


class KeysController(Controller):
    path = "/admin"
    tags = ["admin"]
    opt = {"admin": True}

    # Litestar registers a controller's handlers one by one (in name order) and keeps the
    # OPTIONS answer of the first handler of a path, whose Allow then lacks the others'
    # methods; these answer OPTIONS for the two paths, and their names sort first on purpose
    @route("/keys", http_method=[HttpMethod.OPTIONS], include_in_schema=False)
    async def allow_keys(self) -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": "GET, OPTIONS, POST"})

    @route("/keys/{key_id:str}", http_method=[HttpMethod.OPTIONS], include_in_schema=False)
    async def allow_key(self, key_id: FromPath[str]) -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": "DELETE, GET, OPTIONS, PATCH"})

    @post(
        "/keys",
        status_code=HTTP_201_CREATED,
        summary="Create a managed key (its secret is shown once)",
        **documented(
            PROBLEM,
            *(400, 401, 403, 409, 422),
            wording={409: "Keys are off: set PRISM_ADMIN_KEYS (or PRISM_API_KEYS) first"},
        ),
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[NewKey],
        runtime: NamedDependency[Runtime],
    ) -> dict[str, Any]:
        if not runtime.access.enabled:
            raise Conflict(
                "keys are off on this gateway (no PRISM_ADMIN_KEYS or PRISM_API_KEYS): a "
                "managed key would not be checked; set a bootstrap admin key first"
            )
        key_id, secret = new_secret()
        record = KeyRecord(id=key_id, digest=digest(secret), **data.model_dump())
        await runtime.access.store.save(record)
        await runtime.audit.record(
            action="keys.create",
            target=key_id,
            key_id=key_id_of(request),
            outcome="ok",
            after=record.public(),
        )
        return {**(await _view(runtime, record)), "key": secret}

    @get(
        "/keys",
        summary="Every managed key, with usage (no secrets)",
        **documented(PROBLEM, 401, 403),
    )
    async def list_keys(self, runtime: NamedDependency[Runtime]) -> dict[str, Any]:
        records = await runtime.access.store.records()
        return {"keys": [await _view(runtime, r) for r in records]}

    @get(
        "/keys/{key_id:str}",
        summary="One managed key, with usage",
        **documented(PROBLEM, 401, 403, 404, wording=_NO_KEY),
    )
    async def get_key(
        self, runtime: NamedDependency[Runtime], key_id: FromPath[str]
    ) -> dict[str, Any]:
        return await _view(runtime, await _existing(runtime, key_id))

    @patch(
        "/keys/{key_id:str}",
        summary="Change a key's scopes, limits, expiry or name",
        **documented(
            PROBLEM,
            *(400, 401, 403, 404, 409, 422),
            wording={**_NO_KEY, 409: "The key is revoked"},
        ),
    )
    async def update(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[KeyChange],
        runtime: NamedDependency[Runtime],
        key_id: FromPath[str],
    ) -> dict[str, Any]:
        before = await _existing(runtime, key_id)
        if before.revoked_at is not None:
            raise Conflict(f"key {key_id} is revoked; create a new one")
        changes = data.model_dump(include=data.model_fields_set)
        if changes.get("admin") is None:
            changes.pop("admin", None)
        if changes.get("name") is None:
            changes.pop("name", None)
        after = before.model_copy(update={**changes, "rev": before.rev + 1})
        after = KeyRecord.model_validate(after.model_dump())
        await runtime.access.store.save(after)
        runtime.access.forget(key_id)
        await runtime.audit.record(
            action="keys.update",
            target=key_id,
            key_id=key_id_of(request),
            outcome="ok",
            before=before.public(),
            after=after.public(),
        )
        return await _view(runtime, after)

    @delete(
        "/keys/{key_id:str}",
        status_code=HTTP_200_OK,
        summary="Revoke a key (every replica refuses it from its next request)",
        **documented(PROBLEM, 401, 403, 404, wording=_NO_KEY),
    )
    async def revoke(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        key_id: FromPath[str],
    ) -> dict[str, Any]:
        before = await _existing(runtime, key_id)
        after = before
        if before.revoked_at is None:
            after = before.model_copy(update={"revoked_at": time.time(), "rev": before.rev + 1})
            await runtime.access.store.save(after)
            runtime.access.forget(key_id)
        await runtime.audit.record(
            action="keys.revoke",
            target=key_id,
            key_id=key_id_of(request),
            outcome="ok" if before.revoked_at is None else "already revoked",
        )
        return await _view(runtime, after)

    @get(
        "/audit",
        summary="The audit log of admin actions, newest first",
        **documented(
            PROBLEM, 400, 401, 403, 422, wording={422: "'limit' is not between 1 and 10000"}
        ),
    )
    async def audit(
        self,
        runtime: NamedDependency[Runtime],
        limit: Annotated[int, Parameter(ge=1, le=10_000, description="entries to return")] = 100,
    ) -> dict[str, Any]:
        return {"entries": await runtime.audit.entries(limit)}


__all__ = ["KeysController"]
