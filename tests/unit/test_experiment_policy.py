"""Experiment routes in the policy, through `routegate policy validate`: arms that do not
exist, arms that are experiments and a single arm, each reported with its line."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from gateway.cli import app

runner = CliRunner()

HEAD = """\
version: 1
models:
  a:
    provider: litellm
    model: openai/a
routes:
  ra: {models: [a]}
  rb: {models: [a]}
"""


def validate(tmp_path: Path, routes: str) -> tuple[int, list[str]]:
    f = tmp_path / "policy.yaml"
    f.write_text(HEAD + routes)
    result = runner.invoke(app, ["policy", "validate", str(f)])
    return result.exit_code, [line.replace(str(f), "F") for line in result.output.splitlines()]


def test_a_valid_experiment(tmp_path: Path) -> None:
    code, lines = validate(tmp_path, "  ab: {kind: experiment, arms: {ra: 1, rb: 2}}\n")
    assert code == 0, lines
    assert "ok (1 models, 3 routes)" in lines[-1]


def test_arms_must_be_routes_that_are_not_experiments(tmp_path: Path) -> None:
    code, lines = validate(
        tmp_path,
        """\
  ab:
    kind: experiment
    arms: {ra: 1, nope: 1}
  meta:
    kind: experiment
    arms:
      ab: 1
      rb: 1
""",
    )
    assert code == 1
    assert lines == [
        "F:11:19 routes.ab.arms.nope: unknown route 'nope' (an arm must be a route of this policy)",
        "F:15:7 routes.meta.arms.ab: route 'ab' is an experiment; an arm cannot be one",
    ]


def test_an_experiment_needs_two_arms_of_positive_weight(tmp_path: Path) -> None:
    code, lines = validate(
        tmp_path,
        """\
  one:
    kind: experiment
    arms: {ra: 1}
  zero:
    kind: experiment
    arms: {ra: 0, rb: 1}
""",
    )
    assert code == 1
    assert lines[0].startswith("F:11:5 routes.one.arms: Dictionary should have at least 2 items")
    assert lines[1] == "F:14:12 routes.zero.arms.ra: Input should be greater than 0"


def test_the_kind_error_names_experiment(tmp_path: Path) -> None:
    code, lines = validate(tmp_path, "  ab: {kind: ab_test, arms: {ra: 1, rb: 1}}\n")
    assert code == 1 and "'experiment'" in lines[0] and lines[0].startswith("F:9:")


def test_log_prompts_is_refused_on_the_experiment(tmp_path: Path) -> None:
    code, lines = validate(
        tmp_path, "  ab: {kind: experiment, arms: {ra: 1, rb: 1}, log_prompts: true}\n"
    )
    assert code == 1 and "routes.ab.log_prompts: set log_prompts on the arms" in lines[0]


def test_settings_the_arms_use_are_refused_on_the_experiment(tmp_path: Path) -> None:
    code, lines = validate(
        tmp_path, "  ab: {kind: experiment, arms: {ra: 1, rb: 1}, slo_latency_ms: 100}\n"
    )
    assert code == 1
    assert lines == [
        "F:9:48 routes.ab.slo_latency_ms: set slo_latency_ms on the arms, not the experiment"
    ]


def test_policy_diff_describes_arms_and_weights(tmp_path: Path) -> None:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(HEAD)
    new.write_text(HEAD + "  ab: {kind: experiment, arms: {ra: 1, rb: 3}}\n")
    added = runner.invoke(app, ["policy", "diff", str(old), str(new)])
    assert "Route ab added (experiment: ra 1, rb 3)." in added.output, added.output
    old.write_text(HEAD + "  ab: {kind: experiment, arms: {ra: 1, rb: 1}}\n")
    changed = runner.invoke(app, ["policy", "diff", str(old), str(new)])
    assert "Route ab: arms {ra: 1, rb: 1} → {ra: 1, rb: 3}." in changed.output, changed.output
