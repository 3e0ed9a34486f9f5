"""The KServe v2 door: the official tritonclient unchanged, and protocol errors for bad tensors."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from litestar.testing import AsyncTestClient
from tritonclient.utils import InferenceServerException

Client = AsyncTestClient  # type: ignore[type-arg]


@pytest.fixture(scope="module")
def tc(live_gateway: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(live_gateway.removeprefix("http://"))


def native(url: str, texts: list[str], version: str = "1") -> np.ndarray:
    body = {"model": "fake", "version": version, "inputs": [{"text": t} for t in texts]}
    r = httpx.post(url + "/v1/infer", json=body)
    assert r.status_code == 200, r.text
    return np.array([o["embedding"] for o in r.json()["outputs"]], dtype=np.float32)


def text_input(texts: list[str], *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(
        np.array([t.encode() for t in texts], dtype=object), binary_data=binary
    )
    return tensor


def test_health_and_metadata(tc: triton.InferenceServerClient) -> None:
    assert tc.is_server_live() and tc.is_server_ready()
    assert tc.is_model_ready("fake") and tc.is_model_ready("fake", "2")
    assert tc.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = tc.get_model_metadata("fake")
    assert meta["versions"] == ["1", "2"]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "text": "BYTES",
        "image": "BYTES",
        "user": "BYTES",
        "history": "BYTES",
    }
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outputs["embedding"] == ("FP32", [-1, 16])
    assert outputs["label"] == ("BYTES", [-1, -1]) and outputs["item"] == ("BYTES", [-1, -1])
    tagger = tc.get_model_metadata("tagger")
    assert [o["name"] for o in tagger["outputs"]] == ["label", "score"]
    assert [i["name"] for i in tagger["inputs"]] == ["text"]
    config = tc.get_model_config("tagger")
    assert config["name"] == "tagger" and config["max_batch_size"] == 0
    assert config["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": [-1]}]
    assert [o["data_type"] for o in config["output"]] == ["TYPE_STRING", "TYPE_FP32"]
    assert tc.get_model_config("fake", "2")["version_policy"]["specific"]["versions"] == ["1", "2"]
    index = tc.get_model_repository_index()
    assert {(m["name"], m["version"], m["state"]) for m in index} >= {("fake", "1", "READY")}


@pytest.mark.parametrize("binary", [True, False])
def test_infer_embeddings_match_native(
    tc: triton.InferenceServerClient, live_gateway: str, binary: bool
) -> None:
    texts = ["a red circle", "a blue square", "ünïcödé 🚀"]
    # tritonclient's defaults: binary inputs, and binary outputs when none are named
    outputs = None if binary else [triton.InferRequestedOutput("embedding", binary_data=False)]
    result = tc.infer("fake", [text_input(texts, binary=binary)], outputs=outputs)
    got = result.as_numpy("embedding")
    assert got.dtype == np.float32 and got.shape == (3, 16)
    np.testing.assert_allclose(got, native(live_gateway, texts), rtol=1e-6, atol=1e-7)
    resp = result.get_response()
    assert resp["model_name"] == "fake" and resp["model_version"] == "1"


def test_infer_a_version_or_label(tc: triton.InferenceServerClient, live_gateway: str) -> None:
    for version in ("2", "canary"):
        result = tc.infer("fake", [text_input(["x"], binary=True)], model_version=version)
        assert result.get_response()["model_version"] == "2"
        np.testing.assert_allclose(
            result.as_numpy("embedding"), native(live_gateway, ["x"], "2"), rtol=1e-6
        )


def test_classify_with_parameters(tc: triton.InferenceServerClient) -> None:
    labels = ["red circle", "blue square", "green"]
    result = tc.infer(
        "tagger",
        [text_input(["a red circle", "b"], binary=True)],
        parameters={"task": "classify", "labels": json.dumps(labels)},
    )
    names, scores = result.as_numpy("label"), result.as_numpy("score")
    assert names.shape == (2, 3) and scores.shape == (2, 3) and scores.dtype == np.float32
    assert {n.decode() for n in names[0]} == set(labels)
    assert np.all(np.diff(scores, axis=1) <= 0)  # sorted by score
    np.testing.assert_allclose(scores.sum(1), 1, rtol=1e-5)


def test_the_task_follows_the_model_and_the_outputs_asked_for(
    tc: triton.InferenceServerClient,
) -> None:
    labels = json.dumps(["red", "blue"])
    texts = [text_input(["a red circle"], binary=True)]
    # a model with one task needs no 'task' parameter (its metadata lists only those outputs)
    only = tc.infer("tagger", texts, parameters={"labels": labels})
    assert only.as_numpy("label").shape == (1, 2)
    # a model with several: the outputs named decide (label -> classify, item -> recommend)
    named = tc.infer(
        "fake", texts, outputs=[triton.InferRequestedOutput("label")], parameters={"labels": labels}
    )
    assert named.as_numpy("label").shape == (1, 2) and named.as_numpy("embedding") is None
    recs = tc.infer(
        "fake",
        [text_input(["x"], binary=True)],
        outputs=[triton.InferRequestedOutput("item"), triton.InferRequestedOutput("score")],
        parameters={"top_k": 3},
    )
    assert recs.as_numpy("item").shape == (1, 3)
    # labels alone mean classify; nothing at all means embed, as before
    assert tc.infer("fake", texts, parameters={"labels": labels}).as_numpy("label") is not None
    assert tc.infer("fake", texts).as_numpy("embedding").shape == (1, 16)


def test_unknown_model_raises_in_the_client(tc: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        tc.infer("nope", [text_input(["x"], binary=True)])
    with pytest.raises(InferenceServerException, match="no version or label '9'"):
        tc.get_model_metadata("fake", "9")
    assert not tc.is_model_ready("nope")


def tensor(
    name: str, data: Any, datatype: str = "BYTES", shape: list[int] | None = None
) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


async def infer(
    client: Client, body: Any, path: str = "/v2/models/fake/infer", **kw: Any
) -> httpx.Response:
    if isinstance(body, bytes):
        return await client.post(path, content=body, **kw)
    return await client.post(path, json=body, **kw)


async def test_json_infer_selects_outputs_and_echoes_id(client: Client) -> None:
    body = {
        "id": "req-7",
        "inputs": [tensor("text", ["a", "b"])],
        "parameters": {"task": "classify", "labels": ["x", "y"]},
        "outputs": [{"name": "score"}],
    }
    r = await infer(client, body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-7"
    assert [o["name"] for o in doc["outputs"]] == ["score"]
    assert doc["outputs"][0]["shape"] == [2, 2] and len(doc["outputs"][0]["data"]) == 4
    assert r.headers["x-prism-route"].startswith("model:fake")


async def test_images_users_and_history_rows(client: Client) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image").decode()
    body = {
        "inputs": [
            tensor("text", ["", "something blue"]),
            tensor("image", [png, ""]),
            tensor("user", ["u1", "u2"]),
            tensor("history", [json.dumps(["item-1"]), ""]),
        ],
        "parameters": {"task": "recommend", "top_k": "3"},
    }
    r = await infer(client, body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["item"]["shape"] == [2, 3] and out["score"]["datatype"] == "FP32"
    assert "item-1" not in out["item"]["data"][:3]  # the fake skips the user's history


async def test_cache_and_unit_parameters(client: Client) -> None:
    body = {"inputs": [tensor("text", ["cache me via v2"])], "parameters": {"unit": "u1"}}
    first, second = await infer(client, body), await infer(client, body)
    assert (first.headers["x-prism-cache"], second.headers["x-prism-cache"]) == ("miss", "hit")
    body["parameters"]["cache"] = "bypass"
    assert (await infer(client, body)).headers["x-prism-cache"] == "bypass"


async def test_binary_inputs_and_outputs_by_hand(client: Client) -> None:
    raw = b"".join(len(t).to_bytes(4, "little") + t for t in (b"one", b"two"))
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [2, 1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = await infer(client, head + raw, headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    doc = json.loads(r.content[:n])
    size = doc["outputs"][0]["parameters"]["binary_data_size"]
    matrix = np.frombuffer(r.content[n : n + size], dtype="<f4").reshape(doc["outputs"][0]["shape"])
    assert matrix.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1, rtol=1e-5)


BAD = [
    ({"inputs": [tensor("text", [1.0, 2.0], "FP32")]}, "input 'text' must be BYTES, got FP32"),
    ({"inputs": [tensor("text", ["a", "b"], shape=[3])]}, "shape [3] needs 3 elements, got 2"),
    ({"inputs": [tensor("text", ["a", "b"], shape=[1, 2])]}, "must have shape [n] or [n, 1]"),
    ({"inputs": [tensor("text", ["a"], shape=[-1])]}, "shape must be a list of non-negative ints"),
    ({"inputs": [tensor("text", [1, 2])]}, "BYTES data must be strings"),
    ({"inputs": [tensor("txt", ["a"])]}, "unknown input 'txt'"),
    (
        {"inputs": [tensor("text", ["a"]), tensor("user", ["u1", "u2"])]},
        "disagree on the number of rows",
    ),
    ({"inputs": [tensor("text", ["a", ""])]}, "row 1 carries no input"),
    ({"inputs": [tensor("image", ["%%%"])]}, "input 'image'[0] is not valid base64"),
    ({"inputs": [tensor("history", ["not json"])]}, "not a JSON array of ids"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]}, "has no 'data'"),
    ({"inputs": [tensor("text", ["a"], "COMPLEX")]}, "unknown datatype"),
    ({"inputs": []}, "the request has no inputs"),
    ({}, "'inputs' must be a list"),
    ([1, 2], "body must be a JSON object"),
    (
        {"inputs": [tensor("text", ["a"])], "parameters": {"task": "dance"}},
        "parameter 'task' must be one of",
    ),
    (
        {"inputs": [tensor("text", ["a"])], "parameters": {"top_k": "many"}},
        "'top_k' must be an integer",
    ),
    (
        {"inputs": [tensor("text", ["a"])], "parameters": {"labels": [1]}},
        "'labels' must be a list of strings",
    ),
    ({"inputs": [tensor("text", ["a"])], "parameters": {"cache": "maybe"}}, "'cache' must be"),
    (
        {
            "inputs": [tensor("text", ["a"])],
            "outputs": [{"name": "label"}],
            "parameters": {"task": "embed"},
        },
        "unknown output 'label'",
    ),
    (
        {"inputs": [tensor("text", ["a"])], "outputs": [{"name": "label"}]},
        "needs parameters.labels",
    ),
    (
        {"inputs": [tensor("text", ["a"])], "parameters": {"task": "classify"}},
        "classify needs parameters.labels",
    ),
    (b"{not json", "body is not valid JSON"),
]


@pytest.mark.parametrize(("body", "message"), BAD)
async def test_bad_requests_are_400_with_an_error_string(
    client: Client, body: Any, message: str
) -> None:
    r = await infer(client, body)
    assert r.status_code == 400, r.text
    doc = r.json()
    assert list(doc) == ["error"] and message in doc["error"], doc
    assert "Traceback" not in r.text


async def test_binary_framing_errors(client: Client) -> None:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 99},
                }
            ]
        }
    ).encode()
    r = await infer(
        client, head + b"\x01\x00", headers={"Inference-Header-Content-Length": str(len(head))}
    )
    assert r.status_code == 400 and "binary_data_size exceeds" in r.json()["error"]
    r = await infer(client, head, headers={"Inference-Header-Content-Length": "100000"})
    assert r.status_code == 400 and "does not fit" in r.json()["error"]
    raw = (50).to_bytes(4, "little") + b"short"
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    r = await infer(client, head + raw, headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "runs past the data" in r.json()["error"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("GET", "/v2/models/fake/versions/9"),
        ("GET", "/v2/models/fake/versions/9/ready"),
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v2/models/fake/versions/9/infer"),
    ],
)
async def test_unknown_models_and_versions_are_404(client: Client, method: str, path: str) -> None:
    r = await client.request(method, path, json={"inputs": [tensor("text", ["a"])]})
    assert r.status_code == 404
    assert list(r.json()) == ["error"]
