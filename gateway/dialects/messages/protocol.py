"""The Anthropic Messages request, checked strictly (as gateway/request_schema.py checks
OpenAI's): a wrong field is the client's 400 naming it, before any model is called."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Block(BaseModel):
    # Fields Anthropic adds later (cache_control, citations) are accepted and not used.
    model_config = ConfigDict(extra="allow", strict=True)


class TextBlock(_Block):
    type: Literal["text"]
    text: str


class ImageSource(_Block):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _has_its_fields(self) -> ImageSource:
        needed = ("media_type", "data") if self.type == "base64" else ("url",)
        for name in needed:
            if getattr(self, name) is None:
                raise ValueError(f"an image source of type {self.type!r} needs '{name}'")
        return self


class ImageBlock(_Block):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] | None = (
        None
    )
    is_error: bool | None = None


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")
]


class MessageParam(_Block):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class ToolParam(_Block):
    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(_Block):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, min_length=1)
    disable_parallel_tool_use: bool | None = None


class Metadata(_Block):
    user_id: str | None = None


class OutputFormat(_Block):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Block):
    format: OutputFormat | None = None
    effort: str | None = None  # a reasoning model's setting: accepted, not used


class MessagesRequest(_Block):
    model: str = Field(min_length=1)
    max_tokens: int = Field(gt=0)  # required, as Anthropic requires it
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    stream: bool | None = False
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None  # structured outputs: `format` a JSON schema


class CountTokensRequest(_Block):
    """What /v1/messages/count_tokens takes: a message request without `max_tokens`."""

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
