"""Hostile and odd requests on a real socket, at every door: each gets its door's error shape
with the right 4xx status, nothing leaks, and the gateway keeps serving.

Bodies: compressed (gzip/deflate inflate, a bomb is 413 before it grows, unknown codings 415),
empty, nested past the parser's recursion limit. Then the door-specific wrong types.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

# a policy model that only classifies text (tests/doors/conftest.py)
TAGGER = "tagger"


def native_body() -> dict[str, Any]:
    return {"inputs": [{"text": "hello"}]}


def openai_body() -> dict[str, Any]:
    return {"model": "fake", "input": "hello"}


def kserve_body() -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}


DOORS: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "native": ("/v1/infer", native_body),
    "openai": ("/v1/embeddings", openai_body),
    "kserve": ("/v2/models/fake/infer", kserve_body),
}


def door_error(door: str, r: httpx.Response, status: int) -> str:
    """The error message, after checking the door's own error shape and status."""
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text and 'File "' not in r.text
    body = r.json()
    if door == "native":
        assert r.headers["content-type"].startswith("application/problem+json")
        assert body["status"] == status and body["title"] and body["type"].startswith("https://")
        return str(body["detail"])
    if door == "openai":
        assert body["error"]["type"] == "invalid_request_error"
        return str(body["error"]["message"])
    assert set(body) == {"error"}
    return str(body["error"])


@pytest.fixture
def http(live_gateway: str) -> httpx.Client:
    with httpx.Client(base_url=live_gateway, timeout=30) as client:
        yield client  # type: ignore[misc]
        assert client.get("/healthz").status_code == 200  # and it keeps serving


def post(http: httpx.Client, path: str, body: bytes, **headers: str) -> httpx.Response:
    return http.post(path, content=body, headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_bodies_are_inflated(http: httpx.Client, door: str, coding: str) -> None:
    path, body = DOORS[door]
    raw = json.dumps(body()).encode()
    packed = gzip.compress(raw) if coding == "gzip" else zlib.compress(raw)
    r = post(http, path, packed, **{"content-encoding": coding})
    assert r.status_code == 200, r.text
    plain = post(http, path, raw)
    assert r.json().get("data", r.json().get("outputs")) == plain.json().get(
        "data", plain.json().get("outputs")
    )


@pytest.mark.parametrize("door", DOORS)
def test_concatenated_gzip_members_are_one_body(http: httpx.Client, door: str) -> None:
    path, body = DOORS[door]
    raw = json.dumps(body()).encode()
    half = len(raw) // 2
    two_members = gzip.compress(raw[:half]) + gzip.compress(raw[half:])
    r = post(http, path, two_members, **{"content-encoding": "gzip"})
    assert r.status_code == 200, r.text
    trailing = post(http, path, gzip.compress(raw) + b"junk", **{"content-encoding": "gzip"})
    assert "bytes after its gzip data" in door_error(door, trailing, 400)
    twice = http.post(
        path,
        content=gzip.compress(gzip.compress(raw)),
        headers=[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("content-encoding", "gzip"),
        ],
    )
    assert "not supported" in door_error(door, twice, 415)  # stacked codings: refused, not misread


@pytest.mark.parametrize("door", DOORS)
def test_a_compression_bomb_is_413_and_never_inflated_whole(http: httpx.Client, door: str) -> None:
    path, _ = DOORS[door]
    # 64 MiB of JSON in ~64 KiB: well past the 16 MiB body limit once inflated
    bomb = gzip.compress(b'{"inputs": [{"text": "' + b"a" * (64 * 2**20) + b'"}]}')
    assert len(bomb) < 2**20
    message = door_error(door, post(http, path, bomb, **{"content-encoding": "gzip"}), 413)
    assert "inflates to more than" in message


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        (b"", {}, 400, "empty"),
        (b"not json {", {}, 400, "not valid JSON"),
        (b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}, 400, "nested too deeply"),
        (b"garbage", {"content-encoding": "gzip"}, 400, "not valid gzip"),
        (gzip.compress(b'{"inputs": []}')[:-12], {"content-encoding": "gzip"}, 400, "truncated"),
        (b"{}", {"content-encoding": "br"}, 415, "not supported; use gzip or deflate"),
    ],
    ids=["empty", "not-json", "deep", "bad-gzip", "truncated-gzip", "brotli"],
)
def test_unreadable_bodies_get_the_doors_error(
    http: httpx.Client, door: str, body: bytes, headers: dict[str, str], status: int, says: str
) -> None:
    path, _ = DOORS[door]
    r = post(http, path, body, **headers)
    assert says in door_error(door, r, status)
    if status == 415:
        assert r.headers["accept-encoding"] == "gzip, deflate"


@pytest.mark.parametrize(
    ("door", "method", "path", "status"),
    [
        ("kserve", "GET", "/v2/models/fake/infer", 405),
        ("kserve", "GET", "/v2/nothing/here", 404),
        ("kserve", "POST", "/v2/health/live", 405),
        ("openai", "GET", "/v1/embeddings", 405),
        ("openai", "POST", "/v1/models", 405),
        ("openai", "POST", "/v1/chat/completions", 404),
        ("native", "GET", "/v1/infer", 405),
        ("native", "GET", "/nothing", 404),
    ],
)
def test_unknown_paths_and_methods_answer_in_the_doors_shape(
    http: httpx.Client, door: str, method: str, path: str, status: int
) -> None:
    r = http.request(method, path)
    message = door_error(door, r, status)
    if status == 404:
        assert message.startswith(f"no such endpoint: {method} {path}")
    else:
        assert r.headers["allow"]  # which methods the path does take


def test_a_model_asked_for_a_task_it_does_not_serve(http: httpx.Client) -> None:
    native = http.post("/v1/infer", json={"model": TAGGER, "inputs": [{"text": "x"}]})
    assert "does not serve task 'embed' (it serves: classify)" in door_error("native", native, 422)
    assert native.json()["errors"][0]["path"] == "task"
    image = {"image": {"base64": "aGk="}}
    wrong_input = http.post(
        "/v1/infer",
        json={
            "model": TAGGER,
            "task": "classify",
            "inputs": [image],
            "parameters": {"labels": ["a"]},
        },
    )
    assert "does not take image inputs" in door_error("native", wrong_input, 422)
    explicit = {**kserve_body(), "parameters": {"task": "embed"}}
    kserve = http.post(f"/v2/models/{TAGGER}/infer", json=explicit)
    assert "does not serve task 'embed'" in door_error("kserve", kserve, 400)
    # the same model for what it does serve
    ok = http.post(
        f"/v2/models/{TAGGER}/infer",
        json={**kserve_body(), "parameters": {"task": "classify", "labels": ["a", "b"]}},
    )
    assert ok.status_code == 200, ok.text


def _tensor(**overrides: Any) -> dict[str, Any]:
    return {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"], **overrides}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"inputs": [_tensor(datatype=[])]}, "unknown datatype"),
        ({"inputs": [_tensor(datatype={"a": 1})]}, "unknown datatype"),
        (
            {"inputs": [_tensor()], "outputs": [{"name": "embedding", "parameters": [1]}]},
            "outputs[0].parameters",
        ),
        ({"inputs": [_tensor()], "parameters": {"top_k": 1.9}}, "'top_k' must be an integer"),
        ({"inputs": [_tensor()], "parameters": {"top_k": True}}, "'top_k' must be an integer"),
        (
            {"inputs": [_tensor()], "parameters": {"binary_data_output": "yes"}},
            "'binary_data_output' must be true or false",
        ),
        ({"inputs": [_tensor(shape=[1, 1, 1], data=[[["hi"]]])]}, "must have shape"),
        ({"inputs": [_tensor(data="hi")]}, "'data' must be a list"),
        ({"inputs": [_tensor()], "parameters": 0}, "'parameters' must be an object"),
        ({"inputs": [_tensor()], "parameters": []}, "'parameters' must be an object"),
    ],
)
def test_kserve_wrong_types_are_400(http: httpx.Client, body: dict[str, Any], says: str) -> None:
    assert says in door_error("kserve", http.post("/v2/models/fake/infer", json=body), 400)


def _kserve(parameters: dict[str, Any] | None = None, **tensor: Any) -> bytes:
    body: dict[str, Any] = {"inputs": [_tensor(**tensor)]}
    if parameters is not None:
        body["parameters"] = parameters
    return json.dumps(body).encode()


SURROGATE = "\\" + "ud800"  # the JSON escape of an unpaired surrogate, as text


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        # JSON that Python's json module takes, then fails on far from the parser
        (_kserve(data=["HOLE"]).replace(b"HOLE", SURROGATE.encode()), "without its pair"),
        (_kserve({"top_k": 1}).replace(b"1}", b"Infinity}"), "not valid JSON"),
        (
            _kserve(name="history", data=["HOLE"]).replace(
                b"HOLE", b'[\\"' + SURROGATE.encode() + b'\\"]'
            ),
            "without its pair",
        ),
        # values that used to reach int() or the model
        (_kserve({"top_k": "\u00b2"}), "'top_k' must be an integer"),
        (_kserve({"top_k": "9" * 5000}), "'top_k' must be an integer"),
        # a shape that costs no bytes but would build 10**8 rows
        (_kserve(name="history", shape=[10**8, 0], data=[]), "at most 65536 per request"),
    ],
)
def test_kserve_values_that_used_to_fail_late(http: httpx.Client, raw: bytes, says: str) -> None:
    assert says in door_error("kserve", post(http, "/v2/models/fake/infer", raw), 400)


def test_kserve_binary_history_that_is_not_utf8(http: httpx.Client) -> None:
    ids = b"\xff\xfe"
    blob = len(ids).to_bytes(4, "little") + ids
    head = json.dumps(
        {
            "inputs": [
                {"name": "user", "datatype": "BYTES", "shape": [1], "data": ["u1"]},
                {
                    "name": "history",
                    "datatype": "BYTES",
                    "shape": [1, 1],
                    "parameters": {"binary_data_size": len(blob)},
                },
            ],
            "parameters": {"task": "recommend"},
        }
    ).encode()
    r = http.post(
        "/v2/models/fake/infer",
        content=head + blob,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert "not valid UTF-8" in door_error("kserve", r, 400)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("encoding_format", [], "'encoding_format' must be"),
        ("encoding_format", "", "'encoding_format' must be"),
        ("input", [True], "input[0] must be a string"),
        ("model", "fake@", "'model' must be a name or 'name@version'"),
        ("model", "@1", "'model' must be a name or 'name@version'"),
    ],
)
def test_openai_wrong_values_are_400(http: httpx.Client, field: str, value: Any, says: str) -> None:
    r = http.post("/v1/embeddings", json={**openai_body(), field: value})
    assert says in door_error("openai", r, 400)


def test_openai_models_only_knows_models_that_embed(http: httpx.Client) -> None:
    listed = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert TAGGER not in listed and "fake" in listed
    assert http.get("/v1/models/fake").status_code == 200
    assert "does not serve embeddings" in door_error(
        "openai", http.get(f"/v1/models/{TAGGER}"), 404
    )


def test_admin_call_missing_a_query_parameter_is_400(http: httpx.Client) -> None:
    r = http.post("/admin/experiments/any/stop")
    assert door_error("native", r, 400) == "Missing required query parameter 'arm'"
    assert r.json()["code"] == "bad_request"


@pytest.mark.parametrize("door", DOORS)
def test_a_client_that_leaves_mid_body_is_not_a_server_error(
    http: httpx.Client, live_gateway: str, door: str, caplog: pytest.LogCaptureFixture
) -> None:
    import socket
    import time

    path, _ = DOORS[door]
    host, port = live_gateway.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"inputs": ')  # 11 of the promised 100 bytes
    time.sleep(0.3)
    assert "unhandled error" not in caplog.text
    metrics = http.get("/metrics").text
    assert 'code="internal_error"' not in metrics and 'status="500"' not in metrics


def test_thousands_of_gzip_members_are_refused_at_once() -> None:
    from prism.gateway.doors._request import MAX_GZIP_MEMBERS, inflate

    many = gzip.compress(b"") * 50_000  # ~1 MB of empty members: quadratic to inflate naively
    with pytest.raises(Exception, match=f"more than {MAX_GZIP_MEMBERS} gzip members"):
        inflate(many, "gzip", 10 * 2**20)
    assert inflate(gzip.compress(b"a") * MAX_GZIP_MEMBERS, "gzip", 1024) == b"a" * MAX_GZIP_MEMBERS


@pytest.mark.parametrize(
    ("task", "parameters", "field"),
    [
        ("classify", {"labels": 5}, "parameters.labels"),
        ("classify", {"labels": ["a", "b"], "top_k": "x"}, "parameters.top_k"),
        ("recommend", {"top_k": "abc"}, "parameters.top_k"),
        ("recommend", {"top_k": -5}, "parameters.top_k"),
    ],
)
async def test_parameters_of_the_wrong_type_are_the_callers_mistake(
    client: Any,
    task: str,
    parameters: dict[str, object],
    field: str,
) -> None:
    """422 naming the parameter, not a 502 that would count against the model."""
    body = {"model": "fake", "task": task, "inputs": [{"user": "u1"}], "parameters": parameters}
    r = await client.post("/v1/infer", json=body)
    assert r.status_code == 422, r.text
    assert [e["path"] for e in r.json()["errors"]] == [field]
    assert (await client.get("/healthz")).status_code == 200  # and it keeps serving
