"""Experiments through a whole gateway: arms, per-arm failures, guardrails, resume, shadow."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from .conftest import Client, GatewayFactory, text_request

AB = """
version: 1
models:
  m:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, seed: 1}
      "2": {backend: local, kind: fake, device: cpu, dim: 8, seed: 2, TREATMENT}
routes:
  - name: text
    match: {modality: [text]}
    model: m
    cache: {ttl_s: 0}
experiments:
  exp:
    route: text
    arms:
      control: {version: "1", weight: 50}
      treatment: {version: "2", weight: 50}
    guardrails: {max_error_rate: 0.2, min_samples: 10}
    shadow: SHADOW
"""


def ab(treatment: str = "", shadow: bool = False, weights: tuple[int, int] = (50, 50)) -> str:
    text = AB.replace(", TREATMENT", f", {treatment}" if treatment else "")
    text = text.replace("SHADOW", "true" if shadow else "false")
    return text.replace(
        'weight: 50}\n      treatment: {version: "2", weight: 50}',
        f'weight: {weights[0]}}}\n      treatment: {{version: "2", weight: {weights[1]}}}',
    )


async def report(client: Client, name: str = "exp") -> dict[str, Any]:
    r = await client.get(f"/admin/experiments/{name}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_units_stick_to_arms_and_counters_add_up(gateway: GatewayFactory) -> None:
    async with gateway(ab()) as client:
        seen: dict[str, set[str]] = {}
        for i in range(40):
            unit = f"u{i % 10}"
            body = (await client.post("/v1/infer", json=text_request(f"q{i}", unit=unit))).json()
            seen.setdefault(unit, set()).add(body["route"]["arm"])
            assert body["version"] == {"control": "1", "treatment": "2"}[body["route"]["arm"]]
        assert all(len(arms) == 1 for arms in seen.values())
        rep = await report(client)
        arms = rep["arms"]
        assert arms["control"]["assigned"] + arms["treatment"]["assigned"] == 40
        assert arms["control"]["requests"] + arms["treatment"]["requests"] == 40
        assert rep["counters"] == "file" and rep["state"] == "running"  # kept beside the policy
        listing = (await client.get("/admin/experiments")).json()["experiments"]
        assert [e["name"] for e in listing] == ["exp"]
        assert (await client.get("/admin/experiments/nope")).status_code == 404


async def test_failed_requests_count_against_their_arm_and_trip_the_guardrail(
    gateway: GatewayFactory,
) -> None:
    async with gateway(ab("fail_every: 1")) as client:
        statuses = []
        for i in range(60):
            r = await client.post("/v1/infer", json=text_request(f"q{i}", unit=f"u{i}"))
            statuses.append((r.status_code, r.json().get("route", {}).get("arm")))
            if i == 30:
                await client.get("/admin/experiments/exp")  # a sync: the guardrail trips
        assert any(code == 502 for code, _ in statuses[:30])
        assert all(code == 200 for code, _ in statuses[31:]), statuses  # treatment stopped
        rep = await report(client)
        treatment = rep["arms"]["treatment"]
        assert treatment["errors"] >= 10 and treatment["error_rate"] == 1.0
        assert "guardrail: error rate" in treatment["stopped"]["reason"]
        assert rep["state"] == "control only"
        assert rep["comparison"][0]["error_rate"]["p_value"] < 0.01

        r = await client.post("/admin/experiments/exp/resume")
        assert r.status_code == 200 and r.json()["state"] == "running"
        arms = set()
        for i in range(20):
            r = await client.post("/v1/infer", json=text_request(f"again{i}", unit=f"u{i}"))
            arms.add(r.json().get("route", {}).get("arm") if r.status_code == 200 else "failed")
        assert "failed" in arms  # traffic reaches the treatment again


async def test_operator_can_stop_an_arm_but_not_the_control(gateway: GatewayFactory) -> None:
    async with gateway(ab()) as client:
        r = await client.post("/admin/experiments/exp/stop", params={"arm": "treatment"})
        assert r.status_code == 200
        assert r.json()["arms"]["treatment"]["stopped"]["reason"] == "stopped by an operator"
        for i in range(10):
            body = (await client.post("/v1/infer", json=text_request(unit=f"u{i}"))).json()
            assert body["route"]["arm"] == "control"
            assert "stopped: 'treatment' (stopped by an operator)" in body["route"]["reason"]
        r = await client.post("/admin/experiments/exp/stop", params={"arm": "control"})
        assert r.status_code == 422


async def test_shadow_never_changes_the_answer(gateway: GatewayFactory) -> None:
    requests = [text_request(f"q{i}", unit=f"u{i}") for i in range(15)]
    async with gateway(ab(weights=(100, 0), shadow=False)) as client:
        plain = [(await client.post("/v1/infer", json=r)).json() for r in requests]
    async with gateway(ab(weights=(0, 100), shadow=True)) as client:
        shadowed = [(await client.post("/v1/infer", json=r)).json() for r in requests]
        await asyncio.sleep(0.2)
        rep = await report(client)
    for a, b in zip(plain, shadowed, strict=True):
        assert (a["version"], a["outputs"]) == (b["version"], b["outputs"]) == ("1", b["outputs"])
        assert b["route"]["arm"] == "control"
    treatment = rep["arms"]["treatment"]
    assert treatment["shadow"]["requests"] == 15 and treatment["shadow"]["errors"] == 0
    assert rep["shadow_cosine"]["count"] == 15
    assert -1 <= rep["shadow_cosine"]["mean"] < 0.99  # different seeds: different vectors


async def test_slow_failing_shadow_does_not_slow_or_fail_the_caller(
    gateway: GatewayFactory,
) -> None:
    async with gateway(
        ab("latency_ms: 400, fail_every: 1", weights=(0, 100), shadow=True)
    ) as client:
        started = time.perf_counter()
        bodies = []
        for i in range(8):
            r = await client.post("/v1/infer", json=text_request(f"q{i}", unit=f"u{i}"))
            assert r.status_code == 200
            bodies.append(r.json())
        elapsed = time.perf_counter() - started
        assert elapsed < 2.0  # 8 mirrors of 400 ms each run behind, not in front
        assert all(b["timing_ms"]["total"] < 300 for b in bodies)
        await asyncio.sleep(1.0)
        treatment = (await report(client))["arms"]["treatment"]
        assert treatment["shadow"]["errors"] >= 1 and treatment["shadow"]["cosine_count"] == 0


async def test_dead_redis_fails_no_request_and_reports_say_503(gateway: GatewayFactory) -> None:
    from tests.support import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with gateway(ab(), redis_url=dead) as client:
        arms = set()
        for i in range(10):
            r = await client.post("/v1/infer", json=text_request(f"q{i}", unit=f"u{i}"))
            assert r.status_code == 200
            arms.add(r.json()["route"]["arm"])
        assert arms == {"control", "treatment"}  # assignment needs no Redis
        r = await client.get("/admin/experiments/exp")
        assert r.status_code == 503 and r.json()["code"] == "counters_unavailable"
        assert r.headers["retry-after"] == "5"


async def test_feedback_measures_each_arms_quality_with_statistics(
    gateway: GatewayFactory,
) -> None:
    async with gateway(ab()) as client:
        arms: dict[str, str] = {}
        for i in range(120):
            body = (await client.post("/v1/infer", json=text_request(f"q{i}", unit=f"u{i}"))).json()
            arms[body["id"]] = body["route"]["arm"]
        # callers score answers: the treatment's are better (0.8 vs 0.6, with some spread)
        for n, (request_id, arm) in enumerate(arms.items()):
            value = (0.8 if arm == "treatment" else 0.6) + (n % 5 - 2) * 0.05
            r = await client.post("/v1/feedback", json={"id": request_id, "value": value})
            assert r.status_code == 202, r.text
            assert r.json() == {"experiment": "exp", "arm": arm, "value": value}
        # one score per answer
        again = await client.post("/v1/feedback", json={"id": request_id, "value": 0.1})
        assert again.status_code == 409 and again.json()["code"] == "conflict"
        # or name the arm, as OpenAI / KServe callers read it from x-prism-experiment
        named = {"experiment": "exp", "arm": "control", "value": 0.6}
        assert (await client.post("/v1/feedback", json=named)).status_code == 202

        rep = await report(client)
        control, treatment = rep["arms"]["control"]["quality"], rep["arms"]["treatment"]["quality"]
        assert control["count"] + treatment["count"] == 121
        assert treatment["mean"] == pytest.approx(0.8, abs=0.02)
        low, high = treatment["mean_ci95"]
        assert low < treatment["mean"] < high
        quality = rep["comparison"][0]["quality"]
        assert quality["difference"] == pytest.approx(0.2, abs=0.03)
        assert quality["p_value"] < 0.001 and quality["difference_ci95"][0] > 0.1
        # the split matches the weights: no sample ratio mismatch
        assert rep["sample_ratio"]["mismatch"] is False and rep["sample_ratio"]["p_value"] > 0.001


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"id": "req_0000000000000000", "value": 1}, 404),
        ({"experiment": "exp", "arm": "nope", "value": 1}, 404),
        ({"experiment": "nope", "arm": "control", "value": 1}, 404),
        ({"value": 1}, 422),
        ({"id": "req_1", "experiment": "exp", "arm": "control", "value": 1}, 422),
        ({"experiment": "exp", "arm": "control", "value": "high"}, 422),
        ({"experiment": "exp", "arm": "control", "value": "1"}, 422),
        ({"experiment": "exp", "arm": "control", "value": True}, 422),
        ({"experiment": "exp", "arm": "control", "value": 1e308}, 422),
        ({"id": "req_1", "experiment": "exp", "value": 1}, 422),
        ({"experiment": "exp", "value": 1}, 422),
    ],
)
async def test_feedback_that_names_no_answer_is_refused(
    gateway: GatewayFactory, body: dict[str, Any], status: int
) -> None:
    async with gateway(ab()) as client:
        r = await client.post("/v1/feedback", json=body)
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_feedback_reaches_the_arm_through_another_replica(
    gateway: GatewayFactory, redis_url: str, tmp_path: Any
) -> None:
    # two gateways sharing Redis: the answer came from one, the score goes to the other
    redis_url = redis_url.rsplit("/", 1)[0] + "/5"  # a database no other test counts in
    async with gateway(ab(), redis_url=redis_url) as first:
        body = (await first.post("/v1/infer", json=text_request("x", unit="u1"))).json()
        await first.get("/admin/experiments/exp")  # a sync shares the request id
        async with gateway(ab(), redis_url=redis_url, file_name="second.yaml") as second:
            r = await second.post("/v1/feedback", json={"id": body["id"], "value": 0.5})
            assert r.status_code == 202, r.text
            assert r.json()["arm"] == body["route"]["arm"]


async def test_redefining_an_arm_starts_its_figures_afresh(
    gateway: GatewayFactory, tmp_path: Any
) -> None:
    async with gateway(ab()) as client:
        for i in range(40):
            await client.post("/v1/infer", json=text_request(f"q{i}", unit=f"u{i}"))
        before = await report(client)
        counts = {arm: a["assigned"] for arm, a in before["arms"].items()}
        assert sum(counts.values()) == 40 and min(counts.values()) > 0
        # a weight change ramps the treatment up: same arms, figures kept; the sample ratio
        # test starts over, since earlier assignments followed the old weights
        (tmp_path / "policy.yaml").write_text(ab(weights=(10, 90)))
        assert (await client.post("/admin/policy/reload")).status_code == 200
        ramped = await report(client)
        assert {a: r["assigned"] for a, r in ramped["arms"].items()} == counts
        assert ramped["sample_ratio"] is None  # no assignments under the new split yet
        for i in range(40, 80):
            await client.post("/v1/infer", json=text_request(f"q{i}", unit=f"u{i}"))
        assert (await report(client))["sample_ratio"]["mismatch"] is False
        # the treatment's version redefined in place (another model): its figures start
        # afresh, the control's stay
        (tmp_path / "policy.yaml").write_text(ab(weights=(10, 90)).replace("seed: 2}", "seed: 3}"))
        assert (await client.post("/admin/policy/reload")).status_code == 200
        fresh = await report(client)
        assert fresh["arms"]["treatment"]["definition"] != before["arms"]["treatment"]["definition"]
        assert fresh["arms"]["control"]["definition"] == before["arms"]["control"]["definition"]
        assert fresh["arms"]["treatment"]["assigned"] == 0
        assert fresh["arms"]["control"]["assigned"] > counts["control"]


async def test_without_redis_a_restart_keeps_stops_and_figures(
    gateway: GatewayFactory, tmp_path: Any
) -> None:
    async with gateway(ab()) as client:
        for i in range(10):
            await client.post("/v1/infer", json=text_request(f"q{i}", unit=f"u{i}"))
        r = await client.post("/admin/experiments/exp/stop", params={"arm": "treatment"})
        assert r.status_code == 200
    state = tmp_path / ".policy.yaml.experiments.json"
    assert state.exists()
    async with gateway(ab()) as restarted:  # the same policy file, a new process's memory
        for i in range(10):  # before any report (a sync): the stop holds from request one
            body = (await restarted.post("/v1/infer", json=text_request(unit=f"u{i}"))).json()
            assert body["route"]["arm"] == "control"
        rep = await report(restarted)
        assert rep["arms"]["treatment"]["stopped"]["reason"] == "stopped by an operator"
        assert sum(a["assigned"] for a in rep["arms"].values()) == 20
    async with gateway(ab(), experiments_persist=False) as forgetful:
        assert (await report(forgetful))["state"] == "running"


async def test_a_fallback_answer_is_a_failure_of_the_arm(gateway: GatewayFactory) -> None:
    # the treatment always fails and the route falls back: callers get answers, but the
    # arm's own version answered none of them, so it must look as broken as it is
    text = (
        ab("fail_every: 1")
        .replace(
            '      "2":',
            '      "3": {backend: local, kind: fake, device: cpu, dim: 8, seed: 3}\n      "2":',
        )
        .replace(
            "    cache: {ttl_s: 0}\n",
            "    cache: {ttl_s: 0}\n    fallback: [{model: m, version: '3'}]\n",
            1,
        )
    )
    async with gateway(text) as client:
        fed: list[str] = []
        for i in range(30):
            body = (await client.post("/v1/infer", json=text_request(f"q{i}", unit=f"u{i}"))).json()
            if body["route"]["arm"] == "treatment":
                assert body["route"]["fallback"] is True and body["version"] == "3"
                fed.append(body["id"])
        rep = await report(client)
        treatment = rep["arms"]["treatment"]
        assert fed and treatment["errors"] == treatment["requests"] == len(fed)
        # and a fallback's answer is not credited to the arm by feedback
        r = await client.post("/v1/feedback", json={"id": fed[0], "value": 1})
        assert r.status_code == 404


async def test_no_sample_ratio_alarm_after_a_stop_and_resume(gateway: GatewayFactory) -> None:
    async with gateway(ab(weights=(50, 50))) as client:
        assert (
            await client.post("/admin/experiments/exp/stop", params={"arm": "treatment"})
        ).status_code == 200
        for i in range(60):  # every unit goes to the control while the treatment is stopped
            await client.post("/v1/infer", json=text_request(f"s{i}", unit=f"u{i}"))
        assert (await client.post("/admin/experiments/exp/resume")).status_code == 200
        for i in range(60):
            await client.post("/v1/infer", json=text_request(f"r{i}", unit=f"v{i}"))
        split = (await report(client))["sample_ratio"]
        assert split is not None and split["mismatch"] is False, split
