"""Dynamic batching (backends._batching.LocalBackend): batches form, groups never mix,
callers that leave are not computed, a full queue says 503 + Retry-After through HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import pytest

from prism.backends import (
    Batching,
    Capabilities,
    InputItem,
    LocalBackend,
    LocalModel,
    Modality,
    NotReady,
    Output,
    Overloaded,
    QueueTimeout,
    Task,
)
from tests.doors.conftest import make_app
from tests.upstream import UvicornThread


class RecordingModel(LocalModel):
    """Records every forward: its size, and the parameters each of its inputs came with."""

    def __init__(self, latency_s: float = 0.05) -> None:
        self.latency_s = latency_s
        self.forwards: list[list[tuple[str, str]]] = []
        self.lock = threading.Lock()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(frozenset({Modality.TEXT}), frozenset(Task))

    def prepare(self, task: Task, item: InputItem, parameters: Mapping[str, Any]) -> Any:
        return (item.text or "", repr(sorted(parameters.items())) + task.value)

    def forward(
        self, task: Task, prepared: Sequence[Any], parameters: Mapping[str, Any]
    ) -> list[Output]:
        with self.lock:
            self.forwards.append(list(prepared))
        time.sleep(self.latency_s)
        # each output says which parameters the forward ran with
        return [
            {"text": text, "ran_with": repr(sorted(parameters.items())) + task.value}
            for text, _ in prepared
        ]

    @property
    def computed(self) -> list[str]:
        return [text for fwd in self.forwards for text, _ in fwd]


@pytest.fixture
async def batcher(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[LocalBackend, RecordingModel]]:
    options = getattr(request, "param", {})
    model = RecordingModel(options.pop("latency_s", 0.05))
    backend = LocalBackend(model, Batching(**options), name="rec@1/local")
    await backend.start()
    yield backend, model
    await backend.aclose()


async def one(
    backend: LocalBackend,
    text: str,
    params: Mapping[str, Any] | None = None,
    task: Task = Task.EMBED,
    **kw: Any,
) -> Output:
    return (await backend.infer(task, [InputItem(text=text)], params or {}, **kw))[0]


@pytest.mark.parametrize(
    "batcher", [{"max_batch_size": 8, "max_queue_delay_ms": 20}], indirect=True
)
async def test_concurrent_requests_share_forwards(
    batcher: tuple[LocalBackend, RecordingModel],
) -> None:
    backend, model = batcher
    outs = await asyncio.gather(*(one(backend, f"t{i}") for i in range(24)))
    assert [o["text"] for o in outs] == [f"t{i}" for i in range(24)]  # each caller gets its own
    assert max(backend.stats.sizes) > 1 and len(model.forwards) < 24
    assert max(len(f) for f in model.forwards) <= 8
    assert backend.stats.inputs == 24 and backend.stats.batches == len(model.forwards)


@pytest.mark.parametrize(
    "batcher", [{"max_batch_size": 16, "max_queue_delay_ms": 20}], indirect=True
)
async def test_different_parameters_never_share_a_forward(
    batcher: tuple[LocalBackend, RecordingModel],
) -> None:
    backend, model = batcher
    calls = []
    for i in range(30):
        params = [{}, {"labels": ["a", "b"]}, {"labels": ["b", "a"]}][i % 3]
        task = Task.EMBED if i % 3 == 0 else Task.CLASSIFY
        calls.append((params, task, one(backend, f"t{i}", params, task)))
    outs = await asyncio.wait_for(asyncio.gather(*(c for _, _, c in calls)), timeout=10)
    for (params, task, _), out in zip(calls, outs, strict=True):
        assert out["ran_with"] == repr(sorted(params.items())) + task.value
    for fwd in model.forwards:
        assert len({group for _, group in fwd}) == 1, fwd
    assert sorted(model.computed) == sorted(f"t{i}" for i in range(30))
    assert max(backend.stats.sizes) > 1  # groups still batch among themselves


@pytest.mark.parametrize(
    "batcher", [{"max_batch_size": 1, "max_queue_delay_ms": 0, "latency_s": 0.2}], indirect=True
)
async def test_a_caller_that_leaves_is_not_computed(
    batcher: tuple[LocalBackend, RecordingModel],
) -> None:
    backend, model = batcher
    first = asyncio.create_task(one(backend, "runs"))
    await asyncio.sleep(0.05)  # "runs" is in its forward now
    leaver = asyncio.create_task(one(backend, "cancelled"))
    await asyncio.sleep(0.02)
    leaver.cancel()
    with pytest.raises(QueueTimeout):  # still behind "runs": load, not a slow model
        await one(backend, "timed out", timeout_s=0.05)
    assert (await first)["text"] == "runs"
    assert (await one(backend, "after"))["text"] == "after"
    assert model.computed == ["runs", "after"]
    assert backend.stats.dropped == 2


@pytest.mark.parametrize(
    "batcher",
    [{"max_batch_size": 8, "max_queue_delay_ms": 2000, "preferred_batch_sizes": [2]}],
    indirect=True,
)
async def test_a_preferred_size_dispatches_without_waiting_for_the_delay(
    batcher: tuple[LocalBackend, RecordingModel],
) -> None:
    backend, model = batcher
    started = time.perf_counter()
    await asyncio.gather(one(backend, "a"), one(backend, "b"))
    assert time.perf_counter() - started < 1.0
    assert [len(f) for f in model.forwards] == [2]


@pytest.mark.parametrize(
    "batcher", [{"max_batch_size": 1, "max_queue_size": 3, "latency_s": 0.1}], indirect=True
)
async def test_a_full_queue_is_overloaded_at_once(
    batcher: tuple[LocalBackend, RecordingModel],
) -> None:
    backend, _ = batcher
    results = await asyncio.gather(
        *(one(backend, f"t{i}") for i in range(8)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert refused and all(r.headers["Retry-After"] == "1" for r in refused)
    assert backend.stats.rejected == len(refused)
    assert len(results) - len(refused) >= 3


async def test_closing_answers_everyone_still_waiting() -> None:
    model = RecordingModel(latency_s=0.3)
    backend = LocalBackend(model, Batching(max_batch_size=1, max_queue_delay_ms=0), name="rec")
    await backend.start()
    tasks = [asyncio.create_task(one(backend, f"t{i}")) for i in range(3)]
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await backend.aclose()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert any(isinstance(r, NotReady) for r in results)
    assert time.perf_counter() - started < 1.0


OVERLOAD_POLICY = """
version: 1
models:
  slow:
    versions:
      "1": {backend: local, kind: fake, dim: 4, latency_ms: 150,
            batching: {max_batch_size: 1, max_queue_delay_ms: 0, max_queue_size: 2}}
routes:
  - {name: slow, model: slow, cache: {ttl_s: 0}}
"""


async def test_full_queue_is_503_with_retry_after_over_http(tmp_path: Any) -> None:
    # a real socket: the in-process test client runs requests one after the other
    server = UvicornThread(make_app(tmp_path, OVERLOAD_POLICY)).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            native = [
                client.post("/v1/infer", json={"inputs": [{"text": f"n{i}"}]}) for i in range(6)
            ]
            openai = [
                client.post("/v1/embeddings", json={"model": "slow", "input": f"o{i}"})
                for i in range(6)
            ]
            responses = await asyncio.gather(*native, *openai)
            statuses = [r.status_code for r in responses]
            assert set(statuses) == {200, 503}, statuses
            for r in responses:
                if r.status_code != 503:
                    continue
                assert r.headers["retry-after"] == "1"
                if r.request.url.path == "/v1/infer":
                    assert r.headers["content-type"].startswith("application/problem+json")
                    assert r.json()["code"] == "overloaded"
                else:
                    assert r.json()["error"]["type"] == "server_error"
                    assert r.json()["error"]["code"] == "overloaded"
            # the gateway stays up and serves once the queue drains
            later = await client.post("/v1/infer", json={"inputs": [{"text": "later"}]})
            assert later.status_code == 200
    finally:
        server.stop()
