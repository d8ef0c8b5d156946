"""The example policy's cascade and EAD routes on the REAL demo models decide per prompt.

On a fixed set of short questions, the cascade (SmolLM2 first, Gemma when SmolLM2's mean token
logprob is under -0.5) escalates on some and not on others, and EAD (threshold 1.35 on the
top-5 entropy) hands some answers to the large model and not others: the thresholds in
`policies/example.yaml` sit inside the real models' ranges, not beyond them. `pytest -s` prints
which prompts did what."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.support.example_policy import LARGE, SMALL, example_policy_text
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration

PROMPTS = (
    "What is the capital of France?",
    "What is 12 + 7?",
    "How many minutes are in 3 hours?",
    "What is the capital of Australia?",
    "Convert 5 km to metres.",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water at sea level?",
    "What is 17 times 23?",
    "Name the largest planet in the solar system.",
    "What is the square root of 144?",
    "Which ocean is the largest?",
    "What year did the Second World War end?",
)


@pytest.fixture(scope="module")
def client(
    real_vllm_servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    work = tmp_path_factory.mktemp("real-models")
    policy = work / "policy.yaml"
    policy.write_text(example_policy_text(real_vllm_servers[SMALL], real_vllm_servers[LARGE]))
    gw = GatewayProcess(policy, work).start()
    try:
        yield openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    finally:
        gw.stop()


def steps(client: openai.OpenAI, route: str, prompt: str) -> tuple[list[str], str]:
    raw = client.chat.completions.with_raw_response.create(
        model=route,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=24,
        temperature=0,
    )
    text = raw.parse().choices[0].message.content or ""
    assert text.strip(), (route, prompt)
    return raw.headers["x-routegate-cascade-steps"].split(","), text


def test_the_cascade_escalates_on_some_prompts_and_not_others(client: openai.OpenAI) -> None:
    escalated = []
    for prompt in PROMPTS:
        models, text = steps(client, "cascade", prompt)
        assert models in ([SMALL], [SMALL, LARGE]), models
        print(f"cascade {'escalated' if len(models) == 2 else 'kept     '} {prompt!r}: {text!r}")
        if len(models) == 2:
            escalated.append(prompt)
    assert 0 < len(escalated) < len(PROMPTS), escalated


def test_ead_hands_some_answers_to_the_large_model(client: openai.OpenAI) -> None:
    switched = []
    for prompt in PROMPTS:
        models, text = steps(client, "ead", prompt)
        print(f"ead {'+'.join(models):27} {prompt!r}: {text!r}")
        if LARGE in models:
            switched.append(prompt)
    assert 0 < len(switched) < len(PROMPTS), switched
