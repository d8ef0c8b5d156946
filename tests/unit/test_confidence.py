"""Confidence scores of the response-level cascade, read from both OpenAI logprob shapes
(chat and text completions, as vLLM and OpenAI send them)."""

from __future__ import annotations

import math

import pytest

from cascades.confidence import entropy_of_top, read_logprobs, score, should_escalate
from cascades.judge import judge_body, judge_prompt_bound, p_yes
from gateway.backends.base import Completion, Usage
from gateway.tokens import prompt_tokens_upper
from policies.schema import ConfidenceConfig

CHAT_CHOICE = {
    "index": 0,
    "message": {"role": "assistant", "content": "Paris is"},
    "logprobs": {
        "content": [
            {
                "token": "Paris",
                "logprob": -0.1,
                "top_logprobs": [
                    {"token": "Paris", "logprob": -0.1},
                    {"token": "Rome", "logprob": -2.5},
                ],
            },
            {
                "token": " is",
                "logprob": -1.5,
                "top_logprobs": [
                    {"token": " is", "logprob": math.log(0.5)},
                    {"token": " was", "logprob": math.log(0.5)},
                ],
            },
        ]
    },
}

TEXT_CHOICE = {
    "index": 0,
    "text": "Paris is",
    "logprobs": {
        "tokens": ["Paris", " is"],
        "token_logprobs": [-0.1, None],  # vLLM may send null for -inf
        "top_logprobs": [
            {"Paris": -0.1, "Rome": -2.5},
            {" is": math.log(0.5), " was": math.log(0.5)},
        ],
        "text_offset": [0, 5],
    },
}


def test_both_shapes_read_alike() -> None:
    chat, text = read_logprobs("chat", CHAT_CHOICE), read_logprobs("completions", TEXT_CHOICE)
    assert chat.logprobs == [-0.1, -1.5]
    assert text.logprobs == [-0.1, -9999.0]
    assert chat.top == text.top
    assert score("mean_logprob", chat) == pytest.approx(-0.8)
    assert score("min_logprob", chat) == -1.5


def test_entropy_is_of_the_renormalised_top_k() -> None:
    assert entropy_of_top([math.log(0.5), math.log(0.5)]) == pytest.approx(math.log(2))
    # Only 0.2 of the mass is in the top 2: the tail is unknown, so they are renormalised.
    assert entropy_of_top([math.log(0.1), math.log(0.1)]) == pytest.approx(math.log(2))
    assert entropy_of_top([0.0]) == 0.0
    chat = read_logprobs("chat", CHAT_CHOICE)
    expected = (entropy_of_top([-0.1, -2.5]) + math.log(2)) / 2
    assert score("mean_entropy", chat) == pytest.approx(expected)


def test_thresholds_escalate_in_the_right_direction() -> None:
    by_logprob = ConfidenceConfig(method="mean_logprob", threshold=-1.0)
    assert should_escalate(by_logprob, -1.5) and not should_escalate(by_logprob, -0.5)
    by_entropy = ConfidenceConfig(method="mean_entropy", threshold=0.5)  # lower is surer
    assert should_escalate(by_entropy, 0.7) and not should_escalate(by_entropy, 0.3)
    # An answer that came back without logprobs is not trusted.
    assert should_escalate(by_logprob, None)
    assert score("mean_logprob", read_logprobs("chat", {"message": {}})) is None


def test_judge_reads_yes_against_no() -> None:
    def judged(top: list[tuple[str, float]], text: str = "") -> Completion:
        choice = {
            "message": {"role": "assistant", "content": text},
            "logprobs": {
                "content": [
                    {"token": top[0][0], "logprob": top[0][1],
                     "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}
                ]
            } if top else None,
        }  # fmt: skip
        return Completion({"choices": [choice]}, Usage(10, 1, True), "http://judge")

    assert p_yes(judged([(" yes", math.log(0.6)), ("No", math.log(0.2)), ("x", -1)])) == (
        pytest.approx(0.75)
    )
    assert p_yes(judged([("maybe", -0.1)], text="Yes.")) == 1.0  # no yes/no mass: the text
    assert p_yes(judged([], text="no")) == 0.0
    long_answer = "x" * 10_000
    body = judge_body("chat", {"messages": [{"role": "user", "content": "q?"}]}, long_answer, 5)
    assert len(body["messages"][1]["content"]) < 5_000 and body["max_tokens"] == 1


def test_the_judge_reservation_bounds_any_judge_call() -> None:
    # Four-byte characters, far past what the judge is shown: the worst a judge call can send.
    huge = "\U0001f600" * 50_000
    request = {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": huge}]}
    body = judge_body("chat", request, huge, 5)
    assert prompt_tokens_upper(body) <= judge_prompt_bound(5)
