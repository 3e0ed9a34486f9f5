"""``prism optimize`` on the demo CLIP: the int8 and onnx-int8 variants built, measured
(agreement of both towers, zero-shot accuracy before and after), reported, and served by a
real gateway from their version specs, embedding by embedding against the source."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from litestar.testing import AsyncTestClient

from prism.backends import OpenClipSpec
from prism.backends.demo import build_demo
from prism.backends.optimize import (
    caption_sample,
    clip_prompts,
    clip_variant_spec,
    image_sample,
    optimize_open_clip,
    write_report,
)
from prism.backends.optimize._run import OptimizeError
from prism.gateway.app import create_app
from prism.gateway.settings import Settings
from tests.support import PRISM, ROOT

Client = AsyncTestClient  # type: ignore[type-arg]


def _policy(weights: Path) -> str:
    return f"""
version: 1
models:
  clip:
    task: [embed, classify]
    modalities: [text, image]
    versions:
      "1": {{backend: local, kind: open-clip, arch: demo-clip, weights: {weights}, device: cpu}}
    labels: {{stable: "1"}}
routes:
  - {{name: images, match: {{modality: [image, text]}}, model: clip, version: stable}}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both variants of the demo CLIP: onnx-int8 through the CLI, int8 through the API."""
    demo = build_demo(ROOT / "models", seed=0)  # current after `make test`'s build: at once
    tmp = tmp_path_factory.mktemp("optimize-clip")
    policy = tmp / "base.yaml"
    policy.write_text(_policy(demo.weights.resolve()))
    onnx = tmp / "clip-onnx-int8"
    run = subprocess.run(
        [
            *PRISM,
            "optimize",
            "clip@1",
            "--policy",
            str(policy),
            "--variant",
            "onnx-int8",
            "--out",
            str(onnx),
            "--seconds",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    spec = OpenClipSpec(kind="open-clip", arch="demo-clip", weights=str(demo.weights.resolve()))
    torch_int8 = tmp / "clip-int8"
    report = optimize_open_clip(
        spec,
        source="clip@1",
        variant="int8",
        out_dir=torch_int8,
        base_dir=tmp,
        seconds=1,
        rounds=2,
        progress=False,
        say=lambda _: None,
    )
    write_report(torch_int8, report)
    return {"policy": policy, "onnx": onnx, "int8": torch_int8, "run": run}


def test_image_sample_is_fixed_and_labelled() -> None:
    images, labels = image_sample(per_class=2)
    assert (images, labels) == image_sample(per_class=2)
    assert len(images) == len(set(images)) == 48 and sorted(set(labels)) == list(range(24))
    assert all(data[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert clip_prompts()[0] == "a red circle" and len(clip_prompts()) == 24
    assert len(set(caption_sample())) == len(caption_sample()) == 168


def test_clip_variant_specs() -> None:
    source = OpenClipSpec(kind="open-clip", arch="demo-clip", weights="m/w.pt", max_image_pixels=9)
    onnx = clip_variant_spec(source, "onnx-int8", Path("opt/x"), "cpu")
    assert onnx == {"backend": "local", "kind": "onnx-clip", "path": "opt/x", "max_image_pixels": 9}
    int8 = clip_variant_spec(source, "int8", Path("opt/y"), "cpu")
    assert int8["precision"] == "int8" and int8["weights"] == "m/w.pt" and int8["device"] == "cpu"
    with pytest.raises(OptimizeError, match="fp16 runs on a GPU"):
        clip_variant_spec(source, "fp16", Path("opt/z"), "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["int8", "onnx-int8"])
def test_report_has_speed_agreement_and_zero_shot(built: dict[str, Any], variant: str) -> None:
    out = built["onnx" if variant == "onnx-int8" else "int8"]
    report = json.loads((out / "report.json").read_text())
    assert report["accepted"] is True and report["variant"] == variant
    # speed is not asserted (shared machine); agreement is deterministic for the fixed sample
    for key in ("speedup_batch1", "speedup_batch32", "speedup_text_batch32"):
        assert report[key] > 0
    assert report["cosine_mean"] >= 0.99 and report["spearman"] >= 0.99
    assert 0.98 < report["cosine_min"] <= report["cosine_mean"]
    assert report["text_agreement"]["cosine_mean"] >= 0.99
    zero_shot = report["zero_shot"]
    assert zero_shot["images"] == 192 and zero_shot["classes"] == 24
    assert zero_shot["source"] > 0.7 and abs(zero_shot["change"]) <= 0.03
    assert zero_shot["change"] == pytest.approx(zero_shot["variant"] - zero_shot["source"])
    assert zero_shot["top1_agreement"] >= 0.95
    md = (out / "report.md").read_text()
    assert "Zero-shot accuracy on 192 labelled images" in md and "images/s, batch 32" in md
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if variant == "onnx-int8":
        assert report["version_spec"] == {"backend": "local", "kind": "onnx-clip", "path": str(out)}
        assert report["size_bytes"]["variant"] < report["size_bytes"]["source"] / 2
        meta = json.loads((out / "variant.json").read_text())
        assert meta["preprocess"]["size"] == 64 and meta["tokenizer"]["context_length"] == 16
        run = built["run"]
        assert "zero-shot accuracy (192 images" in run.stdout and "policy snippet" in run.stdout
    else:
        assert report["version_spec"]["precision"] == "int8"


@pytest.fixture(scope="module")
async def gw(built: dict[str, Any]) -> AsyncIterator[Client]:
    """A gateway serving the source and both variants: onnx-int8 merged from the snippet the
    CLI printed (a canary), int8 from its report's ``version_spec``."""
    policy = yaml.safe_load(built["policy"].read_text())
    onnx = json.loads((built["onnx"] / "report.json").read_text())
    snippet = yaml.safe_load(onnx["policy_snippet"])
    entry = policy["models"]["clip"]
    entry["versions"].update(snippet["models"]["clip"]["versions"])
    entry["labels"] = snippet["models"]["clip"]["labels"]
    policy["routes"] = snippet["routes"] + policy["routes"]
    int8 = json.loads((built["int8"] / "report.json").read_text())
    entry["versions"]["1-int8"] = int8["version_spec"]
    path = built["policy"].parent / "served.yaml"
    path.write_text(yaml.safe_dump(policy))
    settings = Settings(policy=path, data_dir=path.parent, policy_watch_s=0)
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


async def _infer(gw: Client, **body: Any) -> dict[str, Any]:
    r = await gw.post("/v1/infer", json={"cache": "bypass", **body})
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


@pytest.mark.slow
async def test_variants_serve_images_and_texts_like_the_source(gw: Client) -> None:
    images, _ = image_sample(per_class=1)
    inputs = [{"image": {"base64": base64.b64encode(d).decode()}} for d in images[::3]]
    inputs += [{"text": t} for t in caption_sample()[::12]]

    def vectors(answer: dict[str, Any]) -> np.ndarray:
        rows = np.array([o["embedding"] for o in answer["outputs"]])
        assert rows.shape == (len(inputs), 128)
        return rows

    source = vectors(await _infer(gw, model="clip", version="1", task="embed", inputs=inputs))
    for version in ("1-onnx-int8", "1-int8"):
        answer = await _infer(gw, model="clip", version=version, task="embed", inputs=inputs)
        assert answer["version"] == version
        cosines = (source * vectors(answer)).sum(1)  # both unit length
        assert cosines.min() > 0.99, (version, cosines)
    # zero-shot classify through the ONNX variant ranks like the source
    labels = clip_prompts()
    body = {"task": "classify", "inputs": inputs[:4], "parameters": {"labels": labels}}
    top = {
        version: [
            o["labels"][0]["label"]
            for o in (await _infer(gw, **body, model="clip", version=version))["outputs"]
        ]
        for version in ("1", "1-onnx-int8")
    }
    assert top["1"] == top["1-onnx-int8"]
    # the printed canary route answers opted-in callers from the variant
    canary = await gw.post(
        "/v1/infer",
        json={"inputs": inputs[:1], "cache": "bypass"},
        headers={"x-canary": "1"},
    )
    assert canary.status_code == 200 and canary.json()["version"] == "1-onnx-int8"
