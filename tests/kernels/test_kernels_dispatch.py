"""Backend selection, and that the package works without triton."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import prism.kernels.ops as kernels
from prism.kernels._dispatch import triton_installed

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_tensors_use_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRISM_KERNELS", raising=False)
    assert kernels.kernel_backend(torch.device("cpu")) == "reference"


@pytest.mark.skipif(not triton_installed(), reason="triton is not installed")
def test_cuda_tensors_use_triton_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")  # only the device type is consulted; no GPU needed
    monkeypatch.delenv("PRISM_KERNELS", raising=False)
    assert kernels.kernel_backend(cuda) == "triton"
    monkeypatch.setenv("PRISM_KERNELS", "reference")
    assert kernels.kernel_backend(cuda) == "reference"
    assert kernels.kernel_backend(cuda, "auto") == "triton"  # the argument wins


def test_unknown_backend_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRISM_KERNELS", "cuda")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.kernel_backend(torch.device("cpu"))


@pytest.mark.skipif(not triton_installed(), reason="triton is not installed")
def test_triton_on_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("PRISM_KERNELS", "triton")
    with pytest.raises(kernels.KernelBackendError, match="TRITON_INTERPRET=1"):
        kernels.fuse_modalities(torch.randn(2, 3, 4), [1.0, 1.0])


def _python(code: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("PRISM_KERNELS", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_works_without_triton_and_never_imports_it_on_cpu() -> None:
    proc = _python(
        """
        import sys
        sys.modules["triton"] = None  # any `import triton` now fails, as if not installed
        import torch
        import prism.kernels.ops as kernels
        out = kernels.fuse_modalities(torch.randn(2, 3, 4), [1.0, 2.0])
        bag = kernels.pooled_embedding_bag(torch.randn(9, 4), torch.tensor([1, 2]), torch.tensor([0]))
        top = kernels.score_topk(torch.randn(2, 4), torch.randn(9, 4), 3)
        assert out.shape == (3, 4) and bag.shape == (1, 4) and top[0].shape == (2, 3)
        assert kernels.kernel_backend(torch.device("cuda")) == "reference"
        try:
            kernels.kernel_backend(torch.device("cuda"), "triton")
        except kernels.KernelBackendError as exc:
            print("refused:", exc)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "refused: the triton backend was requested but triton is not installed" in proc.stdout


def test_importing_kernels_does_not_import_triton() -> None:
    proc = _python(
        """
        import sys, torch
        import prism.kernels.ops as kernels
        kernels.score_topk(torch.randn(2, 4), torch.randn(9, 4), 3)
        print("triton" in sys.modules)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_small_catalogue_threshold_only_applies_to_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    from prism.kernels import _dispatch
    from prism.kernels import ops as _ops

    monkeypatch.delenv("PRISM_KERNELS", raising=False)
    assert _dispatch.is_auto(None) and _dispatch.is_auto("auto")
    assert not _dispatch.is_auto("triton") and not _dispatch.is_auto("reference")
    monkeypatch.setenv("PRISM_KERNELS", "triton")
    assert not _dispatch.is_auto(None)  # a forced backend is never second-guessed
    assert _dispatch.is_auto("auto")
    assert _ops.AUTO_TOPK_MIN_ITEMS == 1_000_000
