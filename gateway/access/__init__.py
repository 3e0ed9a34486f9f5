"""Managed API keys: records, stores (Redis or a 0600 file) and per-key limits."""

from ._keys import (
    PREFIX,
    Caller,
    KeyChange,
    KeyLimits,
    KeyRecord,
    NewKey,
    OutOfScope,
    bootstrap_id,
    digest,
    id_in,
    new_secret,
)
from ._limits import (
    LEASE_TTL_S,
    LimitsUnavailable,
    LocalLimiter,
    RateLimited,
    key_prefix,
    rate_limited,
)
from ._store import Admission, FileKeyStore, KeyStore, RedisKeyStore, SentAdmit, StoreDown

__all__ = [
    "LEASE_TTL_S",
    "PREFIX",
    "Admission",
    "Caller",
    "FileKeyStore",
    "KeyChange",
    "KeyLimits",
    "KeyRecord",
    "KeyStore",
    "LimitsUnavailable",
    "LocalLimiter",
    "NewKey",
    "OutOfScope",
    "RateLimited",
    "RedisKeyStore",
    "SentAdmit",
    "StoreDown",
    "bootstrap_id",
    "digest",
    "id_in",
    "key_prefix",
    "new_secret",
    "rate_limited",
]
