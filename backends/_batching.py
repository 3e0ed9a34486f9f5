"""Dynamic batching for local models, in Triton Inference Server's sense.

Requests for one model version queue here; a collector task takes the first waiting input,
waits up to ``max_queue_delay_ms`` for company (leaving early at the largest batch size or a
preferred size), groups inputs that share a task and parameters, and runs one ``forward`` on a
worker thread. The queue is bounded: past ``max_queue_size`` inputs a caller gets
:class:`Overloaded` (503 + Retry-After) at once rather than a slow timeout later. A caller
that gives up (cancelled, deadline) is dropped before its batch runs when it has not started.

Inputs of another group met while filling a batch are carried over (they lead the next
batches, in arrival order) rather than put back, so groups never mix and none starves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ._base import Backend, Capabilities, InputItem, LocalModel, Output, Task
from ._errors import BackendError, ModelTimeout, NotReady, Overloaded, PrismError, QueueTimeout
from ._specs import Batching

log = logging.getLogger("prism.batching")


@dataclass(eq=False)
class _Pending:
    task: Task
    group: str  # task + canonical parameters: only equal groups share a forward
    parameters: Mapping[str, Any]
    prepared: Any
    future: asyncio.Future[Output]
    enqueued: float = field(default_factory=time.perf_counter)
    #: when its batch went to the model (queue time = started - enqueued)
    started: float = 0.0


#: the longest queue wait (ms) of the inputs of the last ``LocalBackend.infer`` awaited in this
#: context; the gateway reports it as ``timing_ms.queue`` (0 for backends without a queue)
queue_wait_ms: ContextVar[float] = ContextVar("prism_queue_wait_ms", default=0.0)


@dataclass
class BatchStats:
    """Counters the metrics endpoint reads; cheap to update on the hot path."""

    batches: int = 0
    inputs: int = 0
    #: inputs refused with Overloaded (queue full)
    rejected: int = 0
    #: inputs whose caller left before their forward started: never computed
    dropped: int = 0
    last_batch_size: int = 0
    #: batch size -> number of forwards of that size (at most max_batch_size keys)
    sizes: Counter[int] = field(default_factory=Counter)

    def record(self, size: int) -> None:
        self.batches += 1
        self.inputs += size
        self.last_batch_size = size
        self.sizes[size] += 1


def _group_key(task: Task, parameters: Mapping[str, Any]) -> str:
    return task.value + "|" + json.dumps(parameters, sort_keys=True, default=str)


class LocalBackend(Backend):
    """A :class:`LocalModel` behind a bounded dynamic batcher; model code runs off the loop."""

    def __init__(self, model: LocalModel, batching: Batching, *, name: str = "local") -> None:
        self.model = model
        self.batching = batching
        self.name = name
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending] | None = None
        #: taken off the queue, waiting for a batch of their own group
        self._carry: deque[_Pending] = deque()
        #: admitted inputs still being prepared: they count against max_queue_size already,
        #: or concurrent callers would all pass the check while none is queued yet
        self._preparing = 0
        #: the batch in its forward now (answered with an error if the batcher closes)
        self._running: list[_Pending] = []
        self._collector: asyncio.Task[None] | None = None
        # one thread runs forwards (torch parallelises inside); prepare gets its own threads
        # so decoding the next requests overlaps the current forward
        self._forward_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-forward")
        self._prepare_pool = ThreadPoolExecutor(2, thread_name_prefix=f"{name}-prepare")
        self._loaded = False
        self._load_error: BaseException | None = None
        #: what the loaded model reports, read once: the pipeline asks on every request
        self._capabilities: Capabilities | None = None

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities or self.model.capabilities

    @property
    def queue_depth(self) -> int:
        queued = self._queue.qsize() if self._queue is not None else 0
        return queued + len(self._carry) + self._preparing

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._forward_pool, self.model.load)
        except Exception as exc:
            self._load_error = exc
            raise
        self._queue = asyncio.Queue()
        self._collector = asyncio.create_task(self._collect(), name=f"{self.name}-batcher")
        self._capabilities = self.model.capabilities
        self._loaded = True

    async def health(self) -> bool:
        return self._loaded and self._collector is not None and not self._collector.done()

    async def infer(
        self,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
    ) -> list[Output]:
        if self._queue is None or self._collector is None or self._collector.done():
            raise NotReady(f"model {self.name} is not loaded yet", retry_after_s=5)
        if self.queue_depth + len(items) > self.batching.max_queue_size:
            self.stats.rejected += len(items)
            raise Overloaded(
                f"{self.name}: queue full ({self.batching.max_queue_size} inputs waiting)",
                retry_after_s=1,
            )
        queue = self._queue
        loop = asyncio.get_running_loop()
        pending: list[_Pending] = []
        self._preparing += len(items)
        try:
            # the deadline covers prepare too: decoding a huge image is part of the wait
            async with asyncio.timeout(timeout_s):
                try:
                    prepared = await asyncio.gather(
                        *(
                            self._prepare(loop, i, task, it, parameters)
                            for i, it in enumerate(items)
                        )
                    )
                finally:
                    self._preparing -= len(items)
                group = _group_key(task, parameters)
                pending = [
                    _Pending(task, group, parameters, p, loop.create_future()) for p in prepared
                ]
                for p in pending:
                    queue.put_nowait(p)
                outputs = list(await asyncio.gather(*(p.future for p in pending)))
                queue_wait_ms.set(max((p.started - p.enqueued) * 1000 for p in pending))
                return outputs
        except TimeoutError as exc:
            if pending and all(p.started for p in pending):
                raise ModelTimeout(
                    f"{self.name} did not answer within {timeout_s:.3f} s",
                    headers={"Retry-After": "1"},
                ) from exc
            # still queued (or preparing) at the deadline: load, not a fault of the model
            raise QueueTimeout(
                f"{self.name}: inputs still queued after {timeout_s:.3f} s "
                f"({self.queue_depth} waiting)",
                retry_after_s=1,
            ) from exc
        finally:
            # a caller that left (timeout, cancel) frees its slots before they are computed
            for p in pending:
                if not p.future.done():
                    p.future.cancel()

    async def _prepare(
        self,
        loop: asyncio.AbstractEventLoop,
        index: int,
        task: Task,
        item: InputItem,
        parameters: Mapping[str, Any],
    ) -> Any:
        try:
            return await loop.run_in_executor(
                self._prepare_pool, self.model.prepare, task, item, parameters
            )
        except PrismError as exc:
            exc.input_index = index
            raise

    def _live(self, p: _Pending) -> bool:
        if p.future.done():  # its caller left (cancelled, deadline): never compute it
            self.stats.dropped += 1
            return False
        return True

    async def _collect(self) -> None:
        assert self._queue is not None
        queue = self._queue
        max_size = self.batching.max_batch_size
        preferred = set(self.batching.preferred_batch_sizes)
        delay_s = self.batching.max_queue_delay_ms / 1000
        while True:
            first = self._carry.popleft() if self._carry else await queue.get()
            if not self._live(first):
                continue
            batch = [first]
            # carried inputs of this group waited longest: they join first
            rest: deque[_Pending] = deque()
            for p in self._carry:
                if not self._live(p):
                    continue
                if p.group == first.group and len(batch) < max_size:
                    batch.append(p)
                else:
                    rest.append(p)
            self._carry = rest
            deadline = first.enqueued + delay_s
            # take what is already waiting, then wait for company until the deadline
            while len(batch) < max_size:
                try:
                    nxt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0 or len(batch) in preferred:
                        break
                    try:
                        async with asyncio.timeout(remaining):
                            nxt = await queue.get()
                    except TimeoutError:
                        break
                if not self._live(nxt):
                    continue
                if nxt.group != first.group:
                    self._carry.append(nxt)  # different task/parameters: a later batch
                    if len(self._carry) >= max_size:
                        break  # enough of others waiting: stop filling this one
                    continue
                batch.append(nxt)
            try:
                await self._run(batch)
            except Exception:  # a bug here must not stop the batcher for everyone
                log.exception("%s: batch failed unexpectedly", self.name)
                self._fail(batch, BackendError(f"{self.name} failed unexpectedly"))

    async def _run(self, batch: list[_Pending]) -> None:
        # callers may have left while the batch filled up
        live = [p for p in batch if self._live(p)]
        if not live:
            return
        first = live[0]
        now = time.perf_counter()
        for p in live:
            p.started = now
        self.stats.record(len(live))
        loop = asyncio.get_running_loop()
        self._running = live
        try:
            outputs = await loop.run_in_executor(
                self._forward_pool,
                self.model.forward,
                first.task,
                [p.prepared for p in live],
                first.parameters,
            )
            if len(outputs) != len(live):
                raise BackendError(
                    f"{self.name} returned {len(outputs)} outputs for {len(live)} inputs"
                )
        except Exception as exc:
            err = (
                exc
                if isinstance(exc, PrismError)
                else BackendError(f"{self.name} failed: {type(exc).__name__}")
            )
            if err is not exc:
                err.__cause__ = exc
            self._running = []
            self._fail(live, err)
            return
        # not in a ``finally``: when aclose cancels us mid-forward, it answers these callers
        self._running = []
        for p, out in zip(live, outputs, strict=True):
            if not p.future.done():
                p.future.set_result(out)

    @staticmethod
    def _fail(pending: Sequence[_Pending], err: BaseException) -> None:
        for p in pending:
            if not p.future.done():
                p.future.set_exception(err)

    async def aclose(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        self._loaded = False
        # whoever still waits gets an answer now rather than at their deadline
        waiting = [*self._running, *self._carry]
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        self._carry.clear()
        self._fail(waiting, NotReady(f"{self.name} is shutting down", retry_after_s=1))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._forward_pool, self.model.close)
        self._forward_pool.shutdown(wait=False)
        self._prepare_pool.shutdown(wait=False)
