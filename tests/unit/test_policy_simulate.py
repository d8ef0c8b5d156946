"""`routegate policy simulate`: replay a request log or routing records through a candidate policy
and compare its routing and cost with the current one's, priced by hand here."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.accounting.request_log import RequestLog, RequestRecord
from gateway.cli import app

REPO = Path(__file__).resolve().parents[2]
ARTIFACT = REPO / "routers" / "artifacts" / "complexity-default"
PRICES = {"small": (1.0, 2.0), "large": (10.0, 30.0)}

MODELS = """
version: 1
models:
  small:
    provider: vllm
    endpoints: [http://127.0.0.1:9/v1]
    pricing: {input_per_1m: 1, output_per_1m: 2}
    quality: 0.5
  large:
    provider: vllm
    endpoints: [http://127.0.0.1:9/v1]
    pricing: {input_per_1m: 10, output_per_1m: 30}
    quality: 0.9
"""


def policy_text(main: str, lam: float) -> str:
    return (
        MODELS
        + f"""
routes:
  main:
    models: [{main}]
  ca:
    kind: cost_aware
    models: [small, large]
    lambda: {lam}
  casc:
    kind: cascade
    models: [small, large]
    confidence: {{threshold: -1.0}}
  ead:
    kind: ead
    small: small
    large: large
  learned:
    kind: learned
    router: {ARTIFACT}
    models: [small, large]
    model_map: {{small: mistralai/Mixtral-8x7B-Instruct-v0.1, large: gpt-4-1106-preview}}
    lambda: {lam}
"""
    )


# Current: small first, lambda so high that cost decides. Candidate: large first, lambda 0.
CURRENT = policy_text("small, large", 1e9)
CANDIDATE = policy_text("large, small", 0)


def price(model: str, prompt: float, completion: float) -> float:
    inp, out = PRICES[model]
    return prompt * inp / 1e6 + completion * out / 1e6


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _log(tmp_path: Path, records: list[RequestRecord]) -> Path:
    path = tmp_path / "requests.sqlite"
    log = RequestLog(path)
    for rec in records:
        log.write(rec)
    assert log.flush()
    log.close()
    return path


def _rec(n: int, route: str | None, model: str, prompt: int, completion: int, **kw: Any):
    return RequestRecord(
        f"r{n}", 1_767_225_600.0 + n, "chat", False, route=route, model=model,
        prompt_tokens=prompt, completion_tokens=completion,
        cost_usd=price(model, prompt, completion), **kw,
    )  # fmt: skip


def simulate(tmp_path: Path, data: Path, *args: str) -> dict[str, Any]:
    candidate = _write(tmp_path, "candidate.yaml", CANDIDATE)
    current = _write(tmp_path, "current.yaml", CURRENT)
    result = CliRunner().invoke(
        app,
        ["policy", "simulate", str(candidate), "--data", str(data), "--current", str(current),
         "--json", *args],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_request_log_fixed_and_cost_aware_routes(tmp_path: Path) -> None:
    rows = [(100, 50), (2000, 10), (7, 700)]
    recs = [_rec(i, "main", "small", p, c) for i, (p, c) in enumerate(rows)]
    recs += [_rec(10 + i, "ca", "small", p, c) for i, (p, c) in enumerate(rows)]
    out = simulate(tmp_path, _log(tmp_path, recs))
    new, old = out["candidate"]["routes"], out["current"]["routes"]
    assert new["main"]["mix"] == {"large": 3} and old["main"]["mix"] == {"small": 3}
    assert new["main"]["cost_usd"] == math.fsum(price("large", p, c) for p, c in rows)
    assert old["main"]["cost_usd"] == math.fsum(price("small", p, c) for p, c in rows)
    # lambda 0: quality alone decides (large); lambda 1e9: cost alone (small).
    assert new["ca"]["mix"] == {"large": 3} and old["ca"]["mix"] == {"small": 3}
    assert out["candidate"]["total_cost_usd"] == pytest.approx(
        math.fsum(2 * price("large", p, c) for p, c in rows)
    )


def test_request_log_cascade_ead_and_learned_rows(tmp_path: Path) -> None:
    steps = [
        {"model": "small", "prompt_tokens": 300, "completion_tokens": 40, "cost_usd": 0.0},
        {"model": "large", "prompt_tokens": 310, "completion_tokens": 90, "cost_usd": 0.0},
    ]
    predictions = {"small": {"quality": 0.6}, "large": {"quality": 0.9}}
    recs = [
        _rec(0, "casc", "large", 310, 90, extra={"steps": steps, "escalations": 1}),
        _rec(1, "casc", "small", 50, 20, extra={"escalations": 0}),
        _rec(2, "ead", "small", 64, 200, extra={"switches": 2, "large_token_share": 0.25}),
        _rec(3, "learned", "small", 500, 100, extra={"predictions": predictions}),
        _rec(4, "learned", "small", 40, 10),  # no predictions: the route's first model
        _rec(5, None, "large", 11, 12),  # a model asked for by name
        _rec(6, "retired", "small", 1, 1),  # a route neither policy has
    ]
    out = simulate(tmp_path, _log(tmp_path, recs))
    new, old = out["candidate"]["routes"], out["current"]["routes"]
    assert new["casc"]["mix"] == {"large": 1, "small": 1}
    assert new["casc"]["cost_usd"] == pytest.approx(
        price("small", 300, 40) + price("large", 310, 90) + price("small", 50, 20)
    )
    assert new["ead"]["cost_usd"] == pytest.approx(price("small", 64, 150) + price("large", 64, 50))
    # The logged predictions re-ranked: lambda 0 takes large, lambda 1e9 takes small.
    assert new["learned"]["mix"] == {"large": 1, "small": 1}
    assert old["learned"]["mix"] == {"small": 2}
    assert new["learned"]["cost_usd"] == pytest.approx(
        price("large", 500, 100) + price("small", 40, 10)
    )
    assert new["learned"]["mean_quality"] == pytest.approx(0.9)
    assert old["learned"]["mean_quality"] == pytest.approx(0.6)
    assert new["(model by name)"] == old["(model by name)"]
    assert new["(model by name)"]["cost_usd"] == price("large", 11, 12)
    assert out["candidate"]["skipped"] == out["current"]["skipped"] == 1


def _records_file(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    lines = []
    for i, (inp, out_small, out_large, q_small, q_large) in enumerate(
        [(30, 5, 8, 0.0, 1.0), (400, 50, 60, 1.0, 1.0), (12, 3, 2, 0.0, 0.0)]
    ):
        for model, out, q in (("small", out_small, q_small), ("large", out_large, q_large)):
            lines.append(
                {"query_id": f"q{i}", "query": f"What is {i} + {i}?", "task": "t",
                 "model": model, "quality": q, "cost_usd": 0.0, "input_tokens": inp,
                 "output_tokens": out}
            )  # fmt: skip
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path, lines


def test_routing_records_through_fixed_and_cost_aware_routes(tmp_path: Path) -> None:
    data, lines = _records_file(tmp_path)

    def expected(model: str) -> tuple[float, float]:
        mine = [r for r in lines if r["model"] == model]
        cost = math.fsum(price(model, r["input_tokens"], r["output_tokens"]) for r in mine)
        return cost, sum(r["quality"] for r in mine) / len(mine)

    out = simulate(tmp_path, data)  # default: the first route, main
    new, old = out["candidate"]["routes"]["main"], out["current"]["routes"]["main"]
    assert (new["requests"], new["mix"]) == (3, {"large": 3})
    assert (new["cost_usd"], new["mean_quality"]) == pytest.approx(expected("large"))
    assert (old["cost_usd"], old["mean_quality"]) == pytest.approx(expected("small"))

    out = simulate(tmp_path, data, "--route", "ca")
    assert out["candidate"]["routes"]["ca"]["mix"] == {"large": 3}
    assert out["current"]["routes"]["ca"]["mix"] == {"small": 3}


def test_routing_records_through_a_learned_route(tmp_path: Path) -> None:
    """The route's real trained router scores the query text."""
    data, lines = _records_file(tmp_path)
    # The records name the models as the router's training data does (model_map's targets).
    names = {"small": "mistralai/Mixtral-8x7B-Instruct-v0.1", "large": "gpt-4-1106-preview"}
    data.write_text("".join(json.dumps(r | {"model": names[r["model"]]}) + "\n" for r in lines))
    out = simulate(tmp_path, data, "--route", "learned")
    route = out["candidate"]["routes"]["learned"]
    assert route["requests"] == route["quality_requests"] == 3
    assert set(route["mix"]) <= {"small", "large"}
    # lambda 1e9: cost decides, so the current policy sends everything to small.
    old = out["current"]["routes"]["learned"]
    assert old["mix"] == {"small": 3}
    assert old["mean_quality"] == pytest.approx(1 / 3)


def test_table_output_and_errors(tmp_path: Path) -> None:
    data, _ = _records_file(tmp_path)
    candidate = _write(tmp_path, "candidate.yaml", CANDIDATE)
    runner = CliRunner()
    result = runner.invoke(
        app, ["policy", "simulate", str(candidate), "--data", str(data)], env={"COLUMNS": "250"}
    )
    # The default current policy (the example) has no route `main`: the candidate alone.
    assert result.exit_code == 0, result.output
    assert "main" in result.stdout and "large 100%" in result.stdout

    bad_route = runner.invoke(
        app, ["policy", "simulate", str(candidate), "--data", str(data), "--route", "nope"]
    )
    assert bad_route.exit_code == 1
    assert "no route 'nope'" in bad_route.output

    bad_data = _write(tmp_path, "bad.jsonl", '{"query_id": "q"}\n')
    result = runner.invoke(app, ["policy", "simulate", str(candidate), "--data", str(bad_data)])
    assert result.exit_code == 1
    assert f"{bad_data}:1: query: Field required" in result.output

    broken = _write(tmp_path, "broken.yaml", CANDIDATE.replace("lambda: 0", "lambda: -5", 1))
    result = runner.invoke(app, ["policy", "simulate", str(broken), "--data", str(data)])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{broken}:")
    assert "routes.ca.lambda" in result.stdout


def test_a_learned_routes_lead_is_replayed_from_the_logged_priors(tmp_path: Path) -> None:
    # Predicted: small the better; on average (the logged priors), large.
    predictions = {
        "small": {"quality": 0.8, "prior": 0.6},
        "large": {"quality": 0.7, "prior": 0.9},
    }
    data = _log(
        tmp_path, [_rec(0, "learned", "small", 500, 100, extra={"predictions": predictions})]
    )
    head, tail = CANDIDATE.rsplit("    lambda: 0\n", 1)  # the learned route's, the last one
    led = f"{head}    lambda: 0\n    lead: 0.2\n{tail}"
    candidate = _write(tmp_path, "led.yaml", led)
    result = CliRunner().invoke(
        app, ["policy", "simulate", str(candidate), "--data", str(data), "--json"]
    )
    assert result.exit_code == 0, result.output
    # Lambda 0 alone takes small (0.8 > 0.7); a lead of 0.2 on large turns it (0.9 > 0.8).
    assert json.loads(result.stdout)["candidate"]["routes"]["learned"]["mix"] == {"large": 1}
    assert simulate(tmp_path, data)["candidate"]["routes"]["learned"]["mix"] == {"small": 1}
