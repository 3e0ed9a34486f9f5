"""KServeBackend and OpenAIBackend against a real upstream that misbehaves on purpose.

Every failure of the upstream must arrive as the right class of Prism's exception tree
(status, retryable or not), with a message that names the upstream and leaks nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from prism.backends import (
    Backend,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InputItem,
    InvalidInput,
    KServeSpec,
    ModelTimeout,
    OpenAISpec,
    QueueTimeout,
    Task,
    UpstreamBusy,
    UpstreamRefused,
    UpstreamRejected,
    blame,
    build_backend,
)
from prism.backends._kserve import KServeBackend
from prism.backends._openai import OpenAIBackend, api_base
from tests.support import free_port
from tests.upstream import Upstream, vector

TEXTS = [InputItem(text="a red circle"), InputItem(text="a blue square")]


@pytest.fixture
async def make(upstream: Upstream) -> AsyncIterator[Callable[..., object]]:
    """Build and start a backend of ``kind`` for upstream model ``mode``; closed after."""
    started: list[Backend] = []

    async def _make(kind: str, mode: str, *, url: str | None = None, **extra: object) -> Backend:
        spec_cls = KServeSpec if kind == "kserve" else OpenAISpec
        spec = spec_cls(
            backend=kind, url=url or upstream.url, remote_model=mode, health_interval_s=0.2, **extra
        )
        backend = build_backend(spec, base_dir=".", name=f"{mode}@1/{upstream.url}")  # type: ignore[arg-type]
        await backend.start()
        started.append(backend)
        return backend

    yield _make
    for b in started:
        await b.aclose()


@pytest.mark.parametrize("kind", ["kserve", "openai"])
async def test_ok_embeds_like_the_upstream(make, kind: str) -> None:  # type: ignore[no-untyped-def]
    backend = await make(kind, "ok")
    assert await backend.health()
    out = await backend.infer(Task.EMBED, TEXTS, {}, timeout_s=5)
    for item, o in zip(TEXTS, out, strict=True):
        assert o["embedding"].dtype == np.float32
        np.testing.assert_allclose(o["embedding"], vector(item.text or "", 8), rtol=1e-6)
    assert backend.capabilities.dim == 8


async def test_kserve_reads_capabilities_from_metadata_and_classifies(make) -> None:  # type: ignore[no-untyped-def]
    backend = await make("kserve", "ok")
    assert backend.capabilities.modalities == {"text"}
    out = await backend.infer(
        Task.CLASSIFY, TEXTS, {"labels": ["red", "blue", "green"]}, timeout_s=5
    )
    assert [len(o["labels"]) for o in out] == [3, 3]
    assert {x["label"] for x in out[0]["labels"]} == {"red", "blue", "green"}


@pytest.mark.parametrize("kind", ["kserve", "openai"])
@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("garbage", BackendError, "answered garbage"),
        ("wrong-shape", BackendError, "answered garbage"),
        ("nan", BackendError, "answered garbage"),
        ("500", BackendError, "failed (500)"),
        ("503", BackendUnavailable, "unavailable (503)"),
        ("400", UpstreamRejected, "rejected the request (400): failure 400 on purpose"),
        ("401", UpstreamRefused, "refused the request (401): failure 401 on purpose"),
        ("429", UpstreamBusy, "is busy (429): slow down"),
        ("close", BackendUnavailable, "unreachable"),
    ],
)
async def test_failures_map_into_the_exception_tree(
    make, upstream: Upstream, kind: str, mode: str, error: type, message: str
) -> None:  # type: ignore[no-untyped-def]
    backend = await make(kind, mode)
    with pytest.raises(error) as info:
        await backend.infer(Task.EMBED, TEXTS, {}, timeout_s=5)
    exc = info.value
    assert type(exc) is error, repr(exc)
    assert message in exc.detail and upstream.url in exc.detail
    assert "Traceback" not in exc.detail
    assert exc.status_code == (503 if mode == "429" else 502)
    assert blame(exc).retry == (mode != "400")  # the caller's bad input is bad everywhere
    # load and the caller's mistakes never open the upstream's circuit
    assert blame(exc).target == (mode not in ("400", "429"))
    if mode == "429":
        assert exc.headers["Retry-After"] == "7"


@pytest.mark.parametrize("kind", ["kserve", "openai"])
async def test_a_hanging_upstream_meets_the_deadline(make, kind: str) -> None:  # type: ignore[no-untyped-def]
    backend = await make(kind, "hang")
    started = time.perf_counter()
    with pytest.raises(BackendTimeout) as info:
        await backend.infer(Task.EMBED, TEXTS, {}, timeout_s=0.3)
    assert 0.25 < time.perf_counter() - started < 2
    assert info.value.status_code == 504
    # the pool survives: the next call on the same client works
    ok = await make(kind, "ok")
    assert len(await ok.infer(Task.EMBED, TEXTS, {}, timeout_s=5)) == 2


@pytest.mark.parametrize("kind", ["kserve", "openai"])
async def test_nobody_listening_is_unavailable_and_unhealthy(make, kind: str) -> None:  # type: ignore[no-untyped-def]
    backend = await make(kind, "ok", url=f"http://127.0.0.1:{free_port()}")
    assert not await backend.health()
    with pytest.raises(BackendUnavailable):
        await backend.infer(Task.EMBED, TEXTS, {}, timeout_s=2)


async def test_probe_task_follows_upstream_health(make, upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    backend = await make("kserve", "ok")
    assert await backend.health()
    upstream.healthy = False
    await asyncio.sleep(0.6)  # health_interval_s = 0.2
    assert not await backend.health()
    upstream.healthy = True
    await asyncio.sleep(0.6)
    assert await backend.health()


@pytest.mark.parametrize("limit", [4, 20])
async def test_connections_are_pooled_and_kept_alive(make, upstream: Upstream, limit: int) -> None:  # type: ignore[no-untyped-def]
    backend = await make("kserve", "ok", max_connections=limit)
    before = upstream.connections
    for _ in range(10):
        await backend.infer(Task.EMBED, TEXTS, {}, timeout_s=5)
    assert upstream.connections - before <= 1  # one after another: one kept-alive socket
    await asyncio.gather(*(backend.infer(Task.EMBED, TEXTS, {}, timeout_s=5) for _ in range(64)))
    assert upstream.connections - before <= limit  # never more sockets than max_connections


async def test_stats_count_outcomes(make) -> None:  # type: ignore[no-untyped-def]
    ok, bad = await make("openai", "ok"), await make("openai", "500")
    await ok.infer(Task.EMBED, TEXTS, {}, timeout_s=5)
    with pytest.raises(BackendError):
        await bad.infer(Task.EMBED, TEXTS, {}, timeout_s=5)
    assert ok.stats.calls["ok"] == 1 and bad.stats.calls["backend_error"] == 1


async def test_openai_backend_only_embeds_text(make) -> None:  # type: ignore[no-untyped-def]
    backend = await make("openai", "ok")
    with pytest.raises(InvalidInput):
        await backend.infer(Task.CLASSIFY, TEXTS, {"labels": ["a"]})
    with pytest.raises(InvalidInput) as info:
        await backend.infer(Task.EMBED, [InputItem(text="x"), InputItem(image=b"\x89PNG")], {})
    assert info.value.input_index == 1


async def test_openai_api_key_comes_from_the_environment(
    make, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BackendUnavailable, match="PRISM_TEST_KEY"):
        await make("openai", "ok", api_key_env="PRISM_TEST_KEY")
    monkeypatch.setenv("PRISM_TEST_KEY", "sk-test")
    backend = await make("openai", "ok", api_key_env="PRISM_TEST_KEY")
    assert isinstance(backend, OpenAIBackend)
    assert backend.headers["Authorization"] == "Bearer sk-test"


def test_api_base() -> None:
    assert api_base("http://h:1") == "http://h:1/v1"
    assert api_base("http://h:1/") == "http://h:1/v1"
    assert api_base("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"


def test_kserve_paths_quote_names() -> None:
    b = KServeBackend("http://h:1", "a/b", "2", name="x")
    assert b.model_path == "/v2/models/a%2Fb/versions/2"
    assert b.probe_path == "/v2/models/a%2Fb/versions/2/ready"


@pytest.mark.parametrize("kind", ["kserve", "openai"])
async def test_waiting_for_our_own_connections_is_load_not_the_upstreams_fault(
    make, kind: str
) -> None:  # type: ignore[no-untyped-def]
    # two connections, an upstream that takes 0.3 s, a 0.5 s deadline: two calls are served,
    # the rest wait behind them and run out of time before a byte reaches the upstream
    backend = await make(kind, "slow", max_connections=2)
    results = await asyncio.gather(
        *(backend.infer(Task.EMBED, TEXTS[:1], {}, timeout_s=0.5) for _ in range(8)),
        return_exceptions=True,
    )
    served = [r for r in results if isinstance(r, list)]
    failed = [r for r in results if not isinstance(r, list)]
    assert len(served) >= 2 and failed, results
    # a queue wait (503) or a call cut short by one (504): both load, both "retry later",
    # neither held against the upstream's circuit
    assert all(isinstance(r, QueueTimeout | ModelTimeout) for r in failed), failed
    assert all(r.headers["Retry-After"] for r in failed)
    assert not any(blame(r).target for r in failed)


@pytest.mark.parametrize("kind", ["kserve", "openai"])
async def test_an_upstream_that_hung_is_used_again_once_it_answers(
    make, upstream: Upstream, kind: str
) -> None:  # type: ignore[no-untyped-def]
    # calls time out against a hanging upstream (never cancelled mid-flight, so no pool slot
    # can leak); once it answers again, so do the calls, and every slot is back
    backend = await make(kind, "slow", max_connections=2)
    upstream.slow_s = 1.0
    results = await asyncio.gather(
        *(backend.infer(Task.EMBED, TEXTS[:1], {}, timeout_s=0.2) for _ in range(6)),
        return_exceptions=True,
    )
    assert all(isinstance(r, BackendTimeout | QueueTimeout) for r in results), results
    upstream.slow_s = 0.01
    await asyncio.sleep(1.2)  # the abandoned exchanges end on httpx's own timeouts
    out = await backend.infer(Task.EMBED, TEXTS[:1], {}, timeout_s=2)
    assert out[0]["embedding"].shape == (8,)
    assert backend._slots._value == 2 and sum(backend._inflight) == 0  # nothing leaked


async def test_an_upstream_trickling_its_answer_cannot_hold_a_connection_forever() -> None:
    # headers at once, then one byte every 0.1 s for ever: httpx's per-read timeouts never
    # fire, so the exchange's whole life must be bounded by the backend itself
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 999\r\n\r\n"
        )
        try:
            while True:
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.1)
        except (ConnectionError, asyncio.CancelledError):
            pass

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spec = OpenAISpec(
        backend="openai", url=f"http://127.0.0.1:{port}", remote_model="m", max_connections=1
    )
    backend = build_backend(spec, base_dir=".", name="trickle")  # type: ignore[arg-type]
    await backend.start()
    try:
        with pytest.raises(BackendTimeout):
            await backend.infer(Task.EMBED, TEXTS[:1], {}, timeout_s=0.3)
        await asyncio.sleep(2.0)  # 0.3 s deadline + 1 s grace: closed by now, cleanly
        assert backend._slots._value == 1 and not backend._pending  # type: ignore[attr-defined]
    finally:
        await backend.aclose()
        server.close()
