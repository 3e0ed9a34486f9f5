"""Measuring a variant against its source: agreement of outputs, and speed side by side.

Speed is items per second through each model's own ``prepare`` + ``forward`` (tokenising,
or decoding and preprocessing an image, included: that is what serving pays), at a fixed
batch size. The two models run in alternating rounds, back to back, the order flipped every
round; each model reports its median round, and the speed-up is the median of the rounds'
own ratios. On a shared machine the rate can wander by 15-20% within a minute: a ratio of
two rounds measured seconds apart moves far less than a ratio of two medians, and flipping
the order cancels a steady drift.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .._base import InputItem, LocalModel, Task
from .._progress import progress as progress_bar

#: timing budget per batch size (both models), and the rounds it is split into: at batch 32,
#: 1.5 s per model and round (about ten forwards of torch fp32 MiniLM on 2 cores)
DEFAULT_SECONDS = 15.0
DEFAULT_ROUNDS = 5


def embed_texts(model: LocalModel, texts: Sequence[str], batch: int = 32) -> np.ndarray:
    """``[len(texts), dim]`` float32 embeddings, ``batch`` texts per forward."""
    return embed_inputs(model, texts, batch)


def embed_inputs(
    model: LocalModel, inputs: Sequence[str | InputItem], batch: int = 32
) -> np.ndarray:
    """``[len(inputs), dim]`` float32 embeddings of texts or input items (an image's bytes are
    decoded and preprocessed in ``prepare``, as served), ``batch`` inputs per forward."""
    items = [InputItem(text=x) if isinstance(x, str) else x for x in inputs]
    rows: list[np.ndarray] = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        prepared = [model.prepare(Task.EMBED, item, {}) for item in chunk]
        rows += [
            np.asarray(o["embedding"], dtype=np.float32)
            for o in model.forward(Task.EMBED, prepared, {})
        ]
    return np.stack(rows)


@dataclass(frozen=True)
class Agreement:
    """How closely a variant's embeddings follow the source's on the same inputs."""

    cosine_mean: float
    cosine_min: float
    #: Spearman correlation of all pairwise similarities (does it rank pairs the same way?)
    spearman: float


def _ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values), dtype=np.float64)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two 1-D arrays (float ties are vanishingly rare here)."""
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)))


def agreement(source: np.ndarray, variant: np.ndarray) -> Agreement:
    """Cosine of each variant embedding with its source embedding, and the Spearman
    correlation of the two models' pairwise cosine similarities over the sample."""

    def unit(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)

    s, v = unit(source), unit(variant)
    cosines = (s * v).sum(axis=1)
    upper = np.triu_indices(len(s), k=1)
    return Agreement(
        cosine_mean=float(cosines.mean()),
        cosine_min=float(cosines.min()),
        spearman=spearman((s @ s.T)[upper], (v @ v.T)[upper]),
    )


@dataclass(frozen=True)
class Speed:
    """Items per second of each model, round by round, and what is read from them."""

    #: each model's rate in each round, in round order
    rounds: dict[str, list[float]]

    @property
    def per_s(self) -> dict[str, float]:
        """Each model's median round."""
        return {name: statistics.median(values) for name, values in self.rounds.items()}

    def speedup(self, model: str, baseline: str) -> float:
        """The median over rounds of ``model``'s rate over ``baseline``'s in the same round."""
        return statistics.median(
            m / b for m, b in zip(self.rounds[model], self.rounds[baseline], strict=True)
        )


def throughput(
    models: Mapping[str, LocalModel],
    texts: Sequence[str | InputItem],
    *,
    batch: int,
    seconds: float,
    rounds: int = 3,
    tick: Callable[[], None] = lambda: None,
) -> Speed:
    """Items per second of each model at ``batch``: ``rounds`` alternating rounds of about
    ``seconds / rounds`` each per model (the order flipped every round), one warm-up forward
    first."""
    chunks = [list(texts[i : i + batch]) for i in range(0, len(texts) - batch + 1, batch)]
    for model in models.values():
        embed_inputs(model, chunks[0], batch)
    per_round: dict[str, list[float]] = {name: [] for name in models}
    order = list(models.items())
    for r in range(rounds):
        for name, model in order if r % 2 == 0 else order[::-1]:
            done, started = 0, time.perf_counter()
            while True:
                embed_inputs(model, chunks[done // batch % len(chunks)], batch)
                done += batch
                elapsed = time.perf_counter() - started
                if elapsed >= seconds / rounds:
                    break
            per_round[name].append(done / elapsed)
            tick()
    return Speed(rounds=per_round)


def side_by_side(
    source: LocalModel,
    variant: LocalModel,
    cases: Sequence[tuple[str, Sequence[str | InputItem], int, float]],
    *,
    rounds: int,
    progress: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """:func:`throughput` of ``source`` and ``variant`` for each ``(key, inputs, batch,
    seconds)`` case, behind one progress bar: each model's rate per case (items/s, rounded)
    and the variant's speed-up over the source per case."""
    models = {"source": source, "variant": variant}
    bar = progress_bar(
        total=len(models) * rounds * len(cases), desc="timing", unit="round", enabled=progress
    )
    speed: dict[str, dict[str, float]] = {name: {} for name in models}
    speedup: dict[str, float] = {}
    for key, inputs, batch, seconds in cases:
        measured = throughput(
            models, inputs, batch=batch, seconds=seconds, rounds=rounds, tick=lambda: bar.update(1)
        )
        for name, rate in measured.per_s.items():
            speed[name][key] = round(rate, 2)
        speedup[key] = round(measured.speedup("variant", "source"), 3)
    bar.close()
    return speed, speedup
