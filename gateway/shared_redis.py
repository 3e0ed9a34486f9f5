"""Redis clients for everything replicas share: one server, or a Redis Cluster.

Every Redis feature (cache, experiment counters and guardrail state, and whatever else keeps
shared state) builds its client with :func:`connect_redis`, so each of them works on a single
server and on a cluster alike:

- ``redis://host:port/0`` (or ``rediss://``, ``unix://``): one server, a blocking pool of at most
  :data:`REDIS_CONNECTIONS` connections.
- ``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``): a Redis Cluster seen
  through redis-py's asyncio cluster client; the seeds are where the client first reads the
  slot map (give more than one, or a name that resolves to any live node). ``--redis-cluster``
  / ``PRISM_REDIS_CLUSTER=true`` turns a plain ``redis://`` URL into a cluster seed.

On a cluster, the keys one command or Lua script touches must share a hash slot: keys that are
read or written together carry a hash tag (``prism:x:{experiment}:arm:a``). Independent keys
(one cache entry per input) are grouped per slot with :func:`get_by_slot`, one round trip per
node.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

#: connections one client keeps to each Redis node; a burst waits for one instead of opening more
REDIS_CONNECTIONS = 32

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SERVER_SCHEMES = frozenset({"redis", "rediss", "unix"})


class RedisURLError(ValueError):
    """A Redis URL Prism cannot use (raised at start, never per request)."""


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def check_redis_url(url: str) -> str:
    """``url`` when Prism can connect with it, else :class:`RedisURLError` saying why."""
    parts = urlsplit(url)
    if parts.scheme in SERVER_SCHEMES:
        return url
    if parts.scheme not in CLUSTER_SCHEMES:
        known = ", ".join(sorted({*SERVER_SCHEMES, *CLUSTER_SCHEMES}))
        raise RedisURLError(f"redis url scheme {parts.scheme!r} is not one of {known}")
    if not _cluster_seeds(parts.netloc):
        raise RedisURLError("a redis+cluster:// url needs at least one host:port")
    if parts.path.strip("/") not in ("", "0"):
        # a cluster has database 0 only; silently ignoring /3 would mix data sets
        raise RedisURLError("a Redis Cluster has only database 0 (drop the /<db> from the url)")
    return url


def as_cluster_url(url: str) -> str:
    """``redis://h:p/0`` -> ``redis+cluster://h:p`` (``--redis-cluster``); cluster URLs as is."""
    parts = urlsplit(url)
    if parts.scheme in CLUSTER_SCHEMES:
        return url
    if parts.scheme not in ("redis", "rediss"):
        raise RedisURLError(f"--redis-cluster needs a redis:// or rediss:// url, not {url!r}")
    # the path (a database) is kept so that check_redis_url refuses /3 instead of dropping it
    return urlunsplit((parts.scheme + "+cluster", parts.netloc, parts.path, parts.query, ""))


def _cluster_seeds(netloc: str) -> list[tuple[str, int]]:
    hosts = netloc.rpartition("@")[2]
    seeds = []
    for item in filter(None, hosts.split(",")):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "6379")
        seeds.append((host.strip("[]"), int(port or 6379)))
    return seeds


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis call may raise when Redis (or a cluster node) is not there.

    ``RedisClusterException`` is not a ``RedisError``: it is what the cluster client raises when
    no seed answers or the slot map is incomplete (a master down)."""
    import redis.exceptions as rex

    return (rex.RedisError, rex.RedisClusterException, OSError)


def connect_redis(url: str, *, timeout_s: float, pool_wait_s: float = 1.0) -> Any:
    """A client for ``url`` (a server or a cluster) with at most :data:`REDIS_CONNECTIONS`
    connections per node; commands wait up to ``pool_wait_s`` for one and fail fast
    (``timeout_s``) on a dead node. Typed ``Any``: redis-py's stubs mix sync and async."""
    check_redis_url(url)
    if is_cluster_url(url):
        return _cluster_client(url, timeout_s=timeout_s, pool_wait_s=pool_wait_s)
    import redis.asyncio as redis

    # redis-py's default pool opens a connection per concurrent command: a burst of 1,500
    # requests opened ~1,200 sockets, the commands then timed out and the cache turned itself
    # off exactly when it mattered. Commands queue for a connection instead.
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_CONNECTIONS,
        timeout=pool_wait_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry_on_timeout=False,
        health_check_interval=0,
    )
    return redis.Redis(connection_pool=pool)


def _cluster_client(url: str, *, timeout_s: float, pool_wait_s: float) -> Any:
    from redis.asyncio.cluster import ClusterNode
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    parts = urlsplit(url)
    ssl = CLUSTER_SCHEMES[parts.scheme] == "rediss"
    return _bounded_cluster_class()(
        startup_nodes=[ClusterNode(host, port) for host, port in _cluster_seeds(parts.netloc)],
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl=ssl,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        max_connections=REDIS_CONNECTIONS,
        # one retry (after re-reading the slot map) covers a moved slot or a failed-over master;
        # more would hold a request for a master that is simply down
        retry=Retry(NoBackoff(), retries=1),
        # seeds may be a DNS name (a Kubernetes Service) while CLUSTER SLOTS lists pod IPs:
        # keep the seeds, so a cluster whose pods all moved is found again
        dynamic_startup_nodes=False,
        gate_size=REDIS_CONNECTIONS,
        gate_wait_s=pool_wait_s,
    )


#: set while a task holds the gate, so that the client's own nested calls do not queue again
_INSIDE_GATE: contextvars.ContextVar[bool] = contextvars.ContextVar("_INSIDE_GATE", default=False)


class _Gate:
    """At most ``size`` commands (or pipelines) at once; others wait up to ``wait_s``.

    redis-py's cluster client raises ``MaxConnectionsError`` when a node's connections are all
    busy, where the single-server blocking pool waits: this gate gives the cluster the same
    behaviour (each command or pipeline holds at most one connection per node)."""

    def __init__(self, size: int, wait_s: float) -> None:
        self.size = size
        self.wait_s = wait_s
        self._sem: asyncio.Semaphore | None = None

    async def run(self, call: Any) -> Any:
        if _INSIDE_GATE.get():
            return await call()
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.size)
        from redis.exceptions import ConnectionError as RedisConnectionError

        try:
            await asyncio.wait_for(self._sem.acquire(), self.wait_s)
        except TimeoutError:
            raise RedisConnectionError("no free Redis connection") from None
        token = _INSIDE_GATE.set(True)
        try:
            return await call()
        finally:
            _INSIDE_GATE.reset(token)
            self._sem.release()


_BOUNDED_CLUSTER: type | None = None


def _bounded_cluster_class() -> type:
    """RedisCluster whose commands and pipelines pass a :class:`_Gate` (built on first use so
    that importing this module does not import redis)."""
    global _BOUNDED_CLUSTER
    if _BOUNDED_CLUSTER is not None:
        return _BOUNDED_CLUSTER
    from redis.asyncio.cluster import ClusterPipeline, RedisCluster

    class BoundedPipeline(ClusterPipeline):
        async def execute(
            self, raise_on_error: bool = True, allow_redirections: bool = True
        ) -> Any:
            gate: _Gate = getattr(self.cluster_client, "_prism_gate")  # noqa: B009
            if self.cluster_client._initialize:  # as for commands: the slot map first
                await self.cluster_client.initialize()
            parent = super().execute
            return await gate.run(lambda: parent(raise_on_error, allow_redirections))

    class BoundedRedisCluster(RedisCluster):
        def __init__(self, *, gate_size: int, gate_wait_s: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._prism_gate = _Gate(gate_size, gate_wait_s)

        async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            # read the slot map once, under redis-py's own lock, before anything is routed:
            # a fresh client's first burst of concurrent commands otherwise routes some of them
            # before the map exists, and broke connections (seen as "Connection closed by
            # server" with 36 concurrent compare-and-set edits from three clients)
            if self._initialize:
                await self.initialize()
            parent = super().execute_command
            return await self._prism_gate.run(lambda: parent(*args, **kwargs))

        def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
            if shard_hint:
                raise ValueError("shard_hint is not supported on a cluster")
            return BoundedPipeline(self, transaction)  # type: ignore[abstract]

    _BOUNDED_CLUSTER = BoundedRedisCluster
    return _BOUNDED_CLUSTER


async def close_redis(client: Any) -> None:
    """Close a client from :func:`connect_redis` and its connections (the pool is the
    client's own)."""
    if getattr(client, "_prism_gate", None):
        await client.aclose()  # the cluster client owns its nodes' connections
    else:
        await client.aclose(close_connection_pool=True)


async def get_by_slot(client: Any, keys: Sequence[str]) -> list[bytes | None]:
    """GET of independent keys in one round trip per node: MGET on one server; on a cluster one
    MGET per hash slot, pipelined (a single MGET across slots is refused: CROSSSLOT)."""
    if not keys:
        return []
    if not getattr(client, "_prism_gate", None):
        return list(await client.mget(list(keys)))
    from redis.crc import key_slot

    by_slot: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_slot.setdefault(key_slot(key.encode()), []).append(i)
    out: list[bytes | None] = [None] * len(keys)
    async with client.pipeline(transaction=False) as pipe:
        for indexes in by_slot.values():
            # pipe.mget is refused on a cluster pipeline even within one slot; the command is not
            pipe.execute_command("MGET", *(keys[i] for i in indexes))
        rows = await pipe.execute()
    for indexes, values in zip(by_slot.values(), rows, strict=True):
        for i, value in zip(indexes, values, strict=True):
            out[i] = value
    return out
