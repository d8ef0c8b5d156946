"""`routegate demo eval` as a user runs it: the CLI in its own process, against a real
`routegate serve` with the example policy's kinds of route (fixed, learned, cascade, EAD) in
front of two test upstreams. One always answers right (it looks the question up), the other
never does, so every route's accuracy is known from which model answered. The eval's routing
records then train a router with `routegate routers train`. Question set and checkers alone:
tests/unit/test_demo_eval_questions.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.demo.eval_questions import build_questions
from routers.records import RecordTable, load_records
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream
from tests.unit.test_learned_route_validate import ARTIFACT, STRONG, WEAK

ROOT = Path(__file__).resolve().parents[2]
ROUTES = ["cheap", "best", "auto", "cascade", "ead"]
POLICY = f"""
version: 1
models:
  weak:
    provider: vllm
    endpoints: ["{{weak}}"]
    pricing: {{{{input_per_1m: 0.24, output_per_1m: 0.24}}}}
  strong:
    provider: vllm
    endpoints: ["{{strong}}"]
    pricing: {{{{input_per_1m: 10.0, output_per_1m: 30.0}}}}
routes:
  cheap:
    models: [weak]
  best:
    models: [strong]
  auto:
    kind: learned
    router: {ARTIFACT}
    models: [weak, strong]
    model_map: {{{{weak: "{WEAK}", strong: "{STRONG}"}}}}
    lambda: 150
  cascade:
    kind: cascade
    models: [weak, strong]
    confidence: {{{{method: mean_logprob, threshold: -3.5}}}}
  ead:
    kind: ead
    small: weak
    large: strong
    window: 4
    threshold: 1.0
    span: 16
    chunk: 16
    top_k: 5
"""


class Oracle(Upstream):
    """Answers every built-in question right (found by its prompt text), as a strong model."""

    def _answer(self, body: dict[str, Any], kind: str) -> dict[str, Any]:
        answer = super()._answer(body, kind)
        if kind == "chat":
            text = str(body["messages"][-1]["content"])
        else:  # EAD's completions: the rendered prompt and the text so far
            text = str(body.get("prompt", ""))
        expected = next(
            (q.answer.expected for q in build_questions() if q.prompt in text), "no idea"
        )
        choice = answer["choices"][0]
        if kind == "chat":
            choice["message"]["content"] = expected
        else:
            choice["text"] = expected
        return answer


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("demo-eval")
    weak = Upstream("weak").start()
    strong = Oracle("strong").start()
    policy = work / "policy.yaml"
    policy.write_text(POLICY.format(weak=weak.base_url, strong=strong.base_url))
    gw = GatewayProcess(policy, work).start(timeout=120)
    yield gw
    gw.stop()
    weak.stop()
    strong.stop()


def routegate(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "160"},
    )


def test_eval_prints_the_table_and_writes_results_and_records(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    started = time.monotonic()
    run = routegate(
        "demo", "eval", "--base-url", gateway.url + "/v1", "--limit", "12", "--out", str(out)
    )
    assert run.returncode == 0, run.stdout + run.stderr
    elapsed = time.monotonic() - started
    for name in [
        *ROUTES,
        "weak (model)",
        "strong (model)",
        "Accuracy per task",
        "vs best",
        "cascade: escalated on 12 of 12 questions",
    ]:
        assert name in run.stdout, run.stdout

    results = orjson.loads((out / "results.json").read_bytes())
    assert results["questions"] == 12 and results["strong_route"] == "best"
    assert set(results["tasks"]) == {"arithmetic", "units", "capitals", "multiple_choice"}
    assert list(results["routes"]) == ROUTES
    assert list(results["models"]) == ["weak", "strong"]
    routes, models = results["routes"], results["models"]
    for summary in [*routes.values(), *models.values()]:
        assert summary["asked"] == 12 and summary["errors"] == 0, summary
        assert summary["cost_usd"] > 0
    assert models["strong"]["accuracy"] == 1.0 and models["weak"]["accuracy"] == 0.0
    assert routes["best"]["accuracy"] == 1.0 and routes["best"]["cost_vs_strong"] == 1.0
    assert routes["cheap"]["accuracy"] == 0.0 and routes["cheap"]["cost_vs_strong"] < 0.1
    # The test upstreams send no logprobs: an unmeasured answer escalates, every time.
    assert routes["cascade"]["shares"] == {"strong": 1.0} and routes["cascade"]["escalated"] == 12
    assert routes["cascade"]["accuracy"] == 1.0 and routes["cascade"]["cost_vs_strong"] > 1
    # The learned router's accuracy is the share it sent to the model that is always right.
    auto = routes["auto"]
    assert auto["accuracy"] == pytest.approx(auto["shares"].get("strong", 0.0))
    assert routes["ead"]["share_by"] == "completion_tokens"
    assert set(routes["ead"]["shares"]) <= {"weak", "strong"} and routes["ead"]["shares"]
    for summary in [*routes.values(), *models.values()]:
        tasks = summary["tasks"]
        assert sum(t["asked"] for t in tasks.values()) == 12
        assert sum(t["correct"] for t in tasks.values()) == summary["correct"]

    records = load_records(out / "records.jsonl")
    assert len(records) == 24 and {r.model for r in records} == {"weak", "strong"}
    assert all(r.quality == (1.0 if r.model == "strong" else 0.0) for r in records)
    assert all(r.cost_usd > 0 and r.input_tokens > 0 for r in records)
    assert len(RecordTable.from_records(records).complete_rows()) == 12
    answers = (out / "answers.jsonl").read_bytes().splitlines()
    assert len(answers) == 12 * 7
    print(run.stdout)
    print(f"demo eval, 12 questions x 7 targets: {elapsed:.1f} s")

    # The records are what `routers train` takes: the whole loop of the product.
    trained = routegate(
        "routers", "train", "--router", "knn", "--data", str(out / "records.jsonl"),
        "--out", str(tmp_path / "knn"),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert (tmp_path / "knn" / "manifest.json").is_file(), sorted((tmp_path / "knn").iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--routes", "cheap,nope"],
            "route 'nope' is not in the gateway's policy (its routes: auto, best, cascade, "
            "cheap, ead)",
        ),
        (
            ["--models", "weak,cheap"],
            "model 'cheap' is not in the gateway's policy (its models: strong, weak)",
        ),
        (["--routes", "cheap"], "--strong-route 'best' is not one of --routes"),
    ],
)
def test_a_name_the_policy_lacks_is_one_line(
    gateway: GatewayProcess, tmp_path: Path, args: list[str], message: str
) -> None:
    # In this process (the CLI's imports are paid once): what a user sees is the same.
    base = ["demo", "eval", "--base-url", gateway.url + "/v1", "--limit", "2"]
    run = CliRunner().invoke(app, [*base, "--out", str(tmp_path), *args])
    assert run.exit_code == 1 and isinstance(run.exception, SystemExit)  # no traceback
    assert run.output.strip() == f"error: {message}", run.output
    assert not (tmp_path / "results.json").exists()
