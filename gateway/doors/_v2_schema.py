"""The KServe v2 door's bodies, for the OpenAPI document.

The door reads its bodies by hand (:mod:`backends._tensors`, :mod:`backends._v2`): those
checks are the rule, and this module says the same in JSON Schema. What a schema cannot say
stays in the descriptions: a tensor's ``shape`` must match its ``data``, inputs must agree on
the number of rows, every row needs one non-empty element, images are base64. Triton's binary
extension (an ``Inference-Header-Content-Length`` header, then raw tensor bytes) is described,
not typed: its JSON part is the same document.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import SkipJsonSchema

from prism.backends import Task
from prism.backends._v2 import INPUT_NAMES, OUTPUTS_BY_TASK

_OUTPUT_NAMES = sorted({name for names in OUTPUTS_BY_TASK.values() for name in names})

_INPUT_TENSOR: dict[str, Any] = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"enum": list(INPUT_NAMES)},
        "datatype": {"const": "BYTES"},
        "shape": {
            "description": "[n] or [n, 1]; history also [n, h] (one id per column)",
            "type": "array",
            "minItems": 1,
            "maxItems": 2,
            "items": {"type": "integer", "minimum": 0},
        },
        "data": {
            "description": "n rows (flat or nested, row-major) of strings: text, base64 "
            "images, user ids, history as a JSON array of ids; '' where a row has none",
            "type": "array",
            "items": {"type": ["string", "array"]},
        },
        "parameters": {
            "type": ["object", "null"],
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
    },
    # JSON data, or binary data after the JSON (Triton's extension)
    "anyOf": [
        {"required": ["data"]},
        {
            "required": ["parameters"],
            "properties": {"parameters": {"type": "object", "required": ["binary_data_size"]}},
        },
    ],
}

_OUTPUT_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"enum": _OUTPUT_NAMES},
        "parameters": {
            "type": ["object", "null"],
            "properties": {"binary_data": {"type": "boolean"}},
        },
    },
}

#: ``POST /v2/models/{m}[/versions/{v}]/infer``
INFER_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "description": "With an Inference-Header-Content-Length header, this JSON is followed by "
    "the raw bytes of the tensors whose parameters give a binary_data_size",
    "properties": {
        "id": {"description": "echoed in the answer when it is a string"},
        "inputs": {"type": "array", "minItems": 1, "items": _INPUT_TENSOR},
        "outputs": {
            "description": "the outputs to send (default: all of the task's), and which binary",
            "type": ["array", "null"],
            "items": _OUTPUT_REQUEST,
        },
        "parameters": {
            "description": "Prism's control parameters below; other keys go to the model",
            "type": ["object", "null"],
            "properties": {
                "task": {"enum": [t.value for t in Task]},
                "unit": {"type": ["string", "null"], "description": "experiment unit"},
                "cache": {"enum": ["use", "bypass", "refresh"]},
                "binary_data_output": {"type": "boolean"},
                "labels": {
                    "description": "classify: a list, or a JSON array or comma list in a string",
                    "type": ["array", "string"],
                    "items": {"type": "string"},
                },
                "top_k": {
                    "anyOf": [
                        {"type": "integer"},
                        {"type": "string", "pattern": r"^\s*[+-]?[0-9]{1,18}\s*$"},
                    ]
                },
            },
        },
    },
}


class V2Tensor(BaseModel):
    """One output tensor: ``data`` in JSON, or ``parameters.binary_data_size`` bytes after it."""

    name: str
    datatype: Literal["BYTES", "FP32"]
    shape: list[int]
    data: list[Any] | SkipJsonSchema[None] = None
    parameters: dict[str, int] | SkipJsonSchema[None] = None


class V2InferResponse(BaseModel):
    """An inference answer (its JSON part when outputs are binary)."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str
    outputs: list[V2Tensor]
    id: str | SkipJsonSchema[None] = None


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


__all__ = ["INFER_REQUEST", "V2InferResponse", "V2ModelReady", "V2Ready", "V2Tensor"]
