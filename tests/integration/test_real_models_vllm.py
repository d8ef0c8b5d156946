"""The example policy's cascade and EAD routes on the REAL demo models decide per prompt.

On a fixed set of short questions, the cascade (SmolLM2 first, Gemma when SmolLM2's mean token
logprob is under -0.5) escalates on some and not on others, and EAD (threshold 1.35 on the
top-5 entropy) hands some answers to the large model and not others: the thresholds in
`policies/example.yaml` sit inside the real models' ranges, not beyond them. `pytest -s` prints
which prompts did what."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from routers.records import load_records
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
def gateway(
    real_vllm_servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("real-models")
    policy = work / "policy.yaml"
    policy.write_text(example_policy_text(real_vllm_servers[SMALL], real_vllm_servers[LARGE]))
    gw = GatewayProcess(policy, work).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


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


def test_demo_eval_scores_the_real_models_and_writes_records(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    """`routegate demo eval` on a few questions: real answers, some right (random weights get
    none right), every route costed, and records `routers train` can read."""
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "gateway.cli", "demo", "eval", "--base-url", gateway.url + "/v1",
           "--limit", "8", "--models", f"{SMALL},{LARGE}", "--out", str(out)]  # fmt: skip
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "160"}
    )
    assert run.returncode == 0, run.stdout + run.stderr
    print(run.stdout)
    results = orjson.loads((out / "results.json").read_bytes())
    routes, models = results["routes"], results["models"]
    assert list(routes) == ["cheap", "best", "auto", "cascade", "ead"]
    for summary in [*routes.values(), *models.values()]:
        assert summary["asked"] == 8 and summary["errors"] == 0, summary
        assert summary["cost_usd"] > 0
    assert routes["best"]["cost_vs_strong"] == 1.0 and routes["cheap"]["cost_vs_strong"] < 1
    # Both know some capitals: these two questions are answered right by at least one model.
    capitals = [m["tasks"]["capitals"]["correct"] for m in models.values()]
    assert max(capitals) >= 1, models
    records = load_records(out / "records.jsonl")
    assert {r.model for r in records} == {SMALL, LARGE} and len(records) == 16
