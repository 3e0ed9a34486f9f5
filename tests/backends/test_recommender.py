"""Catalogue build and the recommender, with real models (tiny random, and the trained demo)."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from prism.backends._base import InputItem, Modality, Task
from prism.backends._batching import LocalBackend
from prism.backends._catalog import Catalog, CatalogError, build_catalog
from prism.backends._errors import InvalidImage, InvalidInput
from prism.backends._open_clip import OpenClipModel
from prism.backends._recommender import RecommenderModel
from prism.backends._specs import Batching, ModalityWeights, RecommenderSpec
from prism.backends.demo import DemoArtefacts
from tests.backends.conftest import png_bytes, shape_png


def _recommend(model: RecommenderModel, items: list[InputItem], **params: Any) -> list[Any]:
    prepared = [model.prepare(Task.RECOMMEND, item, params) for item in items]
    return model.forward(Task.RECOMMEND, prepared, params)


def _tags(model: RecommenderModel, item_id: str) -> tuple[str, ...]:
    assert model.catalog is not None
    return model.catalog.tags[model.catalog.ids.index(item_id)]


# --- catalogue build (tiny model) ------------------------------------------------------------


def _write_source(folder: Path, lines: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "items.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _small_source(folder: Path) -> Path:
    (folder / "img").mkdir(parents=True)
    red = png_bytes(Image.new("RGB", (40, 40), (220, 20, 20)))
    (folder / "img" / "red.png").write_bytes(red)
    b64 = base64.b64encode(png_bytes(Image.new("RGB", (40, 40), (20, 20, 220)))).decode()
    return _write_source(
        folder,
        [
            {"id": "a", "title": "red thing", "image": "img/red.png", "tags": ["red"]},
            {"id": "b", "title": "blue thing", "image": {"base64": b64}, "tags": ["blue"]},
            {"id": "c", "title": "a title only", "tags": ["red", "blue"]},
            {"id": "d", "title": "data url", "image": "data:image/png;base64," + b64},
            {"id": "e", "title": "by path object", "image": {"path": "img/red.png"}},
        ],
    )


def test_catalogue_artefact_format(tiny_clip: OpenClipModel, tmp_path: Path) -> None:
    source = _small_source(tmp_path / "src")
    report = build_catalog(source, tmp_path / "cat", tiny_clip, progress=False)
    assert (report.count, report.dim, report.with_image) == (5, 32, 4)
    catalog = Catalog.load(tmp_path / "cat")
    assert catalog.ids == ["a", "b", "c", "d", "e"]
    assert catalog.tags[2] == ("red", "blue")
    assert catalog.embeddings.dtype == np.float16 and catalog.embeddings.shape == (5, 32)
    norms = np.linalg.norm(catalog.embeddings.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1, atol=2e-3)
    meta = catalog.meta
    assert meta["encoder"]["arch"] == "prism-tiny-test"
    assert catalog.encoder_weights() == tiny_clip.weights
    assert len(meta["encoder"]["weights_sha256"]) == 64
    # a title-only item is its title's text embedding; d and b share an image but not a title
    text = tiny_clip.encode_texts(["a title only"])[0].numpy()
    np.testing.assert_allclose(catalog.embeddings[2].astype(np.float32), text, atol=2e-3)
    assert not np.allclose(catalog.embeddings[1], catalog.embeddings[3])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"title": "no id"}, '"id" must be'),
        ({"id": "x"}, '"title" must be'),
        ({"id": "a", "title": "dup"}, "duplicate id"),
        ({"id": "x", "title": "t", "tags": "red"}, '"tags" must be'),
        ({"id": "x", "title": "t", "image": "missing.png"}, "cannot read image"),
        ({"id": "x", "title": "t", "image": {"base64": "!!"}}, "not valid base64"),
        ({"id": "x", "title": "t", "image": "data:image/png;base64,aGVsbG8="}, "cannot be decoded"),
    ],
)
def test_bad_catalogue_lines_name_file_and_line(
    tiny_clip: OpenClipModel, tmp_path: Path, line: dict[str, Any], message: str
) -> None:
    source = _write_source(tmp_path, [{"id": "a", "title": "fine"}, line])
    with pytest.raises(CatalogError, match=message) as info:
        build_catalog(source, tmp_path / "cat", tiny_clip, progress=False)
    assert f"{source}:2" in str(info.value)
    assert not (tmp_path / "cat").exists()  # nothing half-built is left where it is served


def test_a_failed_rebuild_keeps_the_previous_catalogue(
    tiny_clip: OpenClipModel, tmp_path: Path
) -> None:
    good = _small_source(tmp_path / "src")
    build_catalog(good, tmp_path / "cat", tiny_clip, progress=False)
    bad = _write_source(tmp_path / "bad", [{"id": "x"}])
    with pytest.raises(CatalogError):
        build_catalog(bad, tmp_path / "cat", tiny_clip, progress=False)
    assert Catalog.load(tmp_path / "cat").ids[0] == "a"


def test_recommender_refuses_a_catalogue_built_with_other_weights(
    tiny_clip: OpenClipModel, tmp_path: Path
) -> None:
    assert tiny_clip.weights is not None
    weights = tmp_path / "w" / tiny_clip.weights.name
    weights.parent.mkdir()
    shutil.copy(tiny_clip.weights, weights)
    shutil.copy(tiny_clip.weights.with_name("prism-tiny-test.json"), weights.parent)
    encoder = OpenClipModel("prism-tiny-test", weights=weights)
    encoder.load()
    build_catalog(_small_source(tmp_path / "src"), tmp_path / "cat", encoder, progress=False)
    spec = RecommenderSpec(kind="recommender", catalog="cat", max_top_k=3)
    model = RecommenderModel.from_spec(spec, tmp_path, "cpu")
    assert model.capabilities.dim == 32  # readable before load, from meta.json
    model.load()
    assert _recommend(model, [InputItem(text="red thing")], top_k=3)[0]["items"]
    weights.write_bytes(weights.read_bytes() + b"\0")  # the weights changed since the build
    with pytest.raises(CatalogError, match="rebuild"):
        RecommenderModel.from_spec(spec, tmp_path, "cpu").load()


# --- the demo catalogue ----------------------------------------------------------------------


def test_demo_catalogue_is_large_and_served(demo_recommender: RecommenderModel) -> None:
    caps = demo_recommender.capabilities
    assert caps.tasks == frozenset({Task.RECOMMEND})
    assert caps.modalities == frozenset({Modality.TEXT, Modality.IMAGE, Modality.USER})
    assert demo_recommender.catalog is not None
    assert len(demo_recommender.catalog.ids) >= 10_000


def test_text_query_red_circle_returns_red_circles(demo_recommender: RecommenderModel) -> None:
    out = _recommend(demo_recommender, [InputItem(text="red circle")], top_k=20)[0]
    items = out["items"]
    assert len(items) == 20 and out["ignored_history"] == []
    hits = sum(set(_tags(demo_recommender, i["id"])) == {"red", "circle"} for i in items)
    assert hits >= 18, f"{hits}/20 red circles"
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True) and -1 <= scores[-1] <= scores[0] <= 1.001


def test_image_query_returns_its_class(demo_recommender: RecommenderModel) -> None:
    out = _recommend(demo_recommender, [InputItem(image=shape_png("green", "star", seed=5))])
    hits = sum(set(_tags(demo_recommender, i["id"])) == {"green", "star"} for i in out[0]["items"])
    assert hits >= 8, f"{hits}/10 green stars"


def test_history_items_never_come_back(demo_recommender: RecommenderModel) -> None:
    first = _recommend(demo_recommender, [InputItem(text="blue square")], top_k=50)[0]["items"]
    history = tuple(i["id"] for i in first[:25])
    out = _recommend(demo_recommender, [InputItem(user="u1", history=history)], top_k=50)[0]
    returned = {i["id"] for i in out["items"]}
    assert len(returned) == 50 and not returned & set(history)
    # the history alone points at its own kind of item
    hits = sum(set(_tags(demo_recommender, i)) == {"blue", "square"} for i in returned)
    assert hits >= 40
    mixed = _recommend(
        demo_recommender, [InputItem(history=history, text="blue square")], top_k=50
    )[0]
    assert not {i["id"] for i in mixed["items"]} & set(history)


def test_unknown_history_ids_are_ignored_and_reported(demo_recommender: RecommenderModel) -> None:
    assert demo_recommender.catalog is not None
    known = demo_recommender.catalog.ids[7]
    out = _recommend(demo_recommender, [InputItem(history=("nope-1", known, "nope-2"))], top_k=5)[0]
    assert out["ignored_history"] == ["nope-1", "nope-2"]
    assert len(out["items"]) == 5 and known not in {i["id"] for i in out["items"]}
    # nothing known and nothing else: no signal, so no items (not an error)
    empty = _recommend(demo_recommender, [InputItem(user="u9", history=("nope",))])[0]
    assert empty == {"items": [], "ignored_history": ["nope"]}


def test_tag_filter_requires_all_tags(demo_recommender: RecommenderModel) -> None:
    out = _recommend(demo_recommender, [InputItem(text="circle")], top_k=30, tags=["yellow"])
    assert len(out[0]["items"]) == 30
    assert all("yellow" in _tags(demo_recommender, i["id"]) for i in out[0]["items"])
    both = _recommend(
        demo_recommender, [InputItem(text="red circle")], top_k=10, tags=["blue", "star"]
    )[0]["items"]
    assert both and all(set(_tags(demo_recommender, i["id"])) == {"blue", "star"} for i in both)
    none = _recommend(demo_recommender, [InputItem(text="red")], tags=["no-such-tag"])
    assert none[0]["items"] == []


def test_a_batch_mixes_query_kinds(demo_recommender: RecommenderModel) -> None:
    items = [
        InputItem(text="orange triangle"),
        InputItem(image=shape_png("purple", "circle", seed=2)),
        InputItem(text="yellow", image=shape_png("yellow", "square", seed=3)),
    ]
    out = _recommend(demo_recommender, items, top_k=5)
    expected = [{"orange", "triangle"}, {"purple", "circle"}, {"yellow", "square"}]
    for result, tags in zip(out, expected, strict=True):
        assert set(_tags(demo_recommender, result["items"][0]["id"])) == tags


@pytest.mark.parametrize(
    ("item", "params", "error", "path"),
    [
        (InputItem(text="x"), {"top_k": 0}, InvalidInput, "parameters.top_k"),
        (InputItem(text="x"), {"top_k": 1001}, InvalidInput, "parameters.top_k"),
        (InputItem(text="x"), {"top_k": "5"}, InvalidInput, "parameters.top_k"),
        (InputItem(text="x"), {"top_k": True}, InvalidInput, "parameters.top_k"),
        (InputItem(text="x"), {"tags": "red"}, InvalidInput, "parameters.tags"),
        (InputItem(user="u1"), {}, InvalidInput, None),
        (InputItem(image=b"not an image"), {}, InvalidImage, None),
    ],
)
def test_bad_requests(
    demo_recommender: RecommenderModel,
    item: InputItem,
    params: dict[str, Any],
    error: type[InvalidInput],
    path: str | None,
) -> None:
    with pytest.raises(error) as info:
        demo_recommender.prepare(Task.RECOMMEND, item, params)
    assert info.value.status_code == 422
    if path:
        assert info.value.errors[0].path == path


async def test_served_through_the_batcher(demo: DemoArtefacts) -> None:
    model = RecommenderModel(
        demo.catalog_dir, weights=ModalityWeights(history=2.0, text=1.0, image=1.0), max_top_k=20
    )
    backend = LocalBackend(model, Batching(max_batch_size=4), name="recs@test")
    await backend.start()
    try:
        items = [InputItem(text="green circle"), InputItem(text="red star", history=("x",))]
        out = await backend.infer(Task.RECOMMEND, items, {"top_k": 3})
        assert [len(o["items"]) for o in out] == [3, 3]
        assert out[1]["ignored_history"] == ["x"]
        with pytest.raises(InvalidInput):
            await backend.infer(Task.RECOMMEND, [InputItem(text="x")], {"top_k": 21})
    finally:
        await backend.aclose()
