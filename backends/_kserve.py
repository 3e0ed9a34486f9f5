"""A model on any KServe v2 / Open Inference Protocol server (Triton, KServe, ``prism worker``).

Requests follow the tensor conventions of :mod:`backends._v2` (inputs ``text``/``image``/
``user``/``history``, ``parameters.task``); outputs are asked for in Triton's binary form
(``binary_data_output``), which a server without the extension simply ignores. The health
probe is the model's own readiness (``GET /v2/models/{m}[/versions/{v}]/ready``); once the
upstream is up, its metadata tells Prism the model's modalities, tasks and width.

A version with a ``tensors:`` contract speaks the model's own tensor names instead
(:mod:`backends._contract`): the metadata is then checked against the contract at start,
whenever the upstream comes back and at each reload (:meth:`KServeBackend.verify`); numeric
inputs travel in Triton's binary form, and only the outputs the task reads are asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from ._base import Capabilities, InputItem, Modality, Output, Task
from ._contract import ContractMismatch, Signature, TensorMeta
from ._contract_check import ContractCheck
from ._remote import ProbeClient, RemoteBackend
from ._specs import KServeSpec
from ._tensor_specs import TensorContract
from ._tensors import Tensor
from ._v2 import (
    TensorFormatError,
    items_to_tensors,
    read_tensors,
    split_body,
    tensors_to_outputs,
    write_tensors,
)

_MODALITY_OF_INPUT = {
    "text": Modality.TEXT,
    "image": Modality.IMAGE,
    "user": Modality.USER,
    "history": Modality.USER,
}
_TASK_OF_OUTPUT = {"embedding": Task.EMBED, "label": Task.CLASSIFY, "item": Task.RECOMMEND}


def capabilities_from_metadata(meta: Any) -> Capabilities | None:
    """What a v2 model's metadata says it does, under Prism's conventions (None = can't tell)."""
    if not isinstance(meta, dict):
        return None
    inputs = [i for i in meta.get("inputs") or [] if isinstance(i, dict)]
    outputs = [o for o in meta.get("outputs") or [] if isinstance(o, dict)]
    modalities = {
        _MODALITY_OF_INPUT[i["name"]] for i in inputs if i.get("name") in _MODALITY_OF_INPUT
    }
    tasks = {_TASK_OF_OUTPUT[o["name"]] for o in outputs if o.get("name") in _TASK_OF_OUTPUT}
    if not modalities or not tasks:
        return None
    dim = None
    for o in outputs:
        shape = o.get("shape")
        if o.get("name") == "embedding" and isinstance(shape, list) and shape:
            last = shape[-1]
            dim = last if isinstance(last, int) and last > 0 else None
    return Capabilities(frozenset(modalities), frozenset(tasks), dim)


def signature_from_metadata(meta: Any) -> Signature | None:
    """A v2 model's metadata as a protocol-neutral :class:`Signature` (None: unreadable)."""
    if not isinstance(meta, dict):
        return None

    def tensors(entries: Any) -> dict[str, TensorMeta]:
        out: dict[str, TensorMeta] = {}
        for e in entries if isinstance(entries, list) else []:
            if isinstance(e, dict) and isinstance(e.get("name"), str):
                raw = e.get("shape")
                shape: list[Any] = raw if isinstance(raw, list) else []
                out[e["name"]] = TensorMeta(
                    str(e.get("datatype")), tuple(int(d) for d in shape if isinstance(d, int))
                )
        return out

    return Signature(tensors(meta.get("inputs")), tensors(meta.get("outputs")))


class KServeBackend(RemoteBackend):
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
        super().__init__(
            url,
            name=name,
            max_connections=max_connections,
            health_interval_s=health_interval_s,
        )
        self.remote_model = remote_model
        self.remote_version = remote_version
        path = f"/v2/models/{quote(remote_model, safe='')}"
        if remote_version:
            path += f"/versions/{quote(remote_version, safe='')}"
        self.model_path = path
        self.probe_path = path + "/ready"
        # until the upstream's metadata is read, let it decide what it serves
        self._capabilities = Capabilities(frozenset(Modality), frozenset(Task))
        self._metadata_read = False
        self.contract = (
            ContractCheck(contract, base_dir or Path.cwd(), name) if contract is not None else None
        )

    @classmethod
    def from_spec(
        cls, spec: KServeSpec, url: str, *, name: str, base_dir: Path | None = None
    ) -> KServeBackend:
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
    def problem(self) -> str | None:
        """Why this target cannot serve although its upstream answers (readiness shows it)."""
        if self.contract is not None and self.contract.mismatch is not None:
            where = ".".join(map(str, self.contract.mismatch.where))
            return f"contract mismatch at {where}: {self.contract.mismatch}"
        return None

    async def start(self) -> None:
        if self.contract is not None:
            await self.contract.preflight()
        await super().start()
        if self.contract is not None and self.contract.mismatch is not None:
            mismatch = self.contract.mismatch
            await self.aclose()
            raise mismatch

    async def verify(self) -> None:
        """Re-read the model's metadata now (a policy reload); raises ContractMismatch."""
        if self.contract is None or not self.started:
            return
        try:
            await self._check_contract(self.probe_client)
        except httpx.HTTPError:
            return  # unreachable now: the probe checks again when it is back
        if self.contract.mismatch is not None:
            raise self.contract.mismatch

    async def _check_contract(self, client: ProbeClient) -> bool:
        assert self.contract is not None
        resp = await client.get(self.model_path, timeout=self.probe_timeout_s)
        signature = None
        if resp.status_code == 200:
            try:
                signature = signature_from_metadata(resp.json())
            except ValueError:
                signature = None
        return await self.contract.check(signature) is None

    async def probe(self, client: ProbeClient) -> bool:
        if (await client.get(self.probe_path, timeout=self.probe_timeout_s)).status_code != 200:
            return False
        if self.contract is not None:
            # a server that was down (or never checked) may come back serving another model
            if not self.healthy or not self.contract.checked or self.contract.mismatch:
                return await self._check_contract(client)
            return True
        if not self._metadata_read:
            resp = await client.get(self.model_path, timeout=self.probe_timeout_s)
            if resp.status_code == 200:
                try:
                    caps = capabilities_from_metadata(resp.json())
                except ValueError:
                    caps = None  # unreadable metadata: keep serving, the upstream decides
                if caps is not None:
                    self._capabilities = caps
                self._metadata_read = True
        return True

    async def infer(
        self,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
    ) -> list[Output]:
        if self.contract is not None:
            return await self._infer_contract(task, items, parameters, timeout_s)
        entries, _ = write_tensors(items_to_tensors(items), {})
        body = {
            "inputs": entries,
            "parameters": {**parameters, "task": task.value, "binary_data_output": True},
        }
        resp = await self.call(
            "POST", self.model_path + "/infer", json_body=body, timeout_s=timeout_s
        )
        try:
            doc, tail = split_body(
                resp.content, resp.headers.get("inference-header-content-length")
            )
            outputs = read_tensors(doc.get("outputs"), tail, kind="output")
            return tensors_to_outputs(task, outputs, len(items))
        except TensorFormatError as exc:
            raise self.garbage(str(exc)) from exc

    async def _infer_contract(
        self,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        timeout_s: float | None,
    ) -> list[Output]:
        assert self.contract is not None
        contract = self.contract.require()
        tensors, state = await self.contract.encode(contract, items)
        content, headers = v2_request(tensors, contract.output_names(task))
        resp = await self.call(
            "POST",
            self.model_path + "/infer",
            content=content,
            headers=headers,
            timeout_s=timeout_s,
        )
        try:
            doc, tail = split_body(
                resp.content, resp.headers.get("inference-header-content-length")
            )
            outputs = read_tensors(doc.get("outputs"), tail, kind="output")
            return await self.contract.decode(
                contract, task, outputs, len(items), state, parameters
            )
        except (TensorFormatError, ValueError) as exc:
            raise self.garbage(str(exc)) from exc


def v2_request(tensors: Sequence[Tensor], outputs: Sequence[str]) -> tuple[bytes, dict[str, str]]:
    """A v2 infer body: numeric tensors in Triton's binary form after the JSON, BYTES in
    JSON; the named outputs asked for in binary form."""
    binary = {t.name: isinstance(t.data, np.ndarray) for t in tensors}
    entries, tail = write_tensors(tensors, binary)
    doc = {
        "inputs": entries,
        "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in outputs],
    }
    head = json.dumps(doc, separators=(",", ":")).encode()
    headers = {"content-type": "application/json"}
    if tail:
        headers["inference-header-content-length"] = str(len(head))
    return head + tail, headers


__all__ = [
    "ContractMismatch",
    "KServeBackend",
    "capabilities_from_metadata",
    "signature_from_metadata",
    "v2_request",
]
