"""Golden policy fixtures, the examples, the generated JSON Schema and the operator CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prism.gateway.cli import main
from prism.gateway.policy import PolicyLoadError, load_policy_file, parse_policy
from prism.gateway.policy._schema import SCHEMA_PATH, render_schema

from .conftest import GatewayFactory, text_request

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "policies"
EXAMPLES = sorted((ROOT / "policies" / "examples").glob("*.yaml"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize(
    "path",
    sorted((FIXTURES / "valid").glob("*.yaml")) + sorted((FIXTURES / "invalid").glob("*.yaml")),
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_golden_policy(path: Path) -> None:
    text = path.read_text()
    if path.parent.name == "valid":
        parse_policy(text, _rel(path))
        return
    with pytest.raises(PolicyLoadError) as info:
        parse_policy(text, _rel(path))
    got = "\n".join(str(issue) for issue in info.value.issues)
    assert got == path.with_suffix(".expected").read_text().strip()


def test_every_invalid_fixture_has_an_expected_message() -> None:
    invalid = FIXTURES / "invalid"
    assert {p.stem for p in invalid.glob("*.yaml")} == {p.stem for p in invalid.glob("*.expected")}


def test_examples_cover_the_documented_setups() -> None:
    assert {p.stem for p in EXAMPLES} >= {"ab", "canary", "shadow", "fallback", "latency-budget"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
async def test_example_loads_and_serves(path: Path, gateway: GatewayFactory) -> None:
    doc = load_policy_file(path)
    async with gateway(doc.model_dump_json()) as client:  # JSON is YAML
        r = await client.post("/v1/infer", json=text_request("an example", unit="u1"))
        assert r.status_code == 200, r.text


def test_schema_json_is_current() -> None:
    assert SCHEMA_PATH.read_text() == render_schema(), "stale: run `prism policy schema`"


def test_schema_cli_writes_and_checks(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    assert main(["policy", "schema", "--out", str(out), "--check"]) == 1
    assert main(["policy", "schema", "--out", str(out)]) == 0
    assert main(["policy", "schema", "--out", str(out), "--check"]) == 0
    schema = json.loads(out.read_text())
    assert schema["additionalProperties"] is False
    assert "Route" in schema["$defs"] and "fastest" in json.dumps(schema["$defs"]["LatencyRule"])


def test_explain_prints_the_decision(capsys: pytest.CaptureFixture[str]) -> None:
    request = json.dumps(text_request("hi", unit="u42"))
    assert (
        main(["policy", "explain", str(ROOT / "policies/examples/ab.yaml"), "--request", request])
        == 0
    )
    out = capsys.readouterr().out
    assert "rule:       text" in out
    assert "experiment: text-v2  arm: " in out
    assert "key[0]:" in out and "why:" in out


def test_explain_json_from_file_with_headers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    req = tmp_path / "req.json"
    req.write_text(json.dumps(text_request("hi")))
    policy = str(ROOT / "policies/examples/canary.yaml")
    args = ["policy", "explain", policy, "--request", f"@{req}", "--json"]
    assert main([*args, "--header", "x-canary=1"]) == 0
    canary = json.loads(capsys.readouterr().out)
    assert (canary["rule"], canary["version"]) == ("canary-testers", "2")
    assert canary["version_labels"] == ["canary"]
    assert canary["fallback"] == ["text-embed@1/local"]
    assert main(args) == 0
    stable = json.loads(capsys.readouterr().out)
    assert (stable["rule"], stable["version"]) == ("text", "1")
    assert stable["skipped"] == [{"route": "canary-testers", "why": "needs header x-canary: 1"}]
    assert stable["cache"]["keys"] != canary["cache"]["keys"]  # the version is in the key


def test_explain_is_sticky_and_matches_the_assignment(capsys: pytest.CaptureFixture[str]) -> None:
    policy = str(ROOT / "policies/examples/shadow.yaml")
    arms = set()
    for _ in range(3):
        assert (
            main(
                [
                    "policy",
                    "explain",
                    policy,
                    "--request",
                    json.dumps(text_request(unit="u1")),
                    "--json",
                ]
            )
            == 0
        )
        e = json.loads(capsys.readouterr().out)
        arms.add((e["assignment"]["arm"], e["assignment"]["bucket"], e["shadow"]))
    assert len(arms) == 1


def test_explain_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    policy = str(ROOT / "policies/examples/ab.yaml")
    assert main(["policy", "explain", policy, "--request", "{not json"]) == 2
    no_route = json.dumps({"inputs": [{"user": "u1"}], "task": "recommend"})
    assert main(["policy", "explain", policy, "--request", no_route]) == 2
    assert "no route" in capsys.readouterr().err
    wrong_type = json.dumps({"inputs": [{"text": 5}]})
    assert main(["policy", "explain", policy, "--request", wrong_type]) == 2
    assert "inputs[0].text: Input should be a valid string" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse: a usage error, exit 2
        main(["policy", "explain", policy, "--request", "{}", "--header", "nokey"])
    assert usage.value.code == 2 and "expected NAME=VALUE" in capsys.readouterr().err
    bad = str(FIXTURES / "invalid/unknown_key.yaml")
    assert main(["policy", "explain", bad, "--request", "{}"]) == 1
    assert "routes[0].timout_ms: unknown key" in capsys.readouterr().err
