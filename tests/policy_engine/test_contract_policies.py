"""Tensor contracts in policy files: refused with file:line when they contradict themselves,
and ``prism policy explain`` shows the contract a request will use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prism.gateway.cli import main
from prism.gateway.policy import PolicyLoadError, parse_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "policies/examples/remote-contracts.yaml")


def version(body: str) -> str:
    return f"""version: 1
models:
  m:
    versions:
      "1":
        backend: kserve
        url: http://triton:8000
        remote_model: m
{body}
routes:
  - name: text
    match: {{modality: [text]}}
    model: m
"""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "        tensors:\n          inputs: {text: TEXT}\n          outputs: {}",
            "p.yaml:9: models.m.versions.1.tensors: name at least one output (embedding, label or item)",
        ),
        (
            "        tensors:\n          inputs: {text: TEXT}\n"
            "          outputs: {embedding: {name: h, pooling: mean}}",
            "p.yaml:9: models.m.versions.1.tensors: mean pooling needs the attention mask of a "
            "tokenized text input",
        ),
        (
            "        tensors:\n          inputs: {text: TEXT}\n          outputs: {label: L}",
            "p.yaml:9: models.m.versions.1.tensors: label and item tensors need a score tensor "
            "beside them",
        ),
    ],
)
def test_a_contract_that_contradicts_itself_is_refused_with_its_line(
    body: str, message: str
) -> None:
    with pytest.raises(PolicyLoadError) as err:
        parse_policy(version(body), "p.yaml")
    assert str(err.value.issues[0]) == message


def test_protocol_v1_needs_a_contract() -> None:
    with pytest.raises(PolicyLoadError) as err:
        parse_policy(version("        protocol: v1"), "p.yaml")
    issue = err.value.issues[0]
    assert (issue.file, issue.line) == ("p.yaml", 5)
    assert issue.message == "protocol v1 needs a tensors: contract (V1 has no Prism names)"


def test_explain_shows_the_contract_a_request_will_use(
    capsys: pytest.CaptureFixture[str],
) -> None:
    request = json.dumps({"model": "minilm", "inputs": [{"text": "hi"}]})
    assert main(["policy", "explain", EXAMPLE, "--request", request, "--json"]) == 0
    contract = json.loads(capsys.readouterr().out)["contract"]
    assert contract["protocol"] == "kserve v2 http" and contract["remote_model"] == "bert"
    names = [t["name"] for t in contract["inputs"]["text"]]
    assert names == ["input_ids", "attention_mask", "token_type_ids"]
    assert {t["datatype"] for t in contract["inputs"]["text"]} == {"INT64"}
    assert contract["outputs"]["embedding"]["name"] == "last_hidden_state"
    assert any("mean pooling" in note for note in contract["processing"])

    assert (
        main(["policy", "explain", EXAMPLE, "--request", json.dumps({"inputs": [{"text": "x"}]})])
        == 0
    )
    out = capsys.readouterr().out
    assert "contract:   kserve v2 http, model embedder" in out
    assert "  in  text      -> TEXT BYTES [-1]" in out
    assert "  out embedding <- EMBEDDING FP32 [-1, -1]" in out


def test_explain_names_grpc_and_tf_serving(capsys: pytest.CaptureFixture[str]) -> None:
    for wanted, protocol in (("2", "kserve v2 grpc"), ("3", "tfserving rest (instances)")):
        request = json.dumps({"version": wanted, "inputs": [{"text": "hi"}]})
        assert main(["policy", "explain", EXAMPLE, "--request", request, "--json"]) == 0
        contract = json.loads(capsys.readouterr().out)["contract"]
        assert contract["protocol"] == protocol
    # declared datatypes and shapes are what the plan shows
    request = json.dumps({"version": "2", "inputs": [{"text": "hi"}]})
    main(["policy", "explain", EXAMPLE, "--request", request, "--json"])
    contract = json.loads(capsys.readouterr().out)["contract"]
    assert contract["inputs"]["text"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1, 1]}]


def test_a_labels_file_edited_in_place_changes_the_versions_fingerprint(tmp_path: Path) -> None:
    from prism.backends import KServeSpec, output_fingerprint

    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    spec = KServeSpec.model_validate(
        {
            "backend": "kserve",
            "url": "http://triton:8000",
            "remote_model": "m",
            "tensors": {
                "inputs": {"text": "TEXT"},
                "outputs": {"label": {"name": "logits", "labels_file": "labels.txt"}},
            },
        }
    )
    before = output_fingerprint(spec, tmp_path)
    (tmp_path / "labels.txt").write_text("dog\ncat\n")  # same names, other class order
    assert output_fingerprint(spec, tmp_path) != before  # cached answers are not reused
