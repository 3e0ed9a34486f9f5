"""What the OpenAPI document says beyond what Litestar infers from a handler's signature.

Litestar documents a handler's success answer and, when it has parameters, a 400 in Litestar's
own ``{"status_code", "detail"}`` shape, which Prism never sends: each door writes its errors
its own way. So every handler states the statuses it can answer with :func:`documented`, in
its door's :class:`ErrorFormat`:

- ``PROBLEM``: RFC 9457 problem documents (``application/problem+json``), the native door and
  ``/admin``;
- ``OPENAI``: OpenAI's ``{"error": {"message", "type", "param", "code"}}``;
- ``V2``: the Open Inference Protocol's ``{"error": "<message>"}``.

``ResponseSpec`` cannot carry response headers (``Retry-After``, ``WWW-Authenticate``) nor a
request body for handlers that read their body themselves, so :func:`documented` also builds
the handler's ``operation_class``, which adds them and drops Litestar's own error answers.

:class:`WireSchemaPlugin` documents pydantic models with pydantic's own JSON Schema (the
validator's view: ``additionalProperties: false`` for ``extra="forbid"``, exclusive bounds,
``maxItems``, model-level ``json_schema_extra`` such as ``oneOf``), where Litestar's generic
conversion would drop those rules.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, TypedDict

from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema, SkipJsonSchema

from prism import backends
from prism.backends import PrismError

from ..errors import PROBLEM_JSON

if typing.TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator

JSON = "application/json"
_REF = "#/components/schemas/{model}"

# --- error bodies, one per door ---------------------------------------------------------------

#: every ``code`` of the PrismError tree
_CODES = sorted(
    {
        error.code
        for name in backends.__all__
        if isinstance(error := getattr(backends, name), type) and issubclass(error, PrismError)
    }
)


class ProblemField(BaseModel):
    """One problem with one field of the request."""

    path: str = Field(description="the field, e.g. inputs[2].image.base64")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document. Extension members may follow the standard ones: `model`
    and `version` (which was not found), `issues` and `running_digest` (a refused policy)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="https://prism.dev/problems/<code with dashes>")
    title: str
    status: int = Field(description="the HTTP status")
    detail: str = Field(description="what went wrong, for people")
    code: str = Field(description=f"stable machine-readable reason: {', '.join(_CODES)}")
    instance: str | SkipJsonSchema[None] = Field(None, description="the request's path")
    errors: list[ProblemField] | SkipJsonSchema[None] = Field(
        None, description="every field at fault (present when the request's fields are)"
    )


class OpenAIErrorDetail(BaseModel):
    message: str
    type: Literal["invalid_request_error", "authentication_error", "server_error"]
    param: str | None = Field(description="the request field at fault")
    code: str | None = Field(description="Prism's problem code (see Problem.code)")


class OpenAIError(BaseModel):
    """An error in the shape OpenAI's API and clients use."""

    error: OpenAIErrorDetail


class V2Error(BaseModel):
    """An error as the Open Inference Protocol (KServe v2, Triton) writes it."""

    error: str


@dataclass(frozen=True)
class ErrorFormat:
    """How one door writes an error: its media type, body, and its words for a status."""

    media_type: str
    body: type[BaseModel]
    #: descriptions that differ from :data:`ERROR_STATUSES`' for this door
    wording: Mapping[int, str] = field(default_factory=dict)

    def spec(self, status: int, description: str | None = None) -> ResponseSpec:
        return ResponseSpec(
            data_container=self.body,
            generate_examples=False,
            description=description or self.wording.get(status) or ERROR_STATUSES[status],
            media_type=self.media_type,
        )


#: what each error status means, whichever door answers it
ERROR_STATUSES: dict[int, str] = {
    400: "Malformed request: the body is empty, not JSON or nested too deeply, or a "
    "parameter is missing",
    401: "No API key, a wrong one, a revoked or an expired one (only when keys are on); "
    "send `Authorization: Bearer <key>` or `x-api-key: <key>`",
    403: "The key may not do this: a key that is not an admin key on an admin endpoint, or a "
    "managed key asking for a model or task outside its scope (the detail names the scope)",
    404: "Unknown model or version (the detail names it)",
    409: "The answer has its score already (one per answer)",
    413: "The body (inflated, when it is gzip or deflate) is larger than PRISM_MAX_BODY_BYTES",
    415: "A Content-Encoding other than gzip or deflate",
    429: "The key is over one of its limits (rpm, rpd, max_concurrent): retry after "
    "Retry-After; RateLimit-Policy and RateLimit say which limit",
    422: "The body parsed but breaks a rule: a field (listed in `errors`), no route serves "
    "these inputs, the model does not take them or serve the task, an image that cannot be "
    "decoded or a URL that is not allowed, more inputs than PRISM_MAX_INPUTS",
    500: "An unexpected error (a bug): the detail points to the logs; no stack trace is sent",
    502: "The model failed after every retry and fallback",
    503: "Overloaded, not ready, or every target's circuit is open: retry after Retry-After",
    504: "The request's deadline passed before a model answered",
}

PROBLEM = ErrorFormat(PROBLEM_JSON, Problem)
OPENAI = ErrorFormat(
    JSON,
    OpenAIError,
    {
        400: "Malformed or invalid request (OpenAI's API never answers 422): the body is not "
        "a JSON object, a field is missing or wrong (named in `param`), 'dimensions' is not "
        "the model's width, more inputs than PRISM_MAX_INPUTS",
        404: "Unknown model or version, or a model that does not embed",
    },
)
V2 = ErrorFormat(
    JSON,
    V2Error,
    {
        400: "Malformed or invalid request (the protocol knows no 422): bad JSON, tensors "
        "that break the protocol or Prism's conventions (see the request body), a bad "
        "parameter, inputs the model does not take",
    },
)

# --- headers every error of a status carries ------------------------------------------------


def header(description: str, *, required: bool = True, integer: bool = False) -> OpenAPIHeader:
    kind = OpenAPIType.INTEGER if integer else OpenAPIType.STRING
    return OpenAPIHeader(schema=Schema(type=kind), description=description, required=required)


RETRY_AFTER = header("seconds to wait before trying again", integer=True)
ERROR_HEADERS: dict[int, dict[str, OpenAPIHeader]] = {
    401: {"WWW-Authenticate": header("`Bearer`: the scheme keys are sent in")},
    415: {"Accept-Encoding": header("the content codings Prism reads: gzip, deflate")},
    429: {
        "Retry-After": RETRY_AFTER,
        "RateLimit-Policy": header(
            'the key\'s limits (IETF draft), e.g. `"rpm";q=20;w=60, "rpd";q=1000;w=86400`'
        ),
        "RateLimit": header('the limit reached and when it resets, e.g. `"rpm";r=0;t=12`'),
    },
    503: {"Retry-After": RETRY_AFTER},
    504: {
        "Retry-After": header(
            "when the deadline passed under load (a queue, a busy model): seconds to wait",
            required=False,
            integer=True,
        )
    },
}


#: a body of raw bytes
BINARY = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)


@dataclass(frozen=True)
class Answer:
    """A response that is not an error of the door's format (a 503 readiness report, say)."""

    description: str
    body: Any
    media_type: str = JSON
    headers: Mapping[str, OpenAPIHeader] = field(default_factory=dict)
    #: further media types the same status may come in (a binary body beside the JSON one)
    alternatives: Mapping[str, Schema] = field(default_factory=dict)


class HandlerDocs(TypedDict):
    """Keyword arguments of a route decorator (``@post(..., **documented(...))``)."""

    responses: dict[int, ResponseSpec]
    operation_class: type[Operation]


def documented(
    errors: ErrorFormat,
    *statuses: int,
    answers: Mapping[int, Answer] | None = None,
    body: Mapping[str, Any] | None = None,
    wording: Mapping[int, str] | None = None,
) -> HandlerDocs:
    """A handler's responses besides success: ``statuses`` and 500 as ``errors`` writes them
    (with the headers of :data:`ERROR_HEADERS`), and ``answers``. ``body`` is the JSON Schema
    of a body the handler parses itself (Litestar documents only a ``data`` parameter's);
    ``wording`` says what a status means here when the door's words are too general."""
    answers = dict(answers or {})
    statuses = tuple(sorted({*statuses, 500}))
    responses = {s: errors.spec(s, (wording or {}).get(s)) for s in statuses}
    headers = {str(s): ERROR_HEADERS[s] for s in statuses if s in ERROR_HEADERS}
    alternatives: dict[str, dict[str, OpenAPIMediaType]] = {}
    for status, answer in answers.items():
        responses[status] = ResponseSpec(
            data_container=answer.body,
            generate_examples=False,
            description=answer.description,
            media_type=answer.media_type,
        )
        if answer.headers:
            headers[str(status)] = dict(answer.headers)
        if answer.alternatives:
            alternatives[str(status)] = {
                media: OpenAPIMediaType(schema=schema)
                for media, schema in answer.alternatives.items()
            }
    request_body = (
        RequestBody(
            content={JSON: OpenAPIMediaType(schema=Schema(**_attributes(dict(body))))},
            required=True,
        )
        if body is not None
        else None
    )
    keep = frozenset(str(s) for s in responses)

    @dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            # Litestar's success answer stays; its own error answers are not what Prism sends
            found = self.responses or {}
            self.responses = {k: r for k, r in found.items() if k in keep or k.startswith("2")}
            for status, extra in headers.items():
                response = self.responses.get(status)
                if isinstance(response, OpenAPIResponse):
                    response.headers = {**(response.headers or {}), **extra}
            for status, media in alternatives.items():
                response = self.responses.get(status)
                if isinstance(response, OpenAPIResponse):
                    response.content = {**(response.content or {}), **media}
            if request_body is not None:
                self.request_body = request_body

    return {"responses": responses, "operation_class": DocumentedOperation}


# --- pydantic models documented by pydantic ---------------------------------------------------


def _attributes(doc: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema object's top-level keys as :class:`Schema` attribute names."""
    aliases = Schema.field_aliases()
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = aliases.get(key, key)
        if not hasattr(Schema, name):
            raise ValueError(f"JSON Schema keyword {key!r} has no place in an OpenAPI schema")
        out[name] = OpenAPIType(value) if name == "type" and isinstance(value, str) else value
    return out


def _named_types(model: type[BaseModel]) -> dict[str, type]:
    """Every model and enum a model's fields refer to, by name (pydantic's ``$defs`` keys)."""
    found: dict[str, type] = {}

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel | Enum):
            if found.setdefault(annotation.__name__, annotation) is not annotation:
                raise ValueError(f"two types named {annotation.__name__} in {model.__name__}")
            if issubclass(annotation, BaseModel):
                for f in annotation.model_fields.values():
                    visit(f.annotation)
        for arg in typing.get_args(annotation):
            visit(arg)

    for f in model.model_fields.values():
        visit(f.annotation)
    return found


class _JsonSchema(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # "title": "Latency Budget Ms" says nothing the property name does not


class WireSchemaPlugin(OpenAPISchemaPlugin):
    """Documents every pydantic model with ``model_json_schema()``, nested models and enums as
    components of their own."""

    @staticmethod
    def is_plugin_supported_type(value: Any) -> bool:
        return isinstance(value, type) and issubclass(value, BaseModel)

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        model: type[BaseModel] = field_definition.annotation
        doc = model.model_json_schema(ref_template=_REF, schema_generator=_JsonSchema)
        nested = _named_types(model)
        for name in doc.pop("$defs", {}):
            # registered under the same name pydantic's $ref uses
            schema_creator.for_field_definition(FieldDefinition.from_annotation(nested[name]))
        schema = schema_creator.schema_registry.get_schema_for_field_definition(field_definition)
        for name, value in _attributes(doc).items():
            setattr(schema, name, value)
        return schema


__all__ = [
    "BINARY",
    "OPENAI",
    "PROBLEM",
    "RETRY_AFTER",
    "V2",
    "Answer",
    "ErrorFormat",
    "HandlerDocs",
    "Problem",
    "WireSchemaPlugin",
    "documented",
    "header",
]
