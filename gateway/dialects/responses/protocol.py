"""The OpenAI Responses request (its stateless subset), checked strictly: a wrong field is
the client's 400 naming it, before any model is called."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator


class _Item(BaseModel):
    # Fields OpenAI adds later are accepted and not used.
    model_config = ConfigDict(extra="allow", strict=True)


class InputText(_Item):
    type: Literal["input_text"]
    text: str


class OutputText(_Item):
    type: Literal["output_text"]
    text: str


class InputImage(_Item):
    type: Literal["input_image"]
    image_url: str | None = None
    file_data: str | None = None  # a data URL
    detail: str | None = None

    @model_validator(mode="after")
    def _has_a_source(self) -> InputImage:
        if self.image_url is None and self.file_data is None:
            raise ValueError("an input_image needs 'image_url' or 'file_data'")
        return self


Part = Annotated[InputText | OutputText | InputImage, Field(discriminator="type")]


class MessageItem(_Item):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[Part]


class FunctionCallItem(_Item):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(_Item):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[Part]


def _item_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type") or "message")
    return str(getattr(value, "type", "message"))


# A message item may leave out its `type`.
Item = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_kind),
]


class FunctionTool(_Item):
    type: Literal["function"]  # the hosted tools (web_search, file_search, ...) are OpenAI's
    # Checked after `type`, so that another tool's 400 names its type, not a missing name.
    name: str | None = Field(default=None, min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _has_a_name(self) -> FunctionTool:
        if self.name is None:
            raise ValueError("a function tool needs 'name'")
        return self


class FunctionChoice(_Item):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormat(_Item):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_has_its_fields(self) -> TextFormat:
        if self.type == "json_schema" and (self.schema_ is None or not self.name):
            raise ValueError("a json_schema format needs 'name' and 'schema'")
        return self


class TextConfig(_Item):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(_Item):
    model: str = Field(min_length=1)
    input: str | list[Item]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    stream: bool | None = False
    store: bool | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None  # a reasoning model's settings: accepted, not used
