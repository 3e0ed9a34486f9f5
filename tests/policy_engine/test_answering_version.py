"""The response and the cache follow the version that answered, not the one planned."""

from __future__ import annotations

from .conftest import GatewayFactory, text_request

FALLBACK = """
version: 1
models:
  m:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, seed: 1}
      "2": {backend: local, kind: fake, device: cpu, dim: 16, seed: 2, fail_every: 1}
    labels: {stable: "2", previous: "1"}
routes:
  - name: text
    match: {modality: [text]}
    model: m
    version: stable
    fallback: [{model: m, version: previous}]
    cache: {ttl_s: 600}
"""


async def test_a_fallback_answer_is_reported_as_its_version_and_never_cached_as_the_primary(
    gateway: GatewayFactory,
) -> None:
    async with gateway(FALLBACK) as client:
        for _ in range(3):
            r = await client.post("/v1/infer", json=text_request("probe"))
            body = r.json()
            assert r.status_code == 200, r.text
            assert body["version"] == "1" and body["route"]["fallback"] is True
            assert body["route"]["target"] == "m@1/local"
            assert len(body["outputs"][0]["embedding"]) == 8
            # v2's key never holds v1's answer: each request tries v2 again
            assert body["route"]["cache"] == "miss"


TWO_VERSIONS = """
version: 1
models:
  m:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, seed: 1}
      "2": {backend: local, kind: fake, device: cpu, dim: 16, seed: 2}
routes:
  - name: text
    match: {modality: [text]}
    targets: [{model: m, version: "1", weight: 1}, {model: m, version: "2", weight: 1}]
    latency: {strategy: weighted}
    cache: {ttl_s: 600}
"""


async def test_every_answer_names_the_version_whose_vector_it_carries(
    gateway: GatewayFactory,
) -> None:
    async with gateway(TWO_VERSIONS) as client:
        for round_ in range(2):  # the second round answers from the cache where it can
            for i in range(12):
                body = (await client.post("/v1/infer", json=text_request(f"q{i}"))).json()
                width = len(body["outputs"][0]["embedding"])
                assert width == {"1": 8, "2": 16}[body["version"]], (round_, body)
