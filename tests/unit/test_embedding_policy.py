"""`kind: embedding` models in the policy: what the validator accepts, and its line-numbered
messages for routes and fallbacks that would mix embeddings with chat."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from policies.loader import example_policy_path, load_policy

runner = CliRunner()

MODELS = """\
version: 1
models:
  embed:
    provider: vllm
    kind: embedding
    endpoints: [http://e:8000/v1]
    pricing: {input_per_1m: 0.02, output_per_1m: 0}
    fallbacks: [embed-remote]
  embed-remote:
    provider: litellm
    kind: embedding
    model: openai/text-embedding-3-small
  chat:
    provider: vllm
    endpoints: [http://c:8000/v1]
    pricing: {input_per_1m: 1, output_per_1m: 2}
    quality: 0.5
"""


def validate(tmp_path: Path, text: str) -> tuple[int, list[str]]:
    f = tmp_path / "policy.yaml"
    f.write_text(text)
    result = runner.invoke(app, ["policy", "validate", str(f)])
    return result.exit_code, [line.replace(str(f), "F") for line in result.output.splitlines()]


def test_embedding_models_on_a_fixed_route_are_valid(tmp_path: Path) -> None:
    text = MODELS + "routes:\n  vectors: {models: [embed, embed-remote]}\n"
    code, lines = validate(tmp_path, text)
    assert code == 0, lines
    policy = load_policy(tmp_path / "policy.yaml")
    assert policy.models["embed"].kind == "embedding"
    assert policy.models["chat"].kind == "chat"  # the default


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        (
            "  smart: {kind: cost_aware, models: [embed]}\n",
            "F:19:11 routes.smart.kind: a cost_aware route cannot serve the embedding model(s) "
            "embed: only routes of kind fixed (with fallbacks) serve embeddings",
        ),
        (
            "  steps:\n    kind: cascade\n    models: [embed, embed-remote]\n"
            "    confidence: {method: mean_logprob, threshold: -1}\n",
            "F:20:5 routes.steps.kind: a cascade route cannot serve the embedding model(s) embed, "
            "embed-remote: only routes of kind fixed (with fallbacks) serve embeddings",
        ),
        (
            "  mixed: {models: [embed, chat]}\n",
            "F:19:27 routes.mixed.models[1]: 'chat' is a chat model and 'embed' an embedding "
            "model: a route serves one kind of model",
        ),
        (
            "  ead: {kind: ead, small: embed, large: chat}\n",
            "F:19:20 routes.ead.small: model 'embed' is an embedding model: only fixed routes "
            "serve embeddings",
        ),
        (
            "  vectors: {models: [embed]}\n  talk: {models: [chat]}\n"
            "  ab: {kind: experiment, arms: {vectors: 1, talk: 1}}\n",
            "F:21:33 routes.ab.arms.vectors: route 'vectors' serves embeddings: only fixed "
            "routes serve embeddings",
        ),
        (
            "  steps:\n    kind: cascade\n    models: [chat, chat]\n"
            "    confidence: {method: judge, threshold: 0.5, judge_model: embed}\n",
            "F:22:49 routes.steps.confidence.judge_model: model 'embed' is an embedding model: "
            "it cannot judge",
        ),
    ],
)
def test_routes_that_cannot_serve_embeddings_are_refused_with_their_line(
    tmp_path: Path, routes: str, expected: str
) -> None:
    code, lines = validate(tmp_path, MODELS + "routes:\n" + routes)
    assert code == 1
    assert lines == [expected]


def test_a_fallback_of_another_kind_is_refused(tmp_path: Path) -> None:
    text = MODELS.replace("    fallbacks: [embed-remote]\n", "    fallbacks: [chat]\n")
    code, lines = validate(tmp_path, text)
    assert code == 1
    assert lines == [
        "F:8:17 models.embed.fallbacks[0]: 'chat' is of kind chat and 'embed' of kind "
        "embedding: a fallback must be of the same kind"
    ]


def test_an_unknown_kind_names_the_choices(tmp_path: Path) -> None:
    code, lines = validate(tmp_path, MODELS.replace("kind: embedding", "kind: embed", 1))
    assert code == 1
    assert lines == ["F:5:5 models.embed.kind: Input should be 'chat' or 'embedding'"]


def test_the_example_policy_has_an_embedding_route() -> None:
    policy = load_policy(example_policy_path())
    embedding = [n for n, m in policy.models.items() if m.kind == "embedding"]
    assert embedding == ["minilm"]
    assert policy.routes["embed"].models == ["minilm"]
