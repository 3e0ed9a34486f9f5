"""A version's files are part of its identity: overwrite its weights and a reload rebuilds it,
and its cache keys change; touch nothing and the running backend stays."""

from __future__ import annotations

import os
from pathlib import Path

from backends import OpenClipSpec, output_fingerprint
from gateway.deployments import Deployments
from gateway.policy import CompiledPolicy, parse_policy

POLICY = """
version: 1
models:
  clip:
    versions:
      "1": {backend: local, kind: open-clip, arch: demo-clip, weights: w.pt, batching: BATCH}
"""


def compiled(tmp: Path, batch: int = 8) -> CompiledPolicy:
    doc = parse_policy(POLICY.replace("BATCH", f"{{max_batch_size: {batch}}}"))
    return CompiledPolicy(doc, base_dir=tmp)


def overwrite(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later write


def test_the_fingerprint_follows_the_files_not_the_operational_settings(tmp_path: Path) -> None:
    spec = OpenClipSpec(kind="open-clip", arch="demo-clip", weights="w.pt")
    overwrite(tmp_path / "w.pt", b"one")
    first = output_fingerprint(spec, tmp_path)
    assert output_fingerprint(spec, tmp_path) == first
    assert output_fingerprint(spec.model_copy(update={"device": "cpu"}), tmp_path) == first
    overwrite(tmp_path / "w.pt", b"two!")
    assert output_fingerprint(spec, tmp_path) != first
    assert compiled(tmp_path).fingerprint("clip", "1") == output_fingerprint(spec, tmp_path)


async def test_a_reload_rebuilds_a_version_whose_weights_were_overwritten(tmp_path: Path) -> None:
    overwrite(tmp_path / "w.pt", b"one")
    deployments = Deployments(tmp_path, load_models=False)
    try:
        await deployments.apply(compiled(tmp_path))
        (kept,) = deployments.all()
        assert await deployments.apply(compiled(tmp_path)) == []
        assert deployments.all() == [kept]  # nothing changed: the same backend, still warm
        overwrite(tmp_path / "w.pt", b"two!")  # same name, same spec, other weights
        retired = await deployments.apply(compiled(tmp_path))
        assert deployments.all()[0] is not kept and retired == [kept]
    finally:
        await deployments.aclose()
