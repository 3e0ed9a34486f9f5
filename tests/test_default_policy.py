"""The shipped default policy end to end: text, image, classify and recommend through one API,
on the real packaged text model and the real demo CLIP + catalogue."""

from __future__ import annotations

import base64
import io
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from prism.backends.demo import CLASSES, build_demo, sample
from prism.gateway.app import create_app
from prism.gateway.settings import Settings
from tests.support import ROOT

Client = AsyncTestClient  # type: ignore[type-arg]


def b64_shape(color: str, shape: str, seed: int = 3) -> str:
    image = sample(random.Random(seed), CLASSES.index((color, shape))).image
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
async def gw() -> AsyncIterator[Client]:
    build_demo(ROOT / "models", seed=0)  # current after `make test`'s build: returns at once
    settings = Settings(policy=ROOT / "policies" / "default.yaml", data_dir=ROOT, policy_watch_s=0)
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


async def infer(gw: Client, **body: object) -> dict:  # type: ignore[type-arg]
    r = await gw.post("/v1/infer", json=body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.slow
async def test_every_modality_through_one_api(gw: Client) -> None:
    text = await infer(gw, inputs=[{"text": "a red circle"}])
    assert text["route"]["target"] == "text-embed@1/local"
    assert len(text["outputs"][0]["embedding"]) == 384

    image = await infer(gw, inputs=[{"image": {"base64": b64_shape("green", "triangle")}}])
    assert image["route"]["target"] == "clip@1/local"
    img_vec = np.array(image["outputs"][0]["embedding"])

    # CLIP's text tower shares the image's space: the right caption is the closer one
    texts = await infer(
        gw, model="clip", inputs=[{"text": "a green triangle"}, {"text": "a red circle"}]
    )
    right, wrong = (np.array(o["embedding"]) for o in texts["outputs"])
    assert img_vec @ right > img_vec @ wrong

    labels = ["a green triangle", "a red circle", "a blue square", "a green circle"]
    cls = await infer(
        gw,
        task="classify",
        inputs=[{"image": {"base64": b64_shape("green", "triangle")}}],
        parameters={"labels": labels},
    )
    ranked = cls["outputs"][0]["labels"]
    assert ranked[0]["label"] == "a green triangle"
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    assert abs(sum(r["score"] for r in ranked) - 1) < 1e-4


@pytest.mark.slow
async def test_recommend_text_history_and_unknown_items(gw: Client) -> None:
    items = [json.loads(line) for line in (ROOT / "models" / "demo-catalog" / "items.jsonl").open()]
    tags = {i["id"]: set(i["tags"]) for i in items}
    history = [i["id"] for i in items if {"red", "circle"} <= set(i["tags"])][:3]
    out = await infer(
        gw,
        task="recommend",
        inputs=[{"user": "u1", "history": [*history, "no-such-item"], "text": "a red circle"}],
        parameters={"top_k": 10},
    )
    got = out["outputs"][0]
    assert len(got["items"]) == 10
    ids = [i["id"] for i in got["items"]]
    assert not set(ids) & set(history)  # history never comes back
    assert got["ignored_history"] == ["no-such-item"]
    red_circles = sum({"red", "circle"} <= tags[i] for i in ids)
    assert red_circles >= 8, ids
    assert out["route"]["rule"] == "recommend"


@pytest.mark.parametrize(
    ("inputs", "parameters", "task", "status", "path"),
    [
        (
            [{"image": {"base64": base64.b64encode(b"\x89PNG\r\n\x1a\n truncated").decode()}}],
            {},
            "embed",
            422,
            "inputs[0]",
        ),
        (
            [{"image": {"base64": base64.b64encode(b"plain text, not an image").decode()}}],
            {},
            "embed",
            422,
            "inputs[0]",
        ),
        ([{"image": {"url": "http://127.0.0.1/x.png"}}], {}, "embed", 422, "inputs[0].image.url"),
        ([{"image": {"base64": "aGVsbG8="}}], {}, "classify", 422, "parameters.labels"),
        ([{"text": "a red circle"}], {"top_k": 0}, "recommend", 422, "parameters.top_k"),
        ([{"text": "a red circle"}], {"top_k": 100000}, "recommend", 422, "parameters.top_k"),
    ],
)
async def test_bad_image_and_parameter_inputs(
    gw: Client, inputs: list, parameters: dict, task: str, status: int, path: str
) -> None:  # type: ignore[type-arg]
    r = await gw.post("/v1/infer", json={"task": task, "inputs": inputs, "parameters": parameters})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    paths = [e["path"] for e in r.json().get("errors", [])]
    assert any(p.startswith(path) for p in paths), r.json()
    assert (await gw.post("/v1/infer", json={"inputs": [{"text": "still up"}]})).status_code == 200


async def test_decompression_bomb_is_refused_before_decoding(gw: Client) -> None:
    buf = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(buf, format="PNG")  # 144 Mpx of zeros: tiny file
    body = {"inputs": [{"image": {"base64": base64.b64encode(buf.getvalue()).decode()}}]}
    r = await gw.post("/v1/infer", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_image"
    assert "pixel" in r.json()["detail"]


def _prism(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prism.gateway.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_catalog_build_cli(tmp_path: Path) -> None:
    build_demo(ROOT / "models", seed=0)
    png = tmp_path / "red.png"
    png.write_bytes(base64.b64decode(b64_shape("red", "circle")))
    source = tmp_path / "catalog.jsonl"
    source.write_text(
        json.dumps({"id": "a", "title": "a red circle", "image": "red.png", "tags": ["red"]})
        + "\n"
        + json.dumps({"id": "b", "title": "a blue square"})
        + "\n"
    )
    ok = _prism(
        "catalog", "build", str(source), "--model", "clip@stable", "--out", str(tmp_path / "cat")
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "cat" / "embeddings.npy").exists()
    assert np.load(tmp_path / "cat" / "embeddings.npy").shape[0] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "title": "x"}\n{"title": "no id"}\n')
    res = _prism("catalog", "build", str(bad), "--model", "clip@1", "--out", str(tmp_path / "bad"))
    assert res.returncode == 2
    assert "bad.jsonl:2" in res.stderr


def test_demo_sample_cli(tmp_path: Path) -> None:
    res = _prism("demo", "sample", "a green triangle", "--base64")
    assert res.returncode == 0, res.stderr
    image = Image.open(io.BytesIO(base64.b64decode(res.stdout)))
    assert image.size == (64, 64)
    unknown = _prism("demo", "sample", "a plaid hexagon")
    assert unknown.returncode == 2 and "unknown class" in unknown.stderr
