"""Managed API keys: what one is (its record), how its secret looks, and how it is checked.

A secret reads ``prism_<id>_<random>``: the recognisable prefix lets secret scanners find
leaked keys, and the id in it lets a gateway find the record without an index from hashes.
The random part has 256 bits, so one round of SHA-256 is enough (no password stretching
needed); only that digest is stored, and it is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from prism.backends import Forbidden, Task

if TYPE_CHECKING:
    from ..policy import Decision

PREFIX = "prism_"
#: ``prism_<12 hex id>_<43 url-safe chars>``
_SECRET = re.compile(r"prism_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._:@/-]{0,99}$"
#: a logical model name, as policies write them (no ``@version``)
ModelName = Annotated[str, Field(pattern=r"^[^@\s]{1,200}$")]


def digest(secret: str) -> str:
    """The stored form of a secret (hex SHA-256)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> tuple[str, str]:
    """A fresh ``(id, secret)``."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def id_in(secret: str) -> str | None:
    """The key id a presented secret names, or None when it is not shaped like ours."""
    m = _SECRET.fullmatch(secret)
    return m.group(1) if m else None


def bootstrap_id(secret: str) -> str:
    """A stable, non-secret id for a key from ``PRISM_API_KEYS`` / ``PRISM_ADMIN_KEYS``."""
    return "env-" + digest(secret)[:12]


class KeyLimits(BaseModel):
    """The limits one key has; None = no limit of that kind."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1, le=1_000_000, description="requests per minute")
    rpd: int | None = Field(None, ge=1, le=100_000_000, description="requests per UTC day")
    max_concurrent: int | None = Field(None, ge=1, le=100_000, description="requests in flight")


class KeyChange(KeyLimits):
    """``PATCH /admin/keys/{id}``: the fields given replace the key's (null clears a limit,
    a scope or the expiry)."""

    name: str | None = Field(None, pattern=_NAME)
    models: list[ModelName] | None = Field(
        None, description="models the key may use; null or absent = every model"
    )
    tasks: list[Task] | None = Field(None, description="tasks the key may run; null = every task")
    expires_at: float | None = Field(None, description="Unix time after which the key is refused")
    admin: bool | None = None


class NewKey(KeyChange):
    """``POST /admin/keys``."""

    name: str = Field(..., pattern=_NAME)
    admin: bool = False


class KeyRecord(BaseModel):
    """What is stored for a key: never its secret, only the secret's digest."""

    id: str
    name: str
    digest: str
    models: list[str] | None = None
    tasks: list[Task] | None = None
    rpm: int | None = None
    rpd: int | None = None
    max_concurrent: int | None = None
    expires_at: float | None = None
    admin: bool = False
    created_at: float = Field(default_factory=time.time)
    revoked_at: float | None = None
    #: bumped on every change; every replica checks its cached copy against it per request
    rev: int = 1

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(digest(secret), self.digest)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    @property
    def limited(self) -> bool:
        return bool(self.rpm or self.rpd or self.max_concurrent)

    def public(self) -> dict[str, Any]:
        """The record as the admin API shows it (no digest either)."""
        return self.model_dump(mode="json", exclude={"digest"})

    def caller(self) -> Caller:
        return Caller(
            self.id,
            self.admin,
            frozenset(self.models) if self.models is not None else None,
            frozenset(self.tasks) if self.tasks is not None else None,
            self,
        )


class OutOfScope(Forbidden):
    """A valid key asking for a model or task outside its scope."""

    code = "out_of_scope"
    title = "Outside the key's scope"


class Caller:
    """Who is calling: the key id (never the secret) and what the key may use."""

    __slots__ = ("admin", "id", "models", "record", "tasks")

    def __init__(
        self,
        key_id: str,
        admin: bool,
        models: frozenset[str] | None = None,
        tasks: frozenset[Task] | None = None,
        record: KeyRecord | None = None,
    ) -> None:
        self.id = key_id
        self.admin = admin
        self.models = models
        self.tasks = tasks
        self.record = record

    def may_use(self, model: str) -> bool:
        return self.admin or self.models is None or model in self.models

    def check_model(self, model: str) -> None:
        if not self.may_use(model):
            allowed = ", ".join(sorted(self.models or ())) or "none"
            raise OutOfScope(
                f"key {self.id} may not use model {model!r} (scope models: {allowed})",
                extra={"scope": "models", "allowed": sorted(self.models or ())},
            )

    def scoped(self, decision: Decision, task: Task) -> Decision:
        """``decision`` as this key may run it: 403 when its task or model is outside the
        scope; targets and fallbacks of other models left out (a fallback must not serve a
        model the key may not use)."""
        self.check_task(task)
        self.check_model(decision.model)
        if self.admin or self.models is None:
            return decision
        return replace(
            decision,
            targets=tuple(t for t in decision.targets if t.model in self.models),
            fallback=tuple(t for t in decision.fallback if t.model in self.models),
        )

    def check_task(self, task: Task) -> None:
        if self.admin or self.tasks is None or task in self.tasks:
            return
        allowed = sorted(t.value for t in self.tasks)
        raise OutOfScope(
            f"key {self.id} may not run task {task.value!r} "
            f"(scope tasks: {', '.join(allowed) or 'none'})",
            extra={"scope": "tasks", "allowed": allowed},
        )


__all__ = [
    "PREFIX",
    "Caller",
    "KeyChange",
    "KeyLimits",
    "KeyRecord",
    "NewKey",
    "OutOfScope",
    "bootstrap_id",
    "digest",
    "id_in",
    "new_secret",
]
