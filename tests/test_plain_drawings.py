"""An independent check of the demo CLIP: plain drawings from another renderer, via the gateway.

The drawings come from ``tests/plain_drawings.py`` (numpy signed-distance fields; nothing of
the demo's own drawing code), as PNG or JPEG bytes of 224 x 224 and 64 x 64 pixels, and are
classified zero-shot through ``/v1/infer`` of the default policy with the 24 class prompts.
The per-case accuracy is printed (``pytest -s``) and is in the failure message.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from prism.gateway.app import create_app
from prism.gateway.settings import Settings
from tests.plain_drawings import PALETTE, SHAPES, Drawing, drawings
from tests.support import ROOT

Client = AsyncTestClient  # type: ignore[type-arg]

#: the demo's zero-shot prompts, spelled out here rather than imported
LABELS = [f"a {c} {s}" for c in PALETTE for s in SHAPES]


@pytest.fixture(scope="module")
async def gw() -> AsyncIterator[Client]:
    from prism.backends.demo import build_demo

    build_demo(ROOT / "models", seed=0)  # current after `make test`'s build: returns at once
    settings = Settings(policy=ROOT / "policies" / "default.yaml", data_dir=ROOT, policy_watch_s=0)
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


def _report(results: list[tuple[Drawing, str]]) -> tuple[float, str]:
    by_case: dict[str, list[bool]] = defaultdict(list)
    for d, got in results:
        right = got == d.prompt
        by_case["all"].append(right)
        by_case[f"{d.background}/{d.style}/{d.size}px"].append(right)
        by_case[f"background {d.background}"].append(right)
        by_case[f"style {d.style}"].append(right)
        by_case["jpeg" if d.jpeg else "png"].append(right)
    lines = [f"{k}: {sum(v) / len(v):.1%} ({sum(v)}/{len(v)})" for k, v in sorted(by_case.items())]
    wrong = [f"{d.case} {d.prompt!r} -> {got!r}" for d, got in results if got != d.prompt]
    text = "\n".join(["plain-drawing accuracy per case:", *lines, "wrong:", *wrong])
    overall = sum(by_case["all"]) / len(by_case["all"])
    return overall, text


@pytest.mark.slow
async def test_demo_clip_classifies_plain_drawings_from_another_renderer(gw: Client) -> None:
    cases = list(drawings(seed=13, per_case=2))
    assert len(cases) == 2 * 2 * 2 * 24 * 2  # backgrounds x styles x sizes x classes x 2
    results: list[tuple[Drawing, str]] = []
    for start in range(0, len(cases), 32):
        chunk = cases[start : start + 32]
        r = await gw.post(
            "/v1/infer",
            json={
                "model": "clip",
                "task": "classify",
                "inputs": [{"image": {"base64": base64.b64encode(d.data).decode()}} for d in chunk],
                "parameters": {"labels": LABELS, "top_k": 1},
                "cache": "bypass",
            },
        )
        assert r.status_code == 200, r.text
        outputs = r.json()["outputs"]
        results += [(d, o["labels"][0]["label"]) for d, o in zip(chunk, outputs, strict=True)]
    overall, report = _report(results)
    print(report)
    assert overall >= 0.95, report
