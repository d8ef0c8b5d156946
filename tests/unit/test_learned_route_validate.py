"""A learned route without a gateway: policy validation names a route whose router cannot
serve its models, and the graph router places a model known only by its description. Through a
real gateway process: tests/system/test_learned_route.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app

ARTIFACT = Path(__file__).resolve().parents[2] / "routers" / "artifacts" / "complexity-default"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"

POLICY = """
version: 1
models:
  weak:
    provider: vllm
    endpoints: [{weak}]
    pricing: {{input_per_1m: 0.24, output_per_1m: 0.24}}
  strong:
    provider: vllm
    endpoints: [{strong}]
    pricing: {{input_per_1m: 10.0, output_per_1m: 30.0}}
routes:
{routes}
"""
ROUTE = """
  {name}:
    kind: learned
    router: {artifact}
    models: [weak, strong]
    model_map: {{weak: "{weak}", strong: "{strong}"}}
    lambda: {lam}
"""

EASY = "Which planet is known as the Red Planet?\nA. Venus\nB. Mars\nC. Jupiter\nD. Saturn\nAnswer:"


def routes(**lambdas: float) -> str:
    return "".join(
        ROUTE.format(name=n, artifact=ARTIFACT, weak=WEAK, strong=STRONG, lam=lam)
        for n, lam in lambdas.items()
    )


def test_validate_names_a_model_the_router_does_not_know(tmp_path: Path) -> None:
    text = POLICY.format(weak="http://h/v1", strong="http://h/v1", routes=routes(auto=1))
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(f'strong: "{STRONG}"', 'strong: "gpt-9"'))
    result = CliRunner().invoke(app, ["policy", "validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:17:20 " in result.output
    assert (
        "routes.auto.models[1]: the complexity router was not trained on 'gpt-9'" in result.output
    )

    missing = tmp_path / "missing.yaml"
    missing.write_text(text.replace(str(ARTIFACT), str(tmp_path / "nowhere")))
    result = CliRunner().invoke(app, ["policy", "validate", str(missing)])
    assert result.exit_code == 1 and "routes.auto.router: " in result.output
    assert "not a router artifact" in result.output


def test_graph_router_places_a_model_known_only_by_its_description() -> None:
    import numpy as np

    from routers.predictors import artifact
    from routers.predictors.base import Queries

    graph = artifact.load(ARTIFACT.parent / "graph-default")
    graph.add_model(
        "frontier",
        "GPT-4o, a large proprietary frontier model from OpenAI: the strongest and most "
        "expensive option, with excellent reasoning, science and professional knowledge.",
    )
    graph.add_model(
        "small", "Llama 3 8B Instruct: a small open-weight model, cheap and fast, basic knowledge."
    )
    queries = Queries([EASY], [None], np.array([20.0]))
    names = [STRONG, WEAK, "frontier", "small"]
    # Placement: each new model next to the trained one its description resembles.
    q = dict(zip(names, graph.raw_quality(queries, names)[0], strict=True))
    assert q["frontier"] > q["small"]
    assert abs(q["frontier"] - q[STRONG]) < abs(q["frontier"] - q[WEAK])
    assert abs(q["small"] - q[WEAK]) < abs(q["small"] - q[STRONG])
    # Routed with a pessimism margin: a model known only by its description does not outrank
    # the trained model it resembles.
    final = dict(zip(names, graph.predict_quality(queries, names)[0], strict=True))
    assert final["frontier"] < final[STRONG]


DESCRIBED = """version: 1
models:
  weak:
    provider: vllm
    endpoints: [http://h/v1]
    pricing: {input_per_1m: 0.24, output_per_1m: 0.24}
  fresh:
    provider: vllm
    endpoints: [http://h/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 1.0}
    description: A mid-sized open-weight model, decent reasoning.
routes:
  auto:
    kind: learned
    router: router
    models: [weak, fresh]
    model_map: {weak: known-weak}
"""


def _artifact(tmp_path: Path, **extra: object) -> None:
    import orjson

    (tmp_path / "router").mkdir()
    manifest = {"format_version": 1, "kind": "complexity", "models": ["known-weak"], **extra}
    (tmp_path / "router" / "manifest.json").write_bytes(orjson.dumps(manifest))


@pytest.mark.parametrize(
    "extra", [{"inductive": True}, {"kind": "graph"}], ids=["inductive", "graph-before-the-key"]
)
def test_validate_warns_of_a_model_an_inductive_router_knows_by_description(
    tmp_path: Path, extra: dict[str, object]
) -> None:
    _artifact(tmp_path, **extra)
    file = tmp_path / "policy.yaml"
    file.write_text(DESCRIBED)
    result = CliRunner().invoke(app, ["policy", "validate", str(file)])
    assert result.exit_code == 0, result.output
    kind = extra.get("kind", "complexity")
    assert result.output.splitlines() == [
        f"{file}: ok (2 models, 1 routes)",
        f"{file}:16:20 routes.auto.models[1]: warning: known to the {kind} router only by "
        "its description: routed from the description, without records (see docs/routers.md)",
    ]


def test_validate_refuses_a_described_model_a_router_cannot_place(tmp_path: Path) -> None:
    _artifact(tmp_path)  # no "inductive": only the graph router places a model by description
    file = tmp_path / "policy.yaml"
    file.write_text(DESCRIBED)
    result = CliRunner().invoke(app, ["policy", "validate", str(file)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{file}:16:20 routes.auto.models[1]: the complexity router was not trained on 'fresh' "
        "(it knows known-weak): map it with model_map"
    ]

    (tmp_path / "router" / "manifest.json").unlink()
    (tmp_path / "router").rmdir()
    _artifact(tmp_path, inductive=True)
    file.write_text(
        DESCRIBED.replace("    description: A mid-sized open-weight model, decent reasoning.\n", "")
    )
    result = CliRunner().invoke(app, ["policy", "validate", str(file)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{file}:15:20 routes.auto.models[1]: the complexity router was not trained on 'fresh' "
        "(it knows known-weak): map it with model_map or give the model a description"
    ]
