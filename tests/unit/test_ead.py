"""EAD's loop over scripted completions (no server): the cases a real model will not produce on
demand. The behaviour over real vLLM servers is in tests/integration/test_ead_vllm.py."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cascades.base import CascadeFailed
from cascades.ead import EadCascade
from gateway.backends.base import Completion, UpstreamCall, Usage
from policies.schema import EadRoute

SURE = {"x": 0.0}  # entropy 0
UNSURE = {"x": math.log(0.5), "y": math.log(0.5)}  # entropy ln 2


class Scripted:
    """A completions backend that answers from a list: (tokens, top logprobs, finish)."""

    def __init__(self, answers: list[tuple[list[str], list[dict[str, float]], str]]):
        self.answers = answers
        self.calls: list[dict[str, Any]] = []

    async def complete(self, call: UpstreamCall) -> Completion:
        self.calls.append(call.body)
        tokens, tops, finish = self.answers[len(self.calls) - 1]
        offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
        body = {
            "choices": [
                {
                    "text": "".join(tokens),
                    "logprobs": {"text_offset": offsets, "top_logprobs": tops},
                    "finish_reason": finish,
                }
            ]
        }
        return Completion(body, Usage(3, len(tokens), True), "scripted")


def ead() -> EadCascade:
    route = EadRoute(kind="ead", small="s", large="l", window=1, threshold=0.5, chunk=3, span=3)
    prices = {m: (lambda p, c, _: 0.0) for m in ("s", "l")}
    return EadCascade("ead", route, prices, timeout_s=5, retries=0)


async def test_stop_split_before_a_hand_over_ends_the_answer() -> None:
    """The stop's first half ends one small call, its second half opens the next, which hands
    over later: the answer ends at the stop, and the large model is never called."""
    small = Scripted(
        [
            (["a", "b", "X"], [SURE, SURE, SURE], "length"),
            (["Y", "c", "d"], [SURE, SURE, UNSURE], "length"),
        ]
    )
    large = Scripted([(["z", "z", "z"], [SURE, SURE, SURE], "stop")])
    body = {"prompt": "p", "max_tokens": 9, "stop": ["XY"]}
    result = await ead().complete("completions", body, {"s": small, "l": large})
    choice = result.body["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == ("ab", "stop")
    assert large.calls == []
    assert result.detail["switches"] == 0

    small.calls.clear()
    stream = await ead().open_stream("completions", body, {"s": small, "l": large})
    chunks = [c async for c in stream]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "ab"


async def test_a_seed_that_is_not_a_number_is_a_client_error() -> None:
    backends = {"s": Scripted([]), "l": Scripted([])}
    with pytest.raises(CascadeFailed) as failed:
        await ead().complete("completions", {"prompt": "p", "seed": "7"}, backends)
    assert (failed.value.error.status, failed.value.error.param) == (400, "seed")


async def test_a_malformed_answer_still_charges_the_calls_made() -> None:
    class NoChoices(Scripted):
        async def complete(self, call: UpstreamCall) -> Completion:
            done = await super().complete(call)
            return Completion({"object": "text_completion"}, done.usage, "scripted")

    small = NoChoices([(["a"], [SURE], "length")])
    with pytest.raises(CascadeFailed) as failed:
        await ead().complete(
            "completions", {"prompt": "p", "max_tokens": 4}, {"s": small, "l": small}
        )
    assert failed.value.error.status == 502
    (step,) = failed.value.steps
    assert (step.model, step.usage.prompt_tokens, step.usage.completion_tokens) == ("s", 3, 1)


async def test_chat_is_rendered_through_the_chat_rendering_capability() -> None:
    """A backend with `render_chat` (ChatRendering) renders the chat, sent without a second BOS;
    one without it gets the plain "Role: content" prompt."""

    class Rendering(Scripted):
        async def render_chat(
            self, messages: list[dict[str, Any]], timeout_s: float, retries: int
        ) -> str | None:
            return "<s>[user] hi [/user]"

    small = Rendering([(["a", "b", "c"], [SURE, SURE, SURE], "stop")])
    plain = Scripted([(["a", "b", "c"], [SURE, SURE, SURE], "stop")])
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}
    result = await ead().complete("chat", body, {"s": small, "l": Scripted([])})
    assert result.body["choices"][0]["message"]["content"] == "abc"
    assert small.calls[0]["prompt"] == "<s>[user] hi [/user]"
    assert small.calls[0]["add_special_tokens"] is False
    await ead().complete("chat", body, {"s": plain, "l": Scripted([])})
    assert plain.calls[0]["prompt"] == "User: hi\n\nAssistant:"
    assert "add_special_tokens" not in plain.calls[0]
