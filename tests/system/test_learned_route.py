"""A learned route through the gateway (shipped complexity router, fast test upstream): the
router's predictions pick the model, show in headers and the request log, and lambda moves the
choice. Validation and the graph router alone: tests/unit/test_learned_route_validate.py."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream
from tests.unit.test_learned_route_validate import EASY, POLICY, routes


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
