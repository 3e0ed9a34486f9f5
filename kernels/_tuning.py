"""Launch configurations: autotuned on a GPU, one fixed configuration under the interpreter.

The interpreter runs every program in Python, so it gets small blocks that still exercise the
masking and loop edges, and no autotuning (benchmarking configurations there is meaningless and
slow). ``PRISM_KERNELS_AUTOTUNE=0`` also pins the first configuration on a GPU, for a fast
cold start.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import triton

from kernels._dispatch import interpreting

ENV_AUTOTUNE = "PRISM_KERNELS_AUTOTUNE"


def autotuning() -> bool:
    """True when GPU launches benchmark their candidate configurations."""
    return not interpreting() and os.environ.get(ENV_AUTOTUNE, "1") not in ("0", "false", "off")


def size_class(*sizes: int) -> int:
    """A coarse autotune key for problem sizes: one bucket per power of two of each size.

    Keying on exact sizes would re-tune for every batch size a server sees.
    """
    key = 0
    for s in sizes:
        key = key * 64 + max(int(s), 1).bit_length()
    return key


class Launcher:
    """Runs a ``@triton.jit`` kernel with the best of ``configs`` (or the first, see above).

    ``prune(configs, named_args)`` drops configurations that do not fit the call (it sees the
    call's keyword arguments, e.g. ``BLOCK_D``) and must keep at least one. ``interpret`` is
    the configuration used under ``TRITON_INTERPRET=1``.
    """

    def __init__(
        self,
        kernel: Any,
        configs: Sequence[triton.Config],
        key: list[str],
        interpret: triton.Config,
        prune: Callable[[list[triton.Config], dict[str, Any]], list[triton.Config]] | None = None,
    ) -> None:
        self._kernel = kernel
        self._configs = list(configs)
        self._interpret = interpret
        self._prune = prune or (lambda cfgs, _args: cfgs)

        def early_prune(
            cfgs: list[triton.Config], nargs: dict[str, Any], **kwargs: Any
        ) -> list[triton.Config]:
            return self._prune(list(cfgs), {**nargs, **kwargs})

        self._tuned = triton.autotune(
            configs=self._configs, key=key, prune_configs_by={"early_config_prune": early_prune}
        )(kernel)

    def __call__(
        self, grid: Callable[[dict[str, Any]], tuple[int, ...]], *args: Any, **kwargs: Any
    ) -> None:
        if autotuning():
            self._tuned[grid](*args, **kwargs)
            return
        # Under the interpreter: the fixed small config; on a GPU without autotuning: the first
        # config that fits the call.
        if interpreting():
            config = self._interpret
        else:
            # Positional args are a prefix of arg_names; the constexprs come as kwargs.
            named = {**dict(zip(self._kernel.arg_names, args, strict=False)), **kwargs}
            config = self._prune(list(self._configs), named)[0]
        meta = {**kwargs, **config.kwargs}
        self._kernel[grid(meta)](
            *args, **meta, num_warps=config.num_warps, num_stages=config.num_stages
        )
