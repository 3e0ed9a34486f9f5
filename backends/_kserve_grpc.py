"""A model on a KServe v2 / Open Inference Protocol server over gRPC (Triton's port 8001).

``grpc: true`` on a ``kserve`` version, or a ``grpc://host:port`` URL. The same tensor
contract and processing as over HTTP (:mod:`backends._contract`), or Prism's own tensor
names without one; tensors travel as ``raw_input_contents`` / ``raw_output_contents``
(numbers little-endian, BYTES length-prefixed, as Triton's binary extension).

Deadlines are the call's gRPC deadline; a caller that goes away cancels its RPC (grpc.aio
cancels the call when the awaiting task is cancelled). Status codes are mapped once, here:

========================================= ==========================================
gRPC status                               raised
========================================= ==========================================
DEADLINE_EXCEEDED                         :class:`BackendTimeout` (504)
UNAVAILABLE                               :class:`BackendUnavailable` (502, retryable)
RESOURCE_EXHAUSTED                        :class:`UpstreamBusy` (503)
NOT_FOUND, UNAUTHENTICATED, PERMISSION... :class:`UpstreamRefused` (502)
INVALID_ARGUMENT, FAILED_PRECONDITION...  :class:`UpstreamRejected` (502, not retried)
anything else                             :class:`BackendError` (502)
========================================= ==========================================

Health is ``ServerReady`` + ``ModelReady``, probed in the background like the HTTP backends.
``grpcio`` and ``tritonclient``'s generated messages are imported when such a version is
built, never by a gateway that has none (``pip install prism-gateway[grpc]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._base import Backend, Capabilities, InputItem, Modality, Output, Task
from ._contract import Signature, TensorMeta
from ._contract_check import ContractCheck
from ._errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    PrismError,
    QueueTimeout,
    UpstreamBusy,
    UpstreamRefused,
    UpstreamRejected,
)
from ._remote import DEFAULT_TIMEOUT_S, MAX_UPSTREAM_MESSAGE, RemoteStats
from ._specs import KServeSpec
from ._tensor_specs import TensorContract
from ._tensors import (
    LITTLE_ENDIAN,
    NUMPY_DTYPES,
    Tensor,
    TensorFormatError,
    _pack_bytes,
    _unpack_bytes,
)
from ._v2 import items_to_tensors, tensors_to_outputs

log = logging.getLogger("prism.remote")

#: gRPC's default 4 MiB is small for image batches and token embeddings
MAX_MESSAGE_BYTES = 256 * 2**20


def grpc_target(url: str) -> str:
    """``grpc://host:8001`` or ``http://host:8001`` -> ``host:8001``."""
    return url.split("://", 1)[-1].rstrip("/")


class KServeGrpcBackend(Backend):
    def __init__(
        self,
        url: str,
        remote_model: str,
        remote_version: str | None = None,
        *,
        name: str,
        max_connections: int = 64,
        health_interval_s: float = 5.0,
        contract: TensorContract | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.base_url = url
        self.target = grpc_target(url)
        self.remote_model = remote_model
        self.remote_version = remote_version or ""
        self.name = name
        self.max_connections = max_connections
        self.health_interval_s = health_interval_s
        self.probe_timeout_s = min(2.0, health_interval_s)
        self.contract = (
            ContractCheck(contract, base_dir or Path.cwd(), name) if contract is not None else None
        )
        self.stats = RemoteStats()
        self.healthy_since: float | None = None
        self._healthy = False
        self._slots = asyncio.Semaphore(max_connections)
        self._channel: Any = None
        self._stub: Any = None
        self._pb: Any = None
        self._grpc: Any = None
        self._prober: asyncio.Task[None] | None = None
        self._capabilities = Capabilities(frozenset(Modality), frozenset(Task))

    @classmethod
    def from_spec(
        cls, spec: KServeSpec, url: str, *, name: str, base_dir: Path | None = None
    ) -> KServeGrpcBackend:
        return cls(
            url,
            spec.remote_model,
            spec.remote_version,
            name=name,
            max_connections=spec.max_connections,
            health_interval_s=spec.health_interval_s,
            contract=spec.tensors,
            base_dir=base_dir,
        )

    @property
    def capabilities(self) -> Capabilities:
        if self.contract is not None:
            return self.contract.capabilities()
        return self._capabilities

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def problem(self) -> str | None:
        if self.contract is not None and self.contract.mismatch is not None:
            where = ".".join(map(str, self.contract.mismatch.where))
            return f"contract mismatch at {where}: {self.contract.mismatch}"
        return None

    async def health(self) -> bool:
        return self._healthy

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self._grpc, self._pb = grpc, service_pb2
        if self.contract is not None:
            await self.contract.preflight()
        self._channel = grpc.aio.insecure_channel(
            self.target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        # the first probe gets longer (the channel connects); an upstream down at boot is
        # noticed by the probe loop later
        await self._probe_once(2.0)
        if self.contract is not None and self.contract.mismatch is not None:
            mismatch = self.contract.mismatch
            await self.aclose()
            raise mismatch
        self._prober = asyncio.create_task(self._probe_loop(), name=f"{self.name}-probe")

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close(grace=2.0)
        self._healthy = False

    # --- health and metadata ----------------------------------------------------------------

    async def _probe(self, t: float) -> bool:
        pb = self._pb
        if not (await self._stub.ServerReady(pb.ServerReadyRequest(), timeout=t)).ready:
            return False
        model = pb.ModelReadyRequest(name=self.remote_model, version=self.remote_version)
        if not (await self._stub.ModelReady(model, timeout=t)).ready:
            return False
        if self.contract is not None:
            if not self._healthy or not self.contract.checked or self.contract.mismatch:
                return await self._check_contract(t)
        elif self._capabilities.dim is None:
            self._read_conventions(await self._metadata(t))
        return True

    async def _metadata(self, timeout_s: float) -> Any:
        request = self._pb.ModelMetadataRequest(name=self.remote_model, version=self.remote_version)
        return await self._stub.ModelMetadata(request, timeout=timeout_s)

    def _read_conventions(self, meta: Any) -> None:
        from ._kserve import capabilities_from_metadata

        doc = {
            "inputs": [{"name": i.name, "shape": list(i.shape)} for i in meta.inputs],
            "outputs": [{"name": o.name, "shape": list(o.shape)} for o in meta.outputs],
        }
        caps = capabilities_from_metadata(doc)
        if caps is not None:
            self._capabilities = caps

    async def _check_contract(self, timeout_s: float) -> bool:
        assert self.contract is not None
        meta = await self._metadata(timeout_s)
        signature = Signature(
            {i.name: TensorMeta(i.datatype, tuple(i.shape)) for i in meta.inputs},
            {o.name: TensorMeta(o.datatype, tuple(o.shape)) for o in meta.outputs},
        )
        return await self.contract.check(signature) is None

    async def verify(self) -> None:
        """Re-read the model's metadata now (a policy reload); raises ContractMismatch."""
        if self.contract is None or self._stub is None:
            return
        try:
            await self._check_contract(2.0)
        except self._grpc.RpcError:
            return  # unreachable now: the probe checks again when it is back
        if self.contract.mismatch is not None:
            raise self.contract.mismatch

    async def _probe_once(self, timeout_s: float) -> None:
        was = self._healthy
        try:
            async with asyncio.timeout(timeout_s * 3 + 0.5):
                self._healthy = await self._probe(timeout_s)
        except (self._grpc.RpcError, TimeoutError, ValueError, PrismError):
            self._healthy = False
        if self._healthy and not was:
            self.healthy_since = time.monotonic()
        if was != self._healthy:
            log.log(
                logging.INFO if self._healthy else logging.WARNING,
                "%s is %s",
                self.name,
                "healthy" if self._healthy else "unhealthy",
            )

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            try:
                await self._probe_once(self.probe_timeout_s)
            except Exception:
                self._healthy = False
                log.exception("health probe of %s failed unexpectedly", self.name)

    # --- calls -----------------------------------------------------------------------------

    def _mapped(self, exc: Any) -> PrismError:
        codes = self._grpc.StatusCode
        code = exc.code()
        message = (exc.details() or str(code))[:MAX_UPSTREAM_MESSAGE]
        where = f"upstream grpc://{self.target}"
        extra = {"upstream_status": code.name}
        if code == codes.DEADLINE_EXCEEDED:
            return BackendTimeout(f"{where} did not answer in time: {message}", extra=extra)
        if code == codes.UNAVAILABLE:
            self._healthy = False
            return BackendUnavailable(f"{where} is unavailable: {message}", extra=extra)
        if code == codes.RESOURCE_EXHAUSTED:
            return UpstreamBusy(
                f"{where} is busy: {message}", extra=extra, headers={"Retry-After": "1"}
            )
        if code in (codes.NOT_FOUND, codes.UNAUTHENTICATED, codes.PERMISSION_DENIED):
            return UpstreamRefused(f"{where} refused the request: {message}", extra=extra)
        if code in (
            codes.INVALID_ARGUMENT,
            codes.FAILED_PRECONDITION,
            codes.OUT_OF_RANGE,
            codes.UNIMPLEMENTED,
        ):
            return UpstreamRejected(f"{where} rejected the request: {message}", extra=extra)
        return BackendError(f"{where} failed ({code.name}): {message}", extra=extra)

    async def _call(self, request: Any, timeout_s: float | None) -> Any:
        if self._stub is None:
            raise BackendUnavailable(f"{self.name} is not started")
        started = time.perf_counter()
        budget = timeout_s if timeout_s is not None else DEFAULT_TIMEOUT_S
        try:
            async with asyncio.timeout(budget):
                await self._slots.acquire()
        except TimeoutError as exc:
            self.stats.record("queue_timeout", time.perf_counter() - started)
            raise QueueTimeout(
                f"{self.name}: all {self.max_connections} calls busy for {budget:.3f} s",
                retry_after_s=1,
            ) from exc
        try:
            remaining = max(0.001, budget - (time.perf_counter() - started))
            # a cancelled caller cancels the RPC: grpc.aio ends the call with the task
            response = await self._stub.ModelInfer(request, timeout=remaining)
        except self._grpc.RpcError as exc:
            err = self._mapped(exc)
            self.stats.record(err.code, time.perf_counter() - started)
            raise err from exc
        finally:
            self._slots.release()
        self.stats.record("ok", time.perf_counter() - started)
        self._healthy = True
        return response

    def _request(
        self, tensors: Sequence[Tensor], outputs: Sequence[str], parameters: Mapping[str, Any]
    ) -> Any:
        pb = self._pb
        request = pb.ModelInferRequest(
            model_name=self.remote_model, model_version=self.remote_version
        )
        for t in tensors:
            request.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
            if isinstance(t.data, np.ndarray):
                raw = t.data.astype(t.data.dtype.newbyteorder("<"), copy=False).tobytes()
            else:
                raw = _pack_bytes(t.data)
            request.raw_input_contents.append(raw)
        for name in outputs:
            request.outputs.add(name=name)
        for key, value in parameters.items():
            p = request.parameters[key]
            if isinstance(value, bool):
                p.bool_param = value
            elif isinstance(value, int):
                p.int64_param = value
            elif isinstance(value, float):
                p.double_param = value
            else:
                p.string_param = value if isinstance(value, str) else json.dumps(value)
        return request

    @staticmethod
    def _tensors(response: Any) -> list[Tensor]:
        out: list[Tensor] = []
        raws = list(response.raw_output_contents)
        for i, o in enumerate(response.outputs):
            if i >= len(raws):
                raise TensorFormatError(f"output {o.name!r} has no contents")
            shape = tuple(int(d) for d in o.shape)
            data: list[bytes] | np.ndarray
            if o.datatype == "BYTES":
                data = _unpack_bytes(raws[i], o.name)
            elif o.datatype in NUMPY_DTYPES:
                dtype = LITTLE_ENDIAN[o.datatype]
                if len(raws[i]) % dtype.itemsize:
                    raise TensorFormatError(f"output {o.name!r} is not whole {o.datatype}")
                data = np.frombuffer(raws[i], dtype=dtype).astype(NUMPY_DTYPES[o.datatype])
            else:
                raise TensorFormatError(f"output {o.name!r} has datatype {o.datatype}")
            if len(data) != int(np.prod(shape)):
                raise TensorFormatError(f"output {o.name!r} does not fill {list(shape)}")
            out.append(Tensor(o.name, o.datatype, shape, data))
        return out

    async def infer(
        self,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
    ) -> list[Output]:
        if self.contract is None:
            params = {**parameters, "task": task.value}
            request = self._request(items_to_tensors(items), [], params)
            response = await self._call(request, timeout_s)
            try:
                return tensors_to_outputs(task, self._tensors(response), len(items))
            except TensorFormatError as exc:
                raise self._garbage(str(exc)) from exc
        contract = self.contract.require()
        tensors, state = await self.contract.encode(contract, items)
        request = self._request(tensors, contract.output_names(task), {})
        response = await self._call(request, timeout_s)
        try:
            return await self.contract.decode(
                contract, task, self._tensors(response), len(items), state, parameters
            )
        except (TensorFormatError, ValueError) as exc:
            raise self._garbage(str(exc)) from exc

    def _garbage(self, why: str) -> BackendError:
        return BackendError(f"upstream grpc://{self.target} answered garbage: {why}")


__all__ = ["KServeGrpcBackend", "grpc_target"]
