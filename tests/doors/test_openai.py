"""The OpenAI door: the official client unchanged, and OpenAI-shaped errors for bad input."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import openai
import pytest
from litestar.testing import AsyncTestClient

Client = AsyncTestClient  # type: ignore[type-arg]


@pytest.fixture(scope="module")
def oa(live_gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_gateway + "/v1", api_key="unused", max_retries=0)


def native(url: str, texts: list[str], version: str | None = None) -> np.ndarray:
    body: dict[str, Any] = {"model": "fake", "inputs": [{"text": t} for t in texts]}
    if version:
        body["version"] = version
    r = httpx.post(url + "/v1/infer", json=body)
    assert r.status_code == 200, r.text
    return np.array([o["embedding"] for o in r.json()["outputs"]], dtype=np.float32)


def test_client_float_and_base64_agree_with_native_infer(
    oa: openai.OpenAI, live_gateway: str
) -> None:
    texts = ["a red circle", "a blue square", "ünïcödé 🚀"]
    expected = native(live_gateway, texts)
    as_float = oa.embeddings.create(model="fake", input=texts, encoding_format="float")
    as_b64 = oa.embeddings.create(model="fake", input=texts)  # the client asks for base64
    for resp in (as_float, as_b64):
        assert [d.index for d in resp.data] == [0, 1, 2]
        got = np.array([d.embedding for d in resp.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
        assert resp.model == "fake" and resp.object == "list"
        assert resp.usage.prompt_tokens == 8  # words, approximately tokens


def test_single_string_and_versions(oa: openai.OpenAI, live_gateway: str) -> None:
    one = oa.embeddings.create(model="fake", input="hello")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 16
    canary = oa.embeddings.create(model="fake@canary", input="hello")
    np.testing.assert_allclose(
        canary.data[0].embedding, native(live_gateway, ["hello"], "2")[0], rtol=1e-6
    )
    assert not np.allclose(canary.data[0].embedding, one.data[0].embedding)


def test_models_list_and_retrieve(oa: openai.OpenAI) -> None:
    ids = [m.id for m in oa.models.list()]
    assert ids == ["fake"]  # the classifier does not embed
    assert oa.models.retrieve("fake").id == "fake"
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("nope")


def test_unknown_model_is_not_found(oa: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oa.embeddings.create(model="nope", input="x")
    assert info.value.status_code == 404
    err = info.value.body
    assert isinstance(err, dict)
    assert err["param"] == "model" and err["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        oa.embeddings.create(model="fake@9", input="x")


def test_dimensions_refused_unless_native(oa: openai.OpenAI) -> None:
    assert len(oa.embeddings.create(model="fake", input="x", dimensions=16).data[0].embedding) == 16
    with pytest.raises(openai.BadRequestError) as info:
        oa.embeddings.create(model="fake", input="x", dimensions=8)
    assert "dimensions" in info.value.message and "16" in info.value.message


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": "fake", "input": [1, 2, 3]}, "input", "token arrays"),
        ({"model": "fake", "input": [[1, 2]]}, "input", "token arrays"),
        ({"model": "fake", "input": ["ok", 3.5]}, "input", "input[1] must be a string"),
        ({"model": "fake", "input": {"text": "x"}}, "input", "string or a non-empty list"),
        ({"model": "fake", "input": []}, "input", "non-empty"),
        ({"model": "fake", "input": ["a", ""]}, "input", "input[1] is empty"),
        ({"model": "fake"}, "input", "string or a non-empty list"),
        ({"input": "x"}, "model", "model parameter"),
        ({"model": 3, "input": "x"}, "model", "model parameter"),
        (
            {"model": "fake", "input": "x", "encoding_format": "int8"},
            "encoding_format",
            "'float' or 'base64'",
        ),
        ({"model": "fake", "input": "x", "dimensions": "16"}, "dimensions", "dimensions"),
        ({"model": "fake", "input": "x", "user": 42}, "user", "'user' must be a string"),
        (["not", "an", "object"], None, "JSON object"),
    ],
)
async def test_bad_requests_are_400_in_openai_format(
    client: Client, body: Any, param: str | None, fragment: str
) -> None:
    r = await client.post("/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert fragment in err["message"]


async def test_malformed_json_and_too_many_inputs(client: Client) -> None:
    r = await client.post(
        "/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = await client.post("/v1/embeddings", json={"model": "fake", "input": ["x"] * 300})
    assert r.status_code == 400 and "at most" in r.json()["error"]["message"]


async def test_user_is_the_experiment_unit(client: Client) -> None:
    runtime = client.app.state.runtime
    seen: list[Any] = []
    original = runtime.pipeline.infer

    async def spy(inference: Any, record: Any) -> Any:
        seen.append((inference, record.door))
        return await original(inference, record)

    runtime.pipeline.infer = spy
    try:
        r = await client.post("/v1/embeddings", json={"model": "fake", "input": "x", "user": "u42"})
    finally:
        runtime.pipeline.infer = original
    assert r.status_code == 200
    req, door = seen[0]
    assert door == "openai" and req.unit == "u42" and req.model == "fake"
    assert r.headers["x-prism-route"].startswith("text; target=fake@1/local")
