"""A model on TensorFlow Serving's REST API, or any server speaking KServe's V1 protocol.

``POST /v1/models/{m}[/versions/{v}]:predict`` with the row format (``instances`` in,
``predictions`` out) or the columnar one (``inputs`` in, ``outputs`` out), an optional
``signature_name``; the model's status (``GET /v1/models/{m}[/versions/{v}]``) is the health
probe. The tensors are always the model's own (a ``tensors:`` contract: V1 has no Prism
names); when the server offers metadata (TF Serving's ``GET .../metadata``: the
SignatureDef), the contract is checked against it like v2 metadata, else the contract's
declared datatypes and shapes are used. BYTES travel as JSON strings, or ``{"b64": ...}``
for images and anything not UTF-8; errors arrive as ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from ._base import Capabilities, InputItem, Output, Task
from ._contract import ResolvedContract, Signature, TensorMeta
from ._contract_check import ContractCheck
from ._remote import ProbeClient, RemoteBackend
from ._specs import KServeSpec, TFServingSpec
from ._tensor_specs import TensorContract
from ._tensors import NUMPY_DTYPES, Tensor, TensorFormatError

#: TensorFlow's dtypes as v2 datatypes
TF_DATATYPES = {
    "DT_STRING": "BYTES",
    "DT_FLOAT": "FP32",
    "DT_DOUBLE": "FP64",
    "DT_HALF": "FP16",
    "DT_BFLOAT16": "BF16",
    "DT_INT8": "INT8",
    "DT_INT16": "INT16",
    "DT_INT32": "INT32",
    "DT_INT64": "INT64",
    "DT_UINT8": "UINT8",
    "DT_UINT16": "UINT16",
    "DT_UINT32": "UINT32",
    "DT_UINT64": "UINT64",
    "DT_BOOL": "BOOL",
}


def signature_from_tf_metadata(doc: Any, signature_name: str | None) -> Signature | None:
    """TF Serving's ``/metadata`` answer -> the named SignatureDef (None: not offered)."""
    try:
        defs = doc["metadata"]["signature_def"]["signature_def"]
    except (KeyError, TypeError):
        return None
    sig = defs.get(signature_name or "serving_default") if isinstance(defs, dict) else None
    if not isinstance(sig, dict):
        return None

    def tensors(entries: Any) -> dict[str, TensorMeta]:
        out: dict[str, TensorMeta] = {}
        for name, info in (entries or {}).items():
            if not isinstance(info, dict):
                continue
            shape_doc = info.get("tensor_shape") or {}
            shape: tuple[int, ...] | None = None
            if not shape_doc.get("unknown_rank"):
                shape = tuple(int(d.get("size", -1)) for d in shape_doc.get("dim") or [])
            out[str(name)] = TensorMeta(TF_DATATYPES.get(str(info.get("dtype")), "?"), shape)
        return out

    return Signature(tensors(sig.get("inputs")), tensors(sig.get("outputs")))


def _is_ready(doc: Any) -> bool:
    """KServe V1: ``{"ready": true}``; TF Serving: a version in state AVAILABLE."""
    if not isinstance(doc, dict):
        return False
    if "ready" in doc:
        return doc["ready"] is True
    states = doc.get("model_version_status")
    return isinstance(states, list) and any(
        isinstance(s, dict) and s.get("state") == "AVAILABLE" for s in states
    )


def _wire(t: Tensor, b64: bool) -> list[Any]:
    """One tensor as nested JSON lists, row-major; BYTES as strings or {"b64": ...}."""
    if isinstance(t.data, np.ndarray):
        nested: list[Any] = t.data.reshape(t.shape).tolist()
        return nested

    def one(raw: bytes) -> Any:
        if not b64:
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(raw).decode("ascii")}

    flat = [one(b) for b in t.data]
    return np.array(flat, dtype=object).reshape(t.shape).tolist()


def _from_wire(name: str, datatype: str, values: Any) -> Tensor:
    """A JSON output back into a flat :class:`Tensor` (its shape from the nesting)."""
    if datatype == "BYTES":
        arr = np.array(values, dtype=object)
        flat = []
        for x in arr.ravel():
            if isinstance(x, dict) and isinstance(x.get("b64"), str):
                flat.append(base64.b64decode(x["b64"]))
            elif isinstance(x, str):
                flat.append(x.encode())
            else:
                raise TensorFormatError(f"{name!r} holds {type(x).__name__}, not strings")
        return Tensor(name, datatype, tuple(arr.shape), flat)
    try:
        arr = np.asarray(values, dtype=NUMPY_DTYPES.get(datatype, np.float32))
    except (TypeError, ValueError) as exc:
        raise TensorFormatError(f"{name!r} is not a rectangular {datatype} array") from exc
    return Tensor(name, datatype, tuple(arr.shape), arr.ravel())


class TFServingBackend(RemoteBackend):
    def __init__(
        self,
        url: str,
        remote_model: str,
        contract: TensorContract,
        *,
        name: str,
        remote_version: str | None = None,
        signature_name: str | None = None,
        row_format: bool = True,
        max_connections: int = 64,
        health_interval_s: float = 5.0,
        base_dir: Path | None = None,
    ) -> None:
        super().__init__(
            url, name=name, max_connections=max_connections, health_interval_s=health_interval_s
        )
        path = f"/v1/models/{quote(remote_model, safe='')}"
        if remote_version:
            path += f"/versions/{quote(remote_version, safe='')}"
        self.model_path = path
        self.probe_path = path
        self.signature_name = signature_name
        self.row_format = row_format
        self.contract = ContractCheck(contract, base_dir or Path.cwd(), name)

    @classmethod
    def from_spec(
        cls, spec: TFServingSpec | KServeSpec, url: str, *, name: str, base_dir: Path | None = None
    ) -> TFServingBackend:
        assert spec.tensors is not None  # the spec's validator insists for protocol v1
        tf = spec if isinstance(spec, TFServingSpec) else None
        return cls(
            url,
            spec.remote_model,
            spec.tensors,
            name=name,
            remote_version=spec.remote_version,
            signature_name=tf.signature_name if tf else None,
            row_format=tf.format == "instances" if tf else True,
            max_connections=spec.max_connections,
            health_interval_s=spec.health_interval_s,
            base_dir=base_dir,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self.contract.capabilities()

    @property
    def problem(self) -> str | None:
        mismatch = self.contract.mismatch
        if mismatch is None:
            return None
        return f"contract mismatch at {'.'.join(map(str, mismatch.where))}: {mismatch}"

    # --- health and metadata ----------------------------------------------------------------

    async def start(self) -> None:
        await self.contract.preflight()
        await super().start()
        if self.contract.mismatch is not None:
            mismatch = self.contract.mismatch
            await self.aclose()
            raise mismatch

    async def verify(self) -> None:
        """Re-read the signature now (a policy reload); raises ContractMismatch."""
        if not self.started:
            return
        try:
            await self._check_contract(self.probe_client)
        except httpx.HTTPError:
            return
        if self.contract.mismatch is not None:
            raise self.contract.mismatch

    async def _check_contract(self, client: ProbeClient) -> bool:
        # KServe's V1 server has no metadata (404): the declared contract stands
        resp = await client.get(self.model_path + "/metadata", timeout=self.probe_timeout_s)
        signature = None
        if resp.status_code == 200:
            try:
                signature = signature_from_tf_metadata(resp.json(), self.signature_name)
            except ValueError:
                signature = None
        return await self.contract.check(signature) is None

    async def probe(self, client: ProbeClient) -> bool:
        resp = await client.get(self.probe_path, timeout=self.probe_timeout_s)
        try:
            ready = resp.status_code == 200 and _is_ready(resp.json())
        except ValueError:
            ready = False
        if not ready:
            return False
        if not self.healthy or not self.contract.checked or self.contract.mismatch:
            return await self._check_contract(client)
        return True

    # --- inference -----------------------------------------------------------------------------

    def _body(self, contract: ResolvedContract, tensors: Sequence[Tensor], n: int) -> Any:
        images = {b.name for b in contract.inputs.get("image", [])}
        columns = {t.name: _wire(t, t.name in images) for t in tensors}
        body: dict[str, Any] = {}
        if self.signature_name:
            body["signature_name"] = self.signature_name
        if self.row_format:
            body["instances"] = [{k: v[r] for k, v in columns.items()} for r in range(n)]
        else:
            body["inputs"] = columns
        return body

    def _outputs(self, contract: ResolvedContract, doc: Any, task: Task) -> list[Tensor]:
        wanted = [b for k, b in contract.outputs.items() if b.name in contract.output_names(task)]
        key = "predictions" if self.row_format else "outputs"
        if not isinstance(doc, dict) or key not in doc:
            raise TensorFormatError(f"the answer has no {key!r}")
        answer = doc[key]
        by_name: dict[str, Any] = {}
        if self.row_format:
            if not isinstance(answer, list):
                raise TensorFormatError("'predictions' is not a list")
            if answer and all(isinstance(r, dict) for r in answer):
                for b in wanted:
                    if not all(b.name in r for r in answer):
                        raise TensorFormatError(f"the answer lacks output {b.name!r}")
                    by_name[b.name] = [r[b.name] for r in answer]
            elif len(wanted) == 1:  # one output: TF Serving drops its name
                by_name[wanted[0].name] = answer
            else:
                raise TensorFormatError("'predictions' holds no named outputs")
        elif isinstance(answer, dict):
            by_name = {b.name: answer[b.name] for b in wanted if b.name in answer}
        elif len(wanted) == 1:
            by_name[wanted[0].name] = answer
        return [
            _from_wire(b.name, b.datatype, by_name[b.name]) for b in wanted if b.name in by_name
        ]

    async def infer(
        self,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
    ) -> list[Output]:
        contract = self.contract.require()
        tensors, state = await self.contract.encode(contract, items)
        body = self._body(contract, tensors, len(items))
        resp = await self.call(
            "POST", self.model_path + ":predict", json_body=body, timeout_s=timeout_s
        )
        doc = self.parse_json(resp)
        try:
            outputs = self._outputs(contract, doc, task)
            return await self.contract.decode(
                contract, task, outputs, len(items), state, parameters
            )
        except (TensorFormatError, ValueError) as exc:
            raise self.garbage(str(exc)) from exc


__all__ = ["TFServingBackend", "signature_from_tf_metadata"]
