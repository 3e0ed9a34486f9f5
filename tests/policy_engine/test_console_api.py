"""What the console reads and serves, without a browser: cache status, exposure samples,
the HTML shells and their files, the self-contained report's HTML."""

from __future__ import annotations

import json

from prism.gateway.console import PAGES, report_html

from .conftest import GatewayFactory, text_request

POLICY = """
version: 1
models:
  m:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, seed: 1}
      "2": {backend: local, kind: fake, device: cpu, dim: 8, seed: 2}
routes:
  - name: text
    match: {modality: [text]}
    model: m
    cache: {ttl_s: 600}
experiments:
  exp:
    route: text
    arms:
      control: {version: "1", weight: 50}
      treatment: {version: "2", weight: 50}
"""


async def test_cache_status_counts_hits_and_misses(gateway: GatewayFactory) -> None:
    async with gateway(POLICY) as client:
        empty = (await client.get("/admin/cache")).json()
        assert empty["store"] == "memory" and empty["hit_ratio"] is None
        for _ in range(3):  # one miss, then two hits, for the same unit and text
            r = await client.post("/v1/infer", json=text_request("same", unit="u1"))
            assert r.status_code == 200
        status = (await client.get("/admin/cache")).json()
        assert (status["hits"], status["misses"]) == (2, 1)
        assert status["hit_ratio"] == round(2 / 3, 4)
        assert status["entries"] == 1 and status["bytes"] > 0 and status["available"] is True


async def test_reports_carry_exposure_samples(gateway: GatewayFactory) -> None:
    async with gateway(POLICY) as client:
        for i in range(20):
            await client.post("/v1/infer", json=text_request(f"q{i}", unit=f"u{i}"))
        rep = (await client.get("/admin/experiments/exp")).json()
        last = rep["exposure"][-1]
        assert set(last["units"]) == {"control", "treatment"}
        assert sum(last["units"].values()) == 20 and sum(last["assigned"].values()) == 20
        assert rep["how_to_read"] and rep["statistics"]["alpha"] == 0.05


async def test_console_shells_and_files_are_served_without_data(gateway: GatewayFactory) -> None:
    async with gateway(POLICY, admin_keys=["k"]) as client:
        assert (await client.get("/admin/experiments")).status_code == 401
        for page in ("", *PAGES):
            r = await client.get(f"/console/{page}")
            assert r.status_code == 200 and "text/html" in r.headers["content-type"]
            assert "/console/static/console.js" in r.text and "http" not in r.text.split("<body")[
                0
            ].replace("http-equiv", "")
        assert (await client.get("/console/nope")).status_code == 404
        js = await client.get("/console/static/console.js")
        assert js.status_code == 200 and "PRISM_REPORT" in js.text
        swagger = await client.get("/schema/swagger")
        assert "/schema/swagger-ui/swagger-ui-bundle.js" in swagger.text
        assert "cdn" not in swagger.text.lower()
        bundle = await client.get("/schema/swagger-ui/swagger-ui-bundle.js")
        assert bundle.status_code == 200 and len(bundle.content) > 100_000


def test_report_html_is_self_contained_and_script_safe() -> None:
    report = {"name": "x</script><script>alert(1)</script>", "arms": {}, "comparison": []}
    html = report_html(report, source="http://gw", generated_at="now")
    assert "</script><script>alert(1)" not in html
    embedded = html.split('id="report-data">')[1].split("</script>")[0]
    assert json.loads(embedded.replace("<\\/", "</"))["name"] == report["name"]
    assert "<script src=" not in html and "<link" not in html
