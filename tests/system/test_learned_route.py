"""A learned route through the gateway (shipped complexity router, fast test upstream): the
router's predictions pick the model, show in headers and the request log, and lambda moves the
choice; policy validation names a route whose router cannot serve its models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream

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


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("learned")
    weak, strong = Upstream("weak").start(), Upstream("strong").start()
    policy = work / "policy.yaml"
    policy.write_text(
        POLICY.format(
            weak=weak.base_url,
            strong=strong.base_url,
            routes=routes(auto=150, quality=0, thrifty=1e6),
        )
    )
    gw = GatewayProcess(policy, work).start(timeout=120)
    yield gw
    gw.stop()
    weak.stop()
    strong.stop()


def ask(gw: GatewayProcess, route: str, text: str = EASY) -> httpx.Response:
    body = {"model": route, "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    resp = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp


def test_predictions_pick_the_model_and_are_recorded(gateway: GatewayProcess) -> None:
    resp = ask(gateway, "auto")
    model = resp.headers["x-routegate-model"]
    assert resp.json()["choices"][0]["message"]["content"] == f"hi from {model}"
    quality = float(resp.headers["x-routegate-predicted-quality"])
    row = gateway.record(resp.headers["x-routegate-request-id"])
    predictions = row["extra"]["predictions"]
    assert predictions[model]["quality"] == pytest.approx(quality, abs=1e-4)
    assert set(predictions) == {"weak", "strong"}
    assert all(0 < p["quality"] < 1 for p in predictions.values())
    score = {m: p["quality"] - 150 * p["cost_usd"] for m, p in predictions.items()}
    assert model == max(score, key=score.__getitem__)


def test_lambda_moves_the_choice(gateway: GatewayProcess) -> None:
    assert ask(gateway, "quality").headers["x-routegate-model"] == "strong"
    assert ask(gateway, "thrifty").headers["x-routegate-model"] == "weak"


def test_concurrent_requests_are_scored_together(gateway: GatewayProcess) -> None:
    import asyncio

    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as c:
            body = {"model": "auto", "messages": [{"role": "user", "content": EASY}]}
            return await asyncio.gather(
                *(c.post(gateway.url + "/v1/chat/completions", json=body) for _ in range(40))
            )

    responses = asyncio.run(many())
    assert [r.status_code for r in responses] == [200] * 40
    assert len({r.headers["x-routegate-predicted-quality"] for r in responses}) == 1


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
    q = dict(
        zip(
            [STRONG, WEAK, "frontier", "small"],
            graph.predict_quality(queries, [STRONG, WEAK, "frontier", "small"])[0],
            strict=True,
        )
    )
    assert q["frontier"] > q["small"]
    assert abs(q["frontier"] - q[STRONG]) < abs(q["frontier"] - q[WEAK])
    assert abs(q["small"] - q[WEAK]) < abs(q["small"] - q[STRONG])
