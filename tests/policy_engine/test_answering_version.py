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


MIXED = """
version: 1
models:
  m:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, seed: 1}
      "2": {backend: local, kind: fake, device: cpu, dim: 16, seed: 2, latency_ms: 300,
            fail_every: 2, batching: {max_batch_size: 1}}
routes:
  - name: text
    match: {modality: [text]}
    model: m
    version: "2"
    fallback: [{model: m, version: "1"}]
    cache: {ttl_s: 600}
"""


async def test_a_mixed_answer_names_each_outputs_version_and_caches_only_the_planned(
    tmp_path: object,
) -> None:
    # L computes "b" on v2 (call 1, fine). R asks for "a" and "b": its own "a" is call 2 on
    # v2, which fails, so v1 answers it; its "b" is L's v2 answer. R mixes two versions.
    import asyncio
    from pathlib import Path

    import httpx

    from prism.gateway.app import create_app
    from prism.gateway.settings import Settings
    from tests.upstream import UvicornThread

    policy = Path(str(tmp_path)) / "p.yaml"
    policy.write_text(MIXED)
    server = UvicornThread(create_app(Settings(policy=policy, policy_watch_s=0))).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:

            async def ask(texts: list[str], delay_s: float) -> httpx.Response:
                await asyncio.sleep(delay_s)
                return await c.post("/v1/infer", json={"inputs": [{"text": t} for t in texts]})

            first, mixed = await asyncio.gather(ask(["b"], 0), ask(["a", "b"], 0.1))
            assert first.json()["version"] == "2"
            body = mixed.json()
            assert body["version"] == "2" and body["route"]["fallback"] is True
            a, b = body["outputs"]
            assert (a["version"], len(a["embedding"])) == ("1", 8)  # named: not the top's
            assert "version" not in b and len(b["embedding"]) == 16
            # v1's answer for "a" was not stored under v2's key
            again = (await ask(["a"], 0)).json()
            assert again["route"]["cache"] == "miss"
    finally:
        server.stop()
