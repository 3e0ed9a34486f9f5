"""With API keys on, both doors ask for them in their own format; probes stay open."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import openai
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.doors.conftest import make_app
from tests.upstream import UvicornThread


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app = make_app(tmp_path_factory.mktemp("keyed"), api_keys=["sk-good"])
    server = UvicornThread(app).start()
    yield server.url
    server.stop()


def test_openai_client_needs_the_key(keyed: str) -> None:
    good = openai.OpenAI(base_url=keyed + "/v1", api_key="sk-good", max_retries=0)
    assert len(good.embeddings.create(model="fake", input="x").data) == 1
    bad = openai.OpenAI(base_url=keyed + "/v1", api_key="sk-bad", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.embeddings.create(model="fake", input="x")
    assert info.value.body["type"] == "authentication_error"  # type: ignore[index]


def test_tritonclient_sends_the_key_as_a_header_and_probes_are_open(keyed: str) -> None:
    tc = triton.InferenceServerClient(keyed.removeprefix("http://"))
    assert tc.is_server_live() and tc.is_server_ready() and tc.is_model_ready("fake")
    tensor = triton.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"x"], dtype=object))
    with pytest.raises(InferenceServerException, match="missing API key"):
        tc.infer("fake", [tensor])
    result = tc.infer("fake", [tensor], headers={"Authorization": "Bearer sk-good"})
    assert result.as_numpy("embedding").shape == (1, 16)
