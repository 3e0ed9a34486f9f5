"""The policy file's JSON Schema, generated from the pydantic models (never edited by hand).

``policies/schema.json`` is checked in so editors validate policy files as they are typed
(``# yaml-language-server: $schema=../policies/schema.json``); ``prism policy schema`` writes
it and a test fails when the checked-in copy differs from what the models generate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._document import PolicyDocument

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "policies" / "schema.json"
SCHEMA_ID = "https://prism.dev/schemas/policy-v1.json"


def policy_json_schema() -> dict[str, Any]:
    schema = PolicyDocument.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Prism policy",
        "description": "Models, versions, labels, routes and experiments of a Prism gateway.",
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }


def render_schema() -> str:
    """The exact text of ``policies/schema.json`` (sorted keys, stable across runs)."""
    return json.dumps(policy_json_schema(), indent=2, sort_keys=True) + "\n"


def write_schema(path: Path = SCHEMA_PATH) -> bool:
    """Write the schema; True when the file changed."""
    text = render_schema()
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True
