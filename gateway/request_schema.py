"""Checks of the client's request body. The raw dict is what goes upstream; these models only
reject what is wrong, naming the field, before any model is called.

The OpenAI fields the gateway knows are typed as the OpenAI API reference has them (strictly:
"3" is not an integer, "true" not a boolean): a wrong type is the client's 400 here, not an
upstream's failure that would move the route on to its next model. Fields the gateway does not
know pass through untouched (vLLM's own sampling parameters, newer OpenAI fields).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails

from gateway.errors import ApiError


class _Open(BaseModel):
    # Unknown fields pass through to the upstream untouched.
    model_config = ConfigDict(extra="allow", strict=True)


def _missing(model: str, field: str) -> ValidationError:
    """A 'Field required' error at `field` of the model being validated."""
    return ValidationError.from_exception_data(
        model, [InitErrorDetails(type="missing", loc=(field,), input=None)]
    )


class StreamOptions(_Open):
    include_usage: bool | None = None


class FunctionDef(_Open):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    type: str = "function"  # "function"; newer kinds ("custom") pass through
    function: FunctionDef | None = None

    @model_validator(mode="after")
    def _function_tool_has_a_function(self) -> Tool:
        if self.type == "function" and self.function is None:
            raise _missing("Tool", "function")
        return self


class FunctionName(_Open):
    name: str = Field(min_length=1)


class NamedToolChoice(_Open):
    type: str
    function: FunctionName | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: dict[str, Any] | None = None


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Any] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


Penalty = Annotated[float, Field(ge=-2, le=2)]
Bias = Annotated[float, Field(ge=-100, le=100)]


class _Common(_Open):
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    # Several answers to one prompt: vLLM generates them in one call and its usage counts them
    # all; routes that judge one answer (cascades, EAD) refuse n > 1 with a 400 naming `n`.
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Bias] | None = None
    seed: int | None = None
    user: str | None = None


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = None  # deprecated by OpenAI, still accepted
    function_call: Literal["none", "auto"] | FunctionName | None = None
    response_format: ResponseFormat | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    modalities: list[str] | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None


NonEmpty = Field(min_length=1)


class CompletionRequest(_Common):
    prompt: (
        Annotated[str, Field()]
        | Annotated[list[str], NonEmpty]
        | Annotated[list[int], NonEmpty]
        | Annotated[list[Annotated[list[int], NonEmpty]], NonEmpty]
    )
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=20)


# OpenAI's limits on one embeddings request: inputs per call, and each one non-empty.
MAX_EMBEDDING_INPUTS = 2048
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], NonEmpty]


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], NonEmpty]
        | TokenIds
        | Annotated[list[TokenIds], NonEmpty]
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, gt=0)
    user: str | None = None
    # Embeddings are one whole answer: a client asking for a stream is told so, not ignored.
    stream: Literal[False] | None = None

    @model_validator(mode="after")
    def _not_too_many_inputs(self) -> EmbeddingRequest:
        # Checked here, not per union member: a member that fails on an item would be the
        # error reported, not the length.
        inputs = self.input
        several = isinstance(inputs, list) and not isinstance(inputs[0], int)
        if several and len(inputs) > MAX_EMBEDDING_INPUTS:
            limits = {"field_type": "List", "max_length": MAX_EMBEDDING_INPUTS}
            error = InitErrorDetails(
                type="too_long",
                loc=("input",),
                input=inputs,
                ctx={**limits, "actual_length": len(inputs)},
            )
            raise ValidationError.from_exception_data("EmbeddingRequest", [error])
        return self


M = TypeVar("M", bound=BaseModel)
_SCHEMAS: dict[str, type[_Open]] = {
    "chat": ChatRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
}
_MODEL_TAGS = frozenset(
    cls.__name__ for cls in (NamedToolChoice, FunctionName, ResponseFormat, StreamOptions)
)


def _is_tag(part: str) -> bool:
    plain = {"str", "int", "float", "bool"}
    return "[" in part or part in plain or part.startswith("constrained-") or part in _MODEL_TAGS


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_request(raw: bytes, kind: str) -> dict[str, Any]:
    """The body as a dict, or ApiError 400 naming the first bad field."""
    body = _json_object(raw)
    _validated(body, _SCHEMAS[kind])
    return body


def parse_body(raw: bytes, schema: type[M]) -> M:
    """Another endpoint's body as its `schema`, with the same 400s as the OpenAI endpoints."""
    return _validated(_json_object(raw), schema)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object", code="invalid_json")
    return body


def _validated(body: dict[str, Any], schema: type[M]) -> M:
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        loc, msg = _most_telling(exc)
        param = _param(loc)
        if not param:  # a rule across fields (a model validator) names none
            raise ApiError(400, msg, code="invalid_value") from None
        raise ApiError(
            400, f"Invalid field '{param}': {msg}", code="invalid_value", param=param
        ) from None


def _most_telling(exc: ValidationError) -> tuple[tuple[Any, ...], str]:
    """The error to report: a union reports one per member, and the member that got furthest
    (deepest location, a value rather than a type mismatch) says best what is wrong."""
    errors = []
    for i, err in enumerate(exc.errors(include_url=False)):
        # Drop union tags pydantic adds ("str", "list[...]", a model's name) so the param is a
        # real field path.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _is_tag(p)))
        mismatch = err["type"].endswith("_type") or err["type"] == "literal_error"
        errors.append((-len(loc), mismatch, i, loc, err["msg"]))
    _, _, _, loc, msg = min(errors)
    return loc, msg
