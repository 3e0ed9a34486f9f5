"""``prism optimize``: a real MiniLM variant built, measured, reported, and served by a real
gateway through the policy its report prints, embedding by embedding against the source."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from prism.backends import TextEncoderSpec
from prism.backends.optimize import agreement, spearman, text_sample, variant_spec
from prism.backends.optimize._run import OptimizeError
from tests.support import PRISM, ROOT, GatewayProcess

BASE_POLICY = """
version: 1
models:
  text-embed:
    task: embed
    modalities: [text]
    versions:
      "1": {backend: local, kind: text-encoder, source: minilm, device: cpu}
    labels: {stable: "1"}
routes:
  - {name: text, match: {modality: [text], task: embed}, model: text-embed, version: stable}
"""


def _optimize(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    policy = tmp / "base.yaml"
    policy.write_text(BASE_POLICY)
    return subprocess.run(
        [*PRISM, "optimize", "text-embed@1", "--policy", str(policy), "--seconds", "1.5", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def int8_variant(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("optimize")
    out = tmp / "minilm-onnx-int8"
    run = _optimize(tmp, "--variant", "onnx-int8", "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run


def test_spearman_and_agreement_on_known_data() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=500)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.exp(a)) == pytest.approx(1.0)  # ranks, not values
    x = rng.normal(size=(40, 16))
    same = agreement(x, x * 3.0)  # scale does not matter to a cosine
    assert same.cosine_mean == pytest.approx(1.0) and same.spearman == pytest.approx(1.0)
    noisy = agreement(x, x + rng.normal(scale=0.5, size=x.shape))
    assert 0.5 < noisy.cosine_min < noisy.cosine_mean < 0.99 and noisy.spearman < 0.99


def test_text_sample_is_fixed_and_varied() -> None:
    texts = text_sample()
    assert texts == text_sample() and len(set(texts)) == len(texts) == 192
    assert min(map(len, texts)) < 40 < 200 < max(map(len, texts))


def test_variant_specs() -> None:
    source = TextEncoderSpec(kind="text-encoder", source="minilm", max_length=128)
    onnx = variant_spec(source, "onnx-int8", Path("opt/x"), "cpu")
    assert onnx == {"backend": "local", "kind": "onnx", "path": "opt/x", "max_length": 128}
    torch_int8 = variant_spec(source, "int8", Path("opt/y"), "cpu")
    assert torch_int8["precision"] == "int8" and torch_int8["source"] == "minilm"
    with pytest.raises(OptimizeError, match="fp16 runs on a GPU"):
        variant_spec(source, "fp16", Path("opt/z"), "cpu")


@pytest.mark.slow
def test_onnx_int8_report_meets_the_bar(int8_variant: tuple[Path, Any]) -> None:
    out, run = int8_variant
    assert {p.name for p in out.iterdir()} >= {
        "model.onnx",
        "tokenizer.json",
        "variant.json",
        "report.json",
        "report.md",
        "report.png",
    }
    report = json.loads((out / "report.json").read_text())
    assert report["accepted"] is True and report["variant"] == "onnx-int8"
    assert report["version_spec"] == {"backend": "local", "kind": "onnx", "path": str(out)}
    # agreement is deterministic for the fixed sample; speed is not asserted (shared machine)
    assert report["cosine_mean"] >= 0.99 and report["spearman"] >= 0.99
    assert 0.95 < report["cosine_min"] <= report["cosine_mean"]
    assert report["speedup_batch1"] > 0 and report["speedup_batch32"] > 0
    assert report["size_bytes"]["variant"] < report["size_bytes"]["source"] / 2
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "onnx-int8" in md and "Spearman" in md and '"kind": "onnx"' in md
    # progress lines, the numbers and the snippet reach the terminal
    assert "[4/4]" in run.stdout and "policy snippet" in run.stdout
    assert report["policy_snippet"] in run.stdout


@pytest.mark.slow
def test_variant_served_through_the_printed_policy(
    int8_variant: tuple[Path, Any], tmp_path: Path
) -> None:
    out, _ = int8_variant
    report = json.loads((out / "report.json").read_text())
    policy = yaml.safe_load(BASE_POLICY)
    snippet = yaml.safe_load(report["policy_snippet"])
    entry = policy["models"]["text-embed"]
    entry["versions"].update(snippet["models"]["text-embed"]["versions"])
    entry["labels"] = snippet["models"]["text-embed"]["labels"]
    policy["routes"] = snippet["routes"] + policy["routes"]  # the canary route goes first
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    gateway = GatewayProcess(path).start(ready_timeout_s=180)
    try:
        texts = text_sample()[::6]

        def embed(version: str | None, headers: dict[str, str] | None = None) -> Any:
            body: dict[str, Any] = {"inputs": [{"text": t} for t in texts], "cache": "bypass"}
            if version:
                body |= {"model": "text-embed", "version": version}
            r = httpx.post(gateway.url + "/v1/infer", json=body, headers=headers, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()

        source = embed("1")
        variant = embed("1-onnx-int8")
        assert variant["version"] == "1-onnx-int8" and source["version"] == "1"
        a = np.array([o["embedding"] for o in source["outputs"]])
        b = np.array([o["embedding"] for o in variant["outputs"]])
        assert a.shape == b.shape == (len(texts), 384)
        cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cosines.min() > 0.97 and cosines.mean() >= 0.99, cosines
        # the canary route answers opted-in callers from the variant, everyone else from 1
        canary = embed(None, {"x-canary": "1"})
        assert canary["version"] == "1-onnx-int8" and canary["route"]["rule"] == "text-canary"
        assert embed(None)["version"] == "1"
    finally:
        gateway.stop()


@pytest.mark.slow
def test_below_the_floor_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "int8"
    run = _optimize(tmp_path, "--variant", "int8", "--out", str(out), "--floor", "0.99999")
    assert run.returncode == 1, run.stderr[-2000:]
    assert "below the floor" in run.stderr and "policy snippet" not in run.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["accepted"] is False and report["version_spec"]["precision"] == "int8"
    assert "REFUSED" in (out / "report.md").read_text()


def test_fp16_on_cpu_is_refused_clearly(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: fp16 runs here")
    run = _optimize(tmp_path, "--variant", "fp16", "--out", str(tmp_path / "fp16"))
    assert run.returncode == 2 and "fp16 runs on a GPU" in run.stderr


def test_optimize_refuses_a_model_that_is_not_a_text_encoder(tmp_path: Path) -> None:
    policy = tmp_path / "fake.yaml"
    policy.write_text(BASE_POLICY.replace("kind: text-encoder, source: minilm", "kind: fake"))
    run = subprocess.run(
        [
            *PRISM,
            "optimize",
            "text-embed@1",
            "--policy",
            str(policy),
            "--variant",
            "onnx",
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "'fake'" in run.stderr and "text-encoder" in run.stderr


@pytest.mark.slow
def test_onnx_kind_needs_neither_torch_nor_transformers(int8_variant: tuple[Path, Any]) -> None:
    out, _ = int8_variant
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from prism.backends import InputItem, Task\n"
        "from prism.backends._onnx import OnnxTextEncoderModel\n"
        f"m = OnnxTextEncoderModel(Path({str(out)!r}))\n"
        "m.load()\n"
        "(o,) = m.forward(Task.EMBED, [m.prepare(Task.EMBED, InputItem(text='hi'), {})], {})\n"
        "assert o['embedding'].shape == (384,), o\n"
        "print(sorted(n for n in ('torch', 'transformers', 'open_clip') if n in sys.modules))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def test_a_speed_up_is_the_median_of_the_rounds_own_ratios() -> None:
    """A slow minute that halves both models' rates in one round moves the medians of the
    rates, not the ratio measured within each round."""
    from prism.backends.optimize import Speed

    speed = Speed(rounds={"source": [100.0, 50.0, 110.0], "variant": [280.0, 140.0, 330.0]})
    assert speed.per_s == {"source": 100.0, "variant": 280.0}
    assert speed.speedup("variant", "source") == pytest.approx(2.8)


@pytest.mark.parametrize("rounds", ["0", "-2", "three"])
def test_a_rounds_count_below_one_is_refused_before_any_work(tmp_path: Path, rounds: str) -> None:
    run = _optimize(tmp_path, "--variant", "onnx", "--out", str(tmp_path / "v"), "--rounds", rounds)
    assert run.returncode == 2
    assert "argument --rounds: expected a whole number >= 1" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("seconds", ["nan", "inf", "-1", "soon"])
def test_a_timing_budget_that_never_runs_out_is_refused(tmp_path: Path, seconds: str) -> None:
    run = _optimize(
        tmp_path, "--variant", "onnx", "--out", str(tmp_path / "v"), "--seconds", seconds
    )
    assert run.returncode == 2
    assert "argument --seconds: expected a finite number of seconds >= 0" in run.stderr
    assert "Traceback" not in run.stderr
