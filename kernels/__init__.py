"""Prism's embedding kernels: multimodal fusion, pooled history bags, catalogue top-k.

Plain functions on torch tensors. On CUDA tensors they run custom Triton kernels; elsewhere the
torch references in ``kernels._reference`` (which also define the semantics). Set
``PRISM_KERNELS=reference|triton`` to force one; ``triton`` on CPU tensors runs Triton's
interpreter and needs ``TRITON_INTERPRET=1`` set before triton is imported. Importing this
package never imports triton.
"""

from kernels._dispatch import KernelBackendError, requested_backend
from kernels._dispatch import choose as kernel_backend
from kernels._ops import fuse_modalities, fuse_with_history, pooled_embedding_bag, score_topk

__all__ = [
    "KernelBackendError",
    "fuse_modalities",
    "fuse_with_history",
    "kernel_backend",
    "pooled_embedding_bag",
    "requested_backend",
    "score_topk",
]
