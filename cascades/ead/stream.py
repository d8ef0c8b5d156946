"""An EAD answer in OpenAI's shapes: the whole response, or the stream of its text."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from cascades.base import Step
from cascades.ead.decoder import Decoder
from gateway.backends import openai_shapes as shapes
from gateway.backends.base import Kind


class _Shapes:
    """One answer's id and creation time, on each chunk and on the whole response."""

    def __init__(self, kind: Kind, model: str):
        self.kind = kind
        self.model = model
        self.id = shapes.new_id(kind, "ead")
        self.created = int(time.time())

    def _head(self, obj: str) -> dict[str, Any]:
        return shapes.header(self.id, obj, self.created, self.model)

    def delta(self, text: str, finish: str | None = None, role: bool = False) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": text} if role else {}
            if text and not role:
                delta["content"] = text
            choice = shapes.delta_choice(0, delta, finish)
        else:
            choice = shapes.text_choice(0, text, None, finish)
        return shapes.with_choices(self._head(shapes.chunk_object(self.kind)), [choice])

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return shapes.with_choices(self._head(shapes.chunk_object(self.kind)), [], usage=usage)

    def response(self, text: str, finish: str, usage: dict[str, Any]) -> dict[str, Any]:
        if self.kind == "chat":
            message = {"role": "assistant", "content": text}
            choice = shapes.message_choice(0, message, None, finish)
        else:
            choice = shapes.text_choice(0, text, None, finish)
        head = self._head(shapes.response_object(self.kind))
        return shapes.with_choices(head, [choice], usage=usage)


def response(decoder: Decoder, text: str) -> dict[str, Any]:
    """The whole answer, once the loop has run."""
    return _Shapes(decoder.kind, decoder.c.route_name).response(
        text, decoder.finish, decoder.usage()
    )


class EadStream:
    """An open EAD stream (a `CascadeStream`): the first text is already generated."""

    def __init__(
        self, decoder: Decoder, pieces: AsyncGenerator[str, None], first: str | None, model: str
    ):
        self.model = model
        self.steps: list[Step] = []
        self.detail: dict[str, Any] = {}
        self._decoder = decoder
        self._pieces = pieces
        self._first = first
        self._shapes = _Shapes(decoder.kind, decoder.c.route_name)
        self._closed = False

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        shapes = self._shapes
        try:
            if shapes.kind == "chat":
                yield shapes.delta("", role=True)
            if self._first:
                yield shapes.delta(self._first)
                async for text in self._pieces:
                    yield shapes.delta(text)
            yield shapes.delta("", finish=self._decoder.finish)
            yield shapes.usage_chunk(self._decoder.usage())
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Cancels a call in flight; closing its connection makes vLLM abort the generation.
        await self._pieces.aclose()
        self.steps = self._decoder.steps()
        self.detail = self._decoder.detail()
