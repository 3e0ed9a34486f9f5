"""Response cache: in-process LRU by default, Redis shared by every replica when configured."""

from ._cache import CacheStats, ResponseCache, cache_key
from ._codec import CachedOutput, decode_output, encode_output
from ._stores import CacheStore, MemoryStore, RedisStore

__all__ = [
    "CacheStats",
    "CacheStore",
    "CachedOutput",
    "MemoryStore",
    "RedisStore",
    "ResponseCache",
    "cache_key",
    "decode_output",
    "encode_output",
]
