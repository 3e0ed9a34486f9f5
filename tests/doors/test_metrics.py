"""/metrics after traffic through every door: valid Prometheus text, the counters we expect."""

from __future__ import annotations

from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


async def test_metrics_parse_and_count_every_door(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    text_tensor = {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["m1", "m2"]}
    assert (await client.post("/v1/infer", json={"inputs": [{"text": "m0"}]})).status_code == 200
    assert (
        await client.post("/v1/embeddings", json={"model": "fake", "input": ["m3"]})
    ).status_code == 200
    assert (
        await client.post("/v2/models/fake/infer", json={"inputs": [text_tensor]})
    ).status_code == 200
    assert (
        await client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    ).status_code == 404
    assert (await client.post("/v2/models/fake/infer", json={"inputs": []})).status_code == 400

    r = await client.get("/metrics")
    assert r.status_code == 200
    got = samples(r.text)

    def value(name: str, **labels: str) -> float:
        return sum(
            v for n, lb, v in got if n == name and all(lb.get(k) == x for k, x in labels.items())
        )

    for door in ("native", "openai", "kserve"):
        assert value("prism_requests_total", door=door, status="ok") >= 1, door
        assert value("prism_request_latency_seconds_count", door=door) >= 1, door
    assert value("prism_requests_total", door="openai", status="model_not_found") >= 1
    assert value("prism_requests_total", door="kserve", status="bad_request") >= 1
    assert (
        value("prism_requests_total", door="kserve", model="fake", version="1", route="text") >= 1
    )
    # batcher statistics, collected at scrape time
    assert value("prism_batch_size_count", target="fake@1/local") >= 1
    assert value("prism_batch_size_sum", target="fake@1/local") >= 3
    assert value("prism_batch_size_bucket", target="fake@1/local", le="+Inf") == value(
        "prism_batch_size_count", target="fake@1/local"
    )
    assert ("prism_queue_depth", {"target": "fake@1/local"}, 0.0) in got
    assert (
        "prism_batcher_inputs_total",
        {"target": "fake@1/local", "outcome": "rejected"},
        0.0,
    ) in got


async def test_callers_cannot_mint_metric_series(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    for i in range(50):
        await client.get(f"/v2/models/random-{i}/config")
        await client.post(f"/v2/models/fake/versions/v{i}/infer", json=body)
    got = samples((await client.get("/metrics")).text)
    kserve = {
        (lb.get("model"), lb.get("version"))
        for name, lb, _ in got
        if name == "prism_requests_total" and lb.get("door") == "kserve"
    }
    assert not any(m.startswith("random-") for m, _ in kserve)
    assert not any(v.startswith("v") and v[1:].isdigit() for _, v in kserve)
    assert ("(unknown)", "") in kserve and ("fake", "(unknown)") in kserve
