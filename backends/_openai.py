"""A model on any OpenAI-compatible ``/v1/embeddings`` server (OpenAI, vLLM, TEI, LiteLLM...).

``url`` is the API base: ``http://host:8000`` or ``http://host:8000/v1`` both mean
``http://host:8000/v1/embeddings``. The key comes from the environment variable named by
``api_key_env`` (never from the policy file itself). Only text embedding is offered: that is
all the OpenAI embeddings API does. Vectors travel as base64 float32 (a quarter of the JSON).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ._base import Capabilities, InputItem, Modality, Output, Task
from ._errors import BackendUnavailable, InvalidInput
from ._remote import ProbeClient, RemoteBackend
from ._specs import OpenAISpec

#: request parameters passed on to the upstream as they are
_PASS_THROUGH = ("dimensions", "user")


def api_base(url: str) -> str:
    """``http://h:1`` -> ``http://h:1/v1``; a URL with a path keeps it."""
    trimmed = url.rstrip("/")
    return trimmed if urlsplit(trimmed).path else trimmed + "/v1"


class OpenAIBackend(RemoteBackend):
    probe_path = "/models"

    def __init__(
        self,
        url: str,
        remote_model: str,
        *,
        name: str,
        api_key_env: str | None = None,
        max_connections: int = 64,
        health_interval_s: float = 5.0,
    ) -> None:
        super().__init__(
            api_base(url),
            name=name,
            max_connections=max_connections,
            health_interval_s=health_interval_s,
        )
        self.remote_model = remote_model
        self.api_key_env = api_key_env
        #: built once per width learnt, not per read: every request reads it
        self._capabilities = Capabilities(frozenset({Modality.TEXT}), frozenset({Task.EMBED}))

    @classmethod
    def from_spec(
        cls, spec: OpenAISpec, url: str, *, name: str, base_dir: Path | None = None
    ) -> OpenAIBackend:
        return cls(
            url,
            spec.remote_model,
            name=name,
            api_key_env=spec.api_key_env,
            max_connections=spec.max_connections,
            health_interval_s=spec.health_interval_s,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def probe(self, client: ProbeClient) -> bool:
        # some embedding servers have no /models: any answer but a 5xx or an auth refusal
        # means the server is up and would take our calls
        status = (await client.get(self.probe_path, timeout=self.probe_timeout_s)).status_code
        return status < 500 and status not in (401, 403)

    async def start(self) -> None:
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise BackendUnavailable(
                    f"{self.name}: environment variable {self.api_key_env} (the API key) is not set"
                )
            self.headers["Authorization"] = f"Bearer {key}"
        await super().start()

    async def infer(
        self,
        task: Task,
        items: Sequence[InputItem],
        parameters: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
    ) -> list[Output]:
        if task is not Task.EMBED:
            raise InvalidInput(f"{self.name} is an OpenAI embeddings server: it only embeds")
        texts: list[str] = []
        for i, item in enumerate(items):
            if item.text is None or item.image is not None or item.modalities != {Modality.TEXT}:
                err = InvalidInput(f"{self.name} only embeds text")
                err.input_index = i
                raise err
            texts.append(item.text)
        body: dict[str, Any] = {
            "model": self.remote_model,
            "input": texts,
            "encoding_format": "base64",
        }
        body.update({k: parameters[k] for k in _PASS_THROUGH if k in parameters})
        resp = await self.call("POST", "/embeddings", json_body=body, timeout_s=timeout_s)
        shortened = "dimensions" in body
        return self._parse(self.parse_json(resp), len(texts), shortened=shortened)

    def _parse(self, doc: Any, n: int, *, shortened: bool = False) -> list[Output]:
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list) or len(data) != n:
            got = len(data) if isinstance(data, list) else "no"
            raise self.garbage(f"{got} embeddings for {n} inputs")
        rows: dict[int, np.ndarray] = {}
        for pos, entry in enumerate(data):
            if not isinstance(entry, dict):
                raise self.garbage(f"data[{pos}] is not an object")
            index = entry.get("index", pos)
            if not isinstance(index, int) or not 0 <= index < n or index in rows:
                raise self.garbage(f"data[{pos}].index {index!r} is not a fresh index < {n}")
            vector = self._vector(entry.get("embedding"), pos)
            if not np.isfinite(vector).all():  # NaN/inf would be cached and served as null
                raise self.garbage(f"data[{pos}].embedding has non-finite values")
            rows[index] = vector
        dims = {v.shape[0] for v in rows.values()}
        if len(dims) != 1 or 0 in dims:
            raise self.garbage(f"embeddings of different or zero widths {sorted(dims)}")
        width = dims.pop()
        caps = self._capabilities
        if not shortened and caps.dim != width:  # a caller's `dimensions` is not the model's
            self._capabilities = Capabilities(caps.modalities, caps.tasks, width)
        return [{"embedding": rows[i]} for i in range(n)]

    def _vector(self, raw: Any, pos: int) -> np.ndarray:
        if isinstance(raw, str):  # base64 of little-endian float32
            try:
                buf = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise self.garbage(f"data[{pos}].embedding is not base64") from exc
            if len(buf) % 4:
                raise self.garbage(f"data[{pos}].embedding is not whole float32s")
            return np.frombuffer(buf, dtype="<f4").astype(np.float32)
        if isinstance(raw, list) and all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in raw
        ):
            return np.asarray(raw, dtype=np.float32)
        raise self.garbage(f"data[{pos}].embedding is neither a float list nor base64")
