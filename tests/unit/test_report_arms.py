"""`routegate report --by arm` on a generated request log with feedback: each experiment's arms
with 95 % intervals, and the arm drawn from another distribution flagged against the control
while the arm drawn from the control's own is not."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.accounting.request_log import FeedbackRecord, RequestLog, RequestRecord
from gateway.cli import app
from gateway.report.experiments import holm

T0 = 1_767_225_600.0

POLICY = """
version: 1
models:
  small:
    provider: litellm
    model: openai/small
    pricing: {input_per_1m: 1, output_per_1m: 2}
routes:
  ctl: {models: [small]}
  same: {models: [small]}
  dear: {models: [small]}
  ab:
    kind: experiment
    arms: {ctl: 1, same: 1, dear: 1}
"""

# arm -> (mean cost, mean latency, P(good feedback), P(error))
ARMS = {"ctl": (1e-3, 200.0, 0.6, 0.02), "same": (1e-3, 200.0, 0.6, 0.02),
        "dear": (2e-3, 400.0, 0.9, 0.25)}  # fmt: skip
PER_ARM = 300


@pytest.fixture
def log_and_policy(tmp_path: Path) -> tuple[Path, Path]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    path = tmp_path / "requests.sqlite"
    log, rng = RequestLog(path), random.Random(15)
    n = 0
    for arm, (cost, latency, good, error) in ARMS.items():
        for _ in range(PER_ARM):
            rid, n = f"r{n}", n + 1
            failed = rng.random() < error
            log.write(
                RequestRecord(
                    rid, T0 + n, "chat", False, route=arm, model="small",
                    cost_usd=max(0.0, rng.gauss(cost, cost / 5)),
                    latency_ms=max(1.0, rng.gauss(latency, latency / 4)),
                    status=502 if failed else 200, api_key_id=f"k{n}",
                    extra={"experiment": {"name": "ab", "arm": arm}},
                )
            )  # fmt: skip
            score = float(rng.random() < good)
            # A judge's opposite score: the user's must be the one counted.
            log.write_feedback(FeedbackRecord(rid, "judge", 1.0 - score, T0 + n))
            log.write_feedback(FeedbackRecord(rid, "user", score, T0 + n + 1))
    # A request outside any experiment is left out of the arms.
    log.write(RequestRecord("plain", T0, "chat", False, route="ctl", model="small"))
    assert log.flush()
    log.close()
    return path, policy


def run(*args: str | Path) -> Any:
    return CliRunner().invoke(app, ["report", *map(str, args)], env={"COLUMNS": "250"})


def test_arms_with_intervals_and_tests_in_json(log_and_policy) -> None:
    log, policy = log_and_policy
    result = run("--log", log, "--policy", policy, "--by", "arm", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {g["arm"]: g["requests"] for g in data["groups"]} == {
        "(none)": 1, "ab=ctl": PER_ARM, "ab=dear": PER_ARM, "ab=same": PER_ARM
    }  # fmt: skip
    ab = data["experiments"]["ab"]
    assert ab["control"] == "ctl" and list(ab["arms"]) == ["ctl", "same", "dear"]
    ctl, same, dear = (ab["arms"][a] for a in ("ctl", "same", "dear"))
    assert ctl["vs_control"] is None
    for figures in (ctl, same, dear):
        assert figures["requests"] == PER_ARM
        for metric in ("cost", "latency", "feedback"):
            low, high = figures[metric]["ci95"]
            assert low < figures[metric]["mean"] < high
        low, high = figures["error"]["ci95"]
        assert low <= figures["error"]["rate"] <= high
    # The user's score, not the judge's opposite one.
    assert 0.5 < ctl["feedback"]["mean"] < 0.7 and dear["feedback"]["mean"] > 0.8
    assert ctl["feedback"]["n"] == PER_ARM
    for metric in ("cost", "latency", "feedback", "error"):
        assert dear["vs_control"][metric]["significant"], metric
        assert dear["vs_control"][metric]["p_value"] < 0.001
        # Two arms face the control: Holm doubles the smaller p-value of the two at least.
        assert dear["vs_control"][metric]["p_adjusted"] >= 2 * dear["vs_control"][metric]["p_value"]
        assert not same["vs_control"][metric]["significant"], (metric, same["vs_control"])
    # No cascade in these arms: nothing to test.
    assert dear["escalation"]["rate"] is None
    assert dear["vs_control"]["escalation"]["p_value"] is None


def test_the_table_shows_each_arm_and_what_is_significant(log_and_policy) -> None:
    log, policy = log_and_policy
    result = run("--log", log, "--policy", policy, "--by", "arm")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Experiment ab (control: ctl)" in out
    experiment = out.split("Experiment ab")[1]
    same, dear = experiment.split("│ same ")[1].split("│ dear ")
    assert "n=300" in same and "p=" in same and "significant" not in same
    assert dear.split("[95 % CI]")[0].count(" significant") == 4  # cost, latency, feedback, errors


def test_html_and_csv_carry_the_arms(log_and_policy, tmp_path: Path) -> None:
    log, policy = log_and_policy
    page = tmp_path / "report.html"
    result = run("--log", log, "--policy", policy, "--by", "arm", "--format", "html", "--out", page)
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert "<h2>Experiment ab (control: ctl)</h2>" in html
    dear = html.split('<tr data-arm="dear">')[1].split("</tr>")[0]
    same = html.split('<tr data-arm="same">')[1].split("</tr>")[0]
    assert " significant" in dear and " significant" not in same
    csv_out = run("--log", log, "--policy", policy, "--by", "arm", "--format", "csv")
    assert csv_out.exit_code == 0 and "\nab=dear," in csv_out.stdout


def test_several_arms_against_the_control_are_held_to_holms_adjusted_p() -> None:
    # Holm's textbook case: raw p 0.01, 0.04, 0.03 are each below 0.05; adjusted they are
    # 0.03, 0.06, 0.06, and only the first stays significant.
    verdicts = [
        {"test": "welch_t", "p_value": p, "p_adjusted": p, "significant": True}
        for p in (0.01, 0.04, 0.03)
    ]
    untested = {"test": "welch_t", "p_value": None, "p_adjusted": None, "significant": False}
    holm([*verdicts, untested])
    assert [v["p_adjusted"] for v in verdicts] == pytest.approx([0.03, 0.06, 0.06])
    assert [v["significant"] for v in verdicts] == [True, False, False]
    assert untested["p_adjusted"] is None and not untested["significant"]
