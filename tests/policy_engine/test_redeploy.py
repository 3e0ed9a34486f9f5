"""A version's files are part of its identity: overwrite its weights and a reload rebuilds it,
and its cache keys change; touch nothing and the running backend stays."""

from __future__ import annotations

import os
from pathlib import Path

from prism.backends import OpenClipSpec, output_fingerprint
from prism.gateway.deployments import Deployments
from prism.gateway.policy import CompiledPolicy, parse_policy

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


def test_identical_copies_agree_whenever_they_were_written(tmp_path: Path) -> None:
    # two replicas' copies of the same weights must share cache entries and experiment state
    spec = OpenClipSpec(kind="open-clip", arch="demo-clip", weights="w.pt")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    big = os.urandom(3 * 2**20)  # larger than the two sampled ends
    overwrite(a / "w.pt", big)
    (b / "w.pt").write_bytes(big)  # same bytes, another modification time
    assert output_fingerprint(spec, a) == output_fingerprint(spec, b)
    changed = big[:-10] + b"0123456789"
    (b / "w.pt").write_bytes(changed)
    assert output_fingerprint(spec, a) != output_fingerprint(spec, b)


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


async def test_a_removed_target_serves_out_its_grace_and_closes_at_shutdown(
    tmp_path: Path,
) -> None:
    import asyncio

    from prism.gateway.policy import Target

    overwrite(tmp_path / "w.pt", b"one")
    deployments = Deployments(tmp_path, load_models=False)
    await deployments.apply(compiled(tmp_path))
    (old,) = deployments.all()
    renamed = POLICY.replace("clip:", "other:").replace("BATCH", "{max_batch_size: 8}")
    empty = CompiledPolicy(parse_policy(renamed), base_dir=tmp_path)
    retired = await deployments.apply(empty)
    assert retired == [old]
    closing = asyncio.create_task(deployments.retire(retired, grace_s=60))
    await asyncio.sleep(0)
    # a request of the old policy still finds it (a retry, a fallback)
    assert deployments.get(Target("clip", "1")) is old
    closing.cancel()  # shutdown before the grace ended
    await asyncio.gather(closing, return_exceptions=True)
    closed: list[str] = []
    old.backend.aclose = lambda: closed.append("closed") or asyncio.sleep(0)  # type: ignore[method-assign]
    await deployments.aclose()
    assert closed == ["closed"]


async def test_a_backend_that_cannot_be_built_fails_like_one_that_cannot_load(
    tmp_path: Path, monkeypatch: object
) -> None:
    import pytest

    import prism.gateway.deployments as deployments_module
    from prism.gateway.deployments import DeploymentFailed

    def missing_module(*args: object, **kwargs: object) -> object:
        raise ModuleNotFoundError("No module named 'open_clip'")

    mp = pytest.MonkeyPatch()
    mp.setattr(deployments_module, "build_backend", missing_module)
    try:
        deployments = Deployments(tmp_path, load_models=False)
        await deployments.apply(compiled(tmp_path))  # at start: reported, not a crash
        (dep,) = deployments.all()
        assert not dep.ready and dep.error == "ModuleNotFoundError: No module named 'open_clip'"
        fresh = Deployments(tmp_path, load_models=False)
        fake_only = parse_policy(
            "version: 1\nmodels:\n  m:\n    versions:\n      '1': {backend: local, kind: fake}\n"
        )
        await fresh.apply(CompiledPolicy(fake_only, base_dir=tmp_path))
        with pytest.raises(DeploymentFailed):  # on a reload: refused, nothing changes
            await fresh.apply(compiled(tmp_path), atomic=True)
        assert [d.target.key for d in fresh.all()] == ["m@1/local"]
    finally:
        mp.undo()
        await deployments.aclose()
        await fresh.aclose()
