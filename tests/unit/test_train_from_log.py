"""`routegate routers train --from-log` and `routers eval --from-log`: a request log with
prompts and feedback becomes routing records (one model per query), a router is trained on
them, and artifacts are judged on the queries none trained on by counterfactual replay."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from gateway.accounting.request_log import FeedbackRecord, RequestLog, RequestRecord
from gateway.cli import app
from routers.predictors import artifact

ANIMALS = ["cat", "dog", "owl", "fox", "bee", "eel", "yak", "ant", "elk", "emu"]


def build_log(path: Path) -> dict[str, int]:
    """60 answered requests with prompts and feedback (maths: only `big` answers well), 4
    without a prompt, 3 without feedback; one with a user's and a judge's verdict that differ."""
    log = RequestLog(path, window_s=0.01)
    ts = itertools.count(1_700_000_000)
    for i in range(60):
        maths, model = i % 2 == 0, ("big" if i % 4 < 2 else "small")
        prompt = f"what is {i} times {i + 7}?" if maths else f"tell me about a {ANIMALS[i % 10]}"
        good = 1.0 if (model == "big" or not maths) else 0.0
        rid = f"r{i}"
        log.write(
            RequestRecord(
                rid, next(ts), "chat", False, route="auto", model=model, prompt=prompt,
                prompt_tokens=12, completion_tokens=30,
                cost_usd=3e-4 if model == "big" else 1e-5,
            )
        )  # fmt: skip
        source = ("user", "judge", "escalation")[i % 3]
        score = good if source != "escalation" else (0.0 if good == 0.0 else 1.0)
        log.write_feedback(FeedbackRecord(rid, source, score, next(ts)))
    # The user's verdict wins over the judge's.
    log.write_feedback(FeedbackRecord("r0", "judge", 0.0, next(ts), model="big"))
    for i in range(4):
        log.write(RequestRecord(f"np{i}", next(ts), "chat", False, route="auto", model="big"))
        log.write_feedback(FeedbackRecord(f"np{i}", "user", 1.0, next(ts)))
    for i in range(3):
        log.write(
            RequestRecord(f"nf{i}", next(ts), "chat", False, model="small", prompt="hi there")
        )
    assert log.flush()
    log.close()
    return {"records": 60, "no_prompt": 4, "no_feedback": 3}


def test_train_and_eval_from_the_log(tmp_path: Path) -> None:
    log = tmp_path / "requests.sqlite"
    build_log(log)
    runner = CliRunner()
    new, other = tmp_path / "new", tmp_path / "other"
    result = runner.invoke(
        app,
        ["routers", "train", "--from-log", str(log), "--router", "knn", "--param", "k=5",
         "--out", str(new), "--test-fraction", "0.5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "67 requests -> 60 records" in result.output
    assert "skipped 4 without a prompt, 3 without feedback" in result.output
    assert "queries: 30 trained on (30 held out by query)" in result.output
    assert set(artifact.read_manifest(new)["models"]) == {"big", "small"}
    records = [orjson.loads(line) for line in (new / "log-records.jsonl").read_bytes().splitlines()]
    by_id = {r["query_id"]: r for r in records}
    assert len(records) == 60 and by_id["r0"]["quality"] == 1.0  # the user's, not the judge's
    assert by_id["r0"] == {
        "query_id": "r0", "query": "what is 0 times 7?", "task": "auto", "model": "big",
        "quality": 1.0, "cost_usd": 3e-4, "input_tokens": 12, "output_tokens": 30,
    }  # fmt: skip
    assert by_id["r6"]["quality"] == 0.0  # small on maths, by the escalation signal

    # A second artifact: the first one's recipe, a parameter overridden, the same split.
    result = runner.invoke(
        app,
        ["routers", "train", "--from-log", str(log), "--recipe", str(new), "--param", "k=9",
         "--out", str(other), "--test-fraction", "0.5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = artifact.read_manifest(other)
    assert manifest["kind"] == "knn" and manifest["params"]["k"] == 9

    result = runner.invoke(
        app,
        ["routers", "eval", "--from-log", str(log), "--routers", f"{new},{other}",
         "--lambda", "0", "--lambda", "100000", "--json", str(tmp_path / "eval.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = orjson.loads((tmp_path / "eval.json").read_bytes())
    trained = artifact.train_query_ids(new)
    judged = results["judged"]
    assert results["queries"] == 60 and results["trained_on"] == 30 and judged == 30
    assert set(results["routers"]) == {"new", "other"}
    for entry in results["routers"].values():
        low, high = entry["points"]
        assert low["n"] == judged and 0 <= low["matched"] <= judged
        # At 100000 per USD, big (3e-4 a call) costs 30 quality points: small wins everywhere.
        assert high["shares"]["small"] == 1.0
        # Only the queries `small` answered are matched then, half of them maths it failed;
        # quality first, the router sends maths to big and is matched where big answered it.
        assert high["matched"] == sum(1 for r in records if r["model"] == "small" and
                                      r["query_id"] not in trained)  # fmt: skip
        assert high["quality"] < 0.75 < low["quality"]
    assert "new" in result.output and "other" in result.output and "matched" in result.output


def test_from_log_without_usable_rows_fails_plainly(tmp_path: Path) -> None:
    log = tmp_path / "requests.sqlite"
    request_log = RequestLog(log, window_s=0.01)
    request_log.write(RequestRecord("a", 1.0, "chat", False, model="m", prompt="hello"))
    assert request_log.flush()
    request_log.close()
    result = CliRunner().invoke(
        app, ["routers", "train", "--from-log", str(log), "--router", "knn", "--out",
              str(tmp_path / "x")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "nothing to use" in result.output
    assert not (tmp_path / "x").exists()


def test_the_graph_router_trains_on_a_log_of_one_model_per_query(tmp_path: Path) -> None:
    log, out = tmp_path / "requests.sqlite", tmp_path / "g"
    build_log(log)
    runner = CliRunner()
    result = runner.invoke(
        app, ["routers", "train", "--from-log", str(log), "--router", "graph", "--out",
              str(out), "--test-fraction", "0.5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert artifact.read_manifest(out)["kind"] == "graph"
    result = runner.invoke(
        app, ["routers", "eval", "--from-log", str(log), "--routers", str(out), "--lambda", "0",
              "--lambda", "100000", "--json", str(tmp_path / "eval.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    low, high = orjson.loads((tmp_path / "eval.json").read_bytes())["routers"]["g"]["points"]
    # Quality first it sends maths to big, which answered it well; cost first, all to small.
    assert high["shares"]["small"] == 1.0
    assert high["quality"] < 0.75 < low["quality"]


def short_log(path: Path, n: int, models: list[str]) -> None:
    """`n` requests with feedback, answered by `models` in turn, every other one well."""
    log = RequestLog(path, window_s=0.01)
    ts = itertools.count(1_700_000_000)
    for i in range(n):
        model = models[i % len(models)]
        log.write(
            RequestRecord(
                f"r{i}", next(ts), "chat", False, route="auto", model=model,
                prompt=f"question {i} about the {ANIMALS[i % 10]}", prompt_tokens=12,
                completion_tokens=30, cost_usd=1e-5 * (1 + models.index(model)),
            )
        )  # fmt: skip
        log.write_feedback(FeedbackRecord(f"r{i}", "user", float(i % 2), next(ts)))
    assert log.flush()
    log.close()


# A new deployment's log is short: fewer queries than a recipe's neighbours or folds, fewer good
# answers than folds, or a model whose only requests were held out.
@pytest.mark.parametrize("kind", ["knn", "mf", "complexity", "graph"])
@pytest.mark.parametrize(("requests", "models"), [(3, 2), (12, 3)])
def test_every_recipe_trains_on_a_short_log(
    tmp_path: Path, kind: str, requests: int, models: int
) -> None:
    log, out = tmp_path / "requests.sqlite", tmp_path / "new"
    short_log(log, requests, ["a", "b", "c"][:models])
    result = CliRunner().invoke(
        app, ["routers", "train", "--from-log", str(log), "--router", kind, "--out", str(out),
              "--test-fraction", "0.5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    names = ["a", "b", "c"][:models]
    answered = {names[int(q[1:]) % models] for q in artifact.train_query_ids(out)}
    # The router knows the models that answered a training request; the others are named.
    assert set(artifact.read_manifest(out)["models"]) == answered
    for model in set(names) - answered:
        assert f"no training record for {model}" in result.output
