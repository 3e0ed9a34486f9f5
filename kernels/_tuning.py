"""Launch configurations: benchmarked once per problem class on a GPU, then launched directly.

The interpreter runs every program in Python, so it gets small blocks that still exercise the
masking and loop edges, and no tuning (benchmarking configurations there is meaningless and
slow). ``PRISM_KERNELS_AUTOTUNE=0`` pins the first configuration that fits on a GPU, for a
fast cold start.

Why not ``triton.autotune``: its per-call work (a dict of every argument, the dtype string of
every tensor, a tuple key) is paid on every launch, and it needs the key as kernel arguments.
Here the caller passes a small hashable key; a hit costs one dict lookup, then the kernel is
launched with the chosen configuration.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from functools import cache
from typing import Any

import torch
import triton

from prism.kernels._dispatch import interpreting

ENV_AUTOTUNE = "PRISM_KERNELS_AUTOTUNE"

#: Triton reads ``TRITON_INTERPRET`` when it is imported, and this module imports triton: the
#: setting cannot change for the life of the process after this point.
INTERPRET = interpreting()

Grid = Callable[[dict[str, Any]], tuple[int, ...]]


def autotuning() -> bool:
    """True when a new problem class benchmarks its candidate configurations."""
    return not INTERPRET and os.environ.get(ENV_AUTOTUNE, "1") not in ("0", "false", "off")


def size_class(size: int) -> int:
    """A coarse tuning key for a problem size: one bucket per power of two.

    Keying on exact sizes would re-tune for every batch size a server sees.
    """
    return max(size, 1).bit_length()


def pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (``triton.next_power_of_2`` costs microseconds)."""
    return 1 << max(n - 1, 0).bit_length()


@cache
def sm_count(device_index: int) -> int:
    """Streaming multiprocessors of a CUDA device (cached: the query costs microseconds)."""
    return int(torch.cuda.get_device_properties(device_index).multi_processor_count)


class Launcher:
    """Runs a ``@triton.jit`` kernel with the best of ``configs`` for each key.

    ``prune(configs, named_args)`` drops configurations that do not fit the call (it sees the
    call's arguments by name, constexprs included) and must keep at least one. ``interpret``
    is the configuration used under ``TRITON_INTERPRET=1``. ``grid(meta)`` gets the call's
    keyword arguments merged with the configuration's.
    """

    def __init__(
        self,
        kernel: Any,
        configs: Sequence[triton.Config],
        interpret: triton.Config,
        prune: Callable[[list[triton.Config], dict[str, Any]], list[triton.Config]] | None = None,
    ) -> None:
        self._kernel = kernel
        self._configs = list(configs)
        self._interpret = interpret
        self._prune = prune or (lambda cfgs, _args: cfgs)
        self._chosen: dict[Hashable, triton.Config] = {}
        #: The configuration of the latest launch (diagnostics: the benchmark records it).
        self.last_config: triton.Config | None = None

    def __call__(self, key: Hashable, grid: Grid, *args: Any, **kwargs: Any) -> None:
        config = self._chosen.get(key)
        if config is None:
            config = self._choose(grid, args, kwargs)
            self._chosen[key] = config
        self.last_config = config
        meta = {**kwargs, **config.kwargs}
        self._kernel[grid(meta)](
            *args, **meta, num_warps=config.num_warps, num_stages=config.num_stages
        )

    def _choose(self, grid: Grid, args: tuple[Any, ...], kwargs: dict[str, Any]) -> triton.Config:
        if INTERPRET:
            return self._interpret
        # Positional args are a prefix of arg_names; the constexprs come as kwargs.
        named = {**dict(zip(self._kernel.arg_names, args, strict=False)), **kwargs}
        fitting = self._prune(list(self._configs), named)
        if len(fitting) == 1 or not autotuning():
            return fitting[0]
        from triton.testing import do_bench

        timings: dict[int, float] = {}
        for i, config in enumerate(fitting):
            meta = {**kwargs, **config.kwargs}
            launch = self._kernel[grid(meta)]

            def run(launch: Any = launch, meta: dict[str, Any] = meta, c: Any = config) -> None:
                launch(*args, **meta, num_warps=c.num_warps, num_stages=c.num_stages)

            try:
                timings[i] = float(do_bench(run, warmup=5, rep=20, return_mode="median"))
            except Exception:  # out of resources, or a config this triton cannot compile
                continue
        if not timings:
            return fitting[0]
        return fitting[min(timings, key=lambda i: timings[i])]
