"""A deterministic fake model for tests, demos and benchmarks.

Vectors are seeded from the input's content, so equal inputs embed equally in every process;
``latency_ms`` and the failure scripts (``fail_every``, ``fail_rate``) let tests exercise
batching, latency-aware routing, retries and circuit breakers without a real model.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._base import Capabilities, InputItem, LocalModel, Modality, Output, Task
from ._errors import BackendError
from ._parameters import classify_top_k, label_list, top_k
from ._specs import FakeSpec

#: the fake catalogue's size, as far as top_k goes
MAX_FAKE_TOP_K = 1000


class FakeModel(LocalModel):
    def __init__(self, spec: FakeSpec) -> None:
        self.spec = spec
        self._calls = 0
        self._lock = threading.Lock()
        self._rng = random.Random(spec.seed)

    @classmethod
    def from_spec(cls, spec: FakeSpec, base_dir: object = None, device: str = "cpu") -> FakeModel:
        return cls(spec)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            modalities=frozenset(Modality),
            tasks=frozenset(Task),
            dim=self.spec.dim,
            parameters=frozenset({"labels", "top_k"}),
        )

    def embed(self, item: InputItem) -> np.ndarray:
        """Unit vector seeded by (seed, content): same input -> same vector, everywhere."""
        digest = hashlib.blake2b(
            item.fingerprint(), digest_size=8, key=str(self.spec.seed).encode()
        )
        rng = np.random.default_rng(int.from_bytes(digest.digest(), "little"))
        vec = rng.standard_normal(self.spec.dim).astype(np.float32)
        return vec / np.linalg.norm(vec)

    def forward(
        self, task: Task, prepared: Sequence[Any], parameters: Mapping[str, Any]
    ) -> list[Output]:
        with self._lock:
            self._calls += 1
            call = self._calls
            unlucky = self.spec.fail_rate is not None and self._rng.random() < self.spec.fail_rate
        if self.spec.latency_ms:
            time.sleep(self.spec.latency_ms / 1000)
        if (self.spec.fail_every and call % self.spec.fail_every == 0) or unlucky:
            raise BackendError(f"fake model failed on purpose (call {call})")
        return [self._one(task, item, parameters) for item in prepared]

    def _one(self, task: Task, item: InputItem, parameters: Mapping[str, Any]) -> Output:
        vec = self.embed(item)
        if task is Task.EMBED:
            return {"embedding": vec}
        if task is Task.CLASSIFY:
            labels = label_list(parameters)
            k = classify_top_k(parameters, len(labels))
            scores = np.array([float(vec @ self.embed(InputItem(text=str(lb)))) for lb in labels])
            probs = np.exp(scores * 10) / np.exp(scores * 10).sum()
            ranked = sorted(zip(labels, probs.tolist(), strict=True), key=lambda p: -p[1])
            return {"labels": [{"label": lb, "score": s} for lb, s in ranked[:k]]}
        k = top_k(parameters, MAX_FAKE_TOP_K)
        history = set(item.history or ())
        items = [f"item-{i}" for i in range(k + len(history)) if f"item-{i}" not in history]
        return {
            "items": [{"id": i, "score": 1.0 / (n + 1)} for n, i in enumerate(items[:k])],
            "ignored_history": [],
        }
