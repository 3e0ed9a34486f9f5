"""The OpenAPI document tells the truth: schemathesis runs every check against a live gateway.

One gateway on fake models serves on loopback. For every operation of the document the app
builds, schemathesis sends its coverage cases (each boundary and each rule broken once) and
fuzzed requests, valid and invalid, from a fixed seed, then chains of calls; every built-in
check runs on every answer: no server error; only documented statuses, content types,
headers and bodies; schema-valid requests accepted, schema-invalid ones refused; 405 with
Allow for undocumented methods. No operation is left out. A second gateway with keys shows
that 401 and 403 come exactly where the document says.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from pydantic import ValidationError
from schemathesis.config import SchemathesisConfig

from prism.gateway.app import create_app
from prism.gateway.openapi import live_openapi
from prism.gateway.schema import InferRequest
from prism.gateway.settings import Settings
from tests.upstream import UvicornThread

# One catch-all route to a model that takes every modality, so that a schema-valid request
# meets no policy refusal; an experiment, so that feedback and /admin/experiments have one.
POLICY = """
version: 1
models:
  fake:
    modalities: [text, image, user]
    versions:
      "1": {backend: local, kind: fake, dim: 8}
      "2": {backend: local, kind: fake, dim: 8, seed: 7}
    labels: {stable: "1"}
routes:
  - name: everything
    match: {}
    model: fake
    version: stable
experiments:
  fake-v2:
    route: everything
    arms: {control: {version: "1", weight: 50}, treatment: {version: "2", weight: 50}}
"""

#: what schemathesis takes as accepting a schema-valid request (its default)
VALID_DATA_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]

CONFIG: dict[str, Any] = {
    "seed": 20261204,
    # bounded (the run takes well under a minute on two cores), and no example database, so
    # every run sends the same requests
    "generation": {"max-examples": 10, "database": "none"},
    # names the gateway knows, drawn half the time, so that answers past the 404 are checked
    # too (metadata, configs, readiness, experiment reports). Not for the inference operations
    # (KServe infer; /v1/embeddings names its model in the body): with a known model their
    # bodies meet the checks no schema can say (a tensor's shape against its data, the model's
    # width for 'dimensions'), answered 400 with no wire model behind them to tell such a 400
    # from a schema that is too loose. There, the body schemas are fuzzed against a 404.
    "dictionaries": {
        "models": {"values": ["fake", "fake@stable", "fake@2"]},
        "versions": {"values": ["1", "2", "stable"]},
        "experiments": {"values": ["fake-v2"]},
    },
    "operations": [
        {
            "include-path-regex": (
                r"^/(v1/models|v2/models|admin/experiments)/[^/]+"
                r"(/versions/[^/]+)?(/config|/ready|/resume|/stop)?$"
            ),
            "parameters": {
                "path.model": {"dictionary": "models", "probability": 0.5},
                "path.version": {"dictionary": "versions", "probability": 0.5},
                "path.name": {"dictionary": "experiments", "probability": 0.5},
            },
        },
        {
            # What a JSON Schema cannot say about /v1/infer is refused with 422 by the pipeline,
            # by design: whether the base64 holds an image (or is base64 at all: standard,
            # URL-safe, unpadded or a data: URL), whether an image URL's host is allowed,
            # whether the model serves the task with these parameters. Such a 422 is expected
            # for a schema-valid body; `refused_by_the_pipeline` proves it was not the wire
            # validator's (that would be the schema being looser than the validation).
            "include-name": "POST /v1/infer",
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": [*VALID_DATA_STATUSES, "422"],
                },
            },
        },
    ],
}


def refused_by_the_pipeline(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 422 to a schema-valid ``/v1/infer`` body: the wire model takes the body."""
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if not positive or response.status_code != 422 or case.path != "/v1/infer":
        return None
    try:
        InferRequest.model_validate(case.body)
    except ValidationError as exc:
        raise AssertionError(f"the document takes a body InferRequest refuses: {exc}") from None
    return None


#: the document as the app builds it (it does not depend on settings or policy); the fixture
#: checks that the live gateway serves the same one. Loaded at collection so that every
#: operation is a test of its own (schemathesis' lazy fixture loader fails on pytest 9).
DOCUMENT = live_openapi()
schema = schemathesis.openapi.from_dict(
    copy.deepcopy(DOCUMENT), config=SchemathesisConfig.from_dict(CONFIG)
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    policy = tmp_path_factory.mktemp("conformance") / "policy.yaml"
    policy.write_text(POLICY)
    app = create_app(Settings(policy=policy, policy_watch_s=0, experiments_persist=False))
    server = UvicornThread(app).start()
    served = httpx.get(f"{server.url}/schema/openapi.json").json()
    assert served == DOCUMENT, "the gateway serves another document than the app builds"
    yield server.url
    server.stop()


INFERENCE_KEY, ADMIN_KEY = "inference-key", "admin-key"


@pytest.fixture(scope="module")
def keyed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same gateway with API keys and admin keys configured."""
    policy = tmp_path_factory.mktemp("conformance-keys") / "policy.yaml"
    policy.write_text(POLICY)
    settings = Settings(
        policy=policy,
        policy_watch_s=0,
        experiments_persist=False,
        api_keys=[INFERENCE_KEY],
        admin_keys=[ADMIN_KEY],
    )
    server = UvicornThread(create_app(settings)).start()
    yield server.url
    server.stop()


@schema.parametrize()
def test_operation_keeps_its_contract(case: Any, gateway: str) -> None:
    case.call_and_validate(base_url=gateway, additional_checks=[refused_by_the_pipeline])


def test_sequences_keep_their_contract(gateway: str) -> None:
    """Schemathesis' stateful phase: chains of calls along the links it infers between
    operations (an answer's ids fed to the next request), every check on every step."""
    workflow = schema.as_state_machine()

    class Sequences(workflow):  # type: ignore[misc,valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": gateway}

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            super().validate_response(
                response, case, additional_checks=[refused_by_the_pipeline], **kwargs
            )

    Sequences.run(
        settings=hypothesis.settings(
            max_examples=10,
            stateful_step_count=5,
            derandomize=True,  # the same sequences every run
            database=None,
            deadline=None,
        )
    )


@pytest.mark.parametrize(
    ("key", "refused"),
    [(None, "401"), ("wrong-key", "401"), (INFERENCE_KEY, "403"), (ADMIN_KEY, None)],
)
def test_key_refusals_are_the_documented_ones(
    keyed_gateway: str, key: str | None, refused: str | None
) -> None:
    """Where keys are configured, an operation answers 401 (no key, a wrong one) or 403 (an
    inference key on /admin) exactly where the document says so, as it says (the doors'
    403 for a managed key's scope: tests/access/test_authorisation_matrix.py)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for result in schema.get_all_operations():
        operation = result.ok()
        names = [p.name for p in operation.path_parameters]
        case = operation.Case(path_parameters=dict.fromkeys(names, "x"), headers=headers)
        response = case.call_and_validate(base_url=keyed_gateway)
        documented = refused is not None and refused in operation.definition.raw["responses"]
        if refused == "403":  # inference doors document 403 for scoped managed keys too
            documented = documented and operation.path.startswith("/admin")
        assert (str(response.status_code) == refused) == documented, (
            f"{operation.label} with key {key!r}: {response.status_code}"
        )
