"""A model on any KServe v2 / Open Inference Protocol server (Triton, KServe, ``prism worker``).

Requests follow the tensor conventions of :mod:`backends._v2` (inputs ``text``/``image``/
``user``/``history``, ``parameters.task``); outputs are asked for in Triton's binary form
(``binary_data_output``), which a server without the extension simply ignores. The health
probe is the model's own readiness (``GET /v2/models/{m}[/versions/{v}]/ready``); once the
upstream is up, its metadata tells Prism the model's modalities, tasks and width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from ._base import Capabilities, InputItem, Modality, Output, Task
from ._remote import RemoteBackend
from ._specs import KServeSpec
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

    @classmethod
    def from_spec(cls, spec: KServeSpec, url: str, *, name: str) -> KServeBackend:
        return cls(
            url,
            spec.remote_model,
            spec.remote_version,
            name=name,
            max_connections=spec.max_connections,
            health_interval_s=spec.health_interval_s,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def probe(self, client: httpx.AsyncClient) -> bool:
        if (await client.get(self.probe_path, timeout=self.probe_timeout_s)).status_code != 200:
            return False
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
