"""Policy schema and the validator's line-numbered messages, through `routegate policy validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from policies.loader import PolicyError, example_policy_path, parse_policy
from policies.schema import GpuHourPricing

runner = CliRunner()

BROKEN = """\
version: 1
models:
  small:
    provider: vllm
    endpoints: [not-a-url]
    pricing: {gpu_hour_usd: 2, input_tokens_per_second: 0, output_tokens_per_second: 10}
  remote:
    provider: litellm
    modle: openai/gpt-4o-mini
  odd:
    provider: tgi
routes:
  cheap:
    models: [small]
    stratgey: fixed
"""


def validate(tmp_path: Path, text: str) -> tuple[int, list[str]]:
    f = tmp_path / "policy.yaml"
    f.write_text(text)
    result = runner.invoke(app, ["policy", "validate", str(f)])
    return result.exit_code, [line.replace(str(f), "F") for line in result.output.splitlines()]


def test_example_policy_is_valid() -> None:
    result = runner.invoke(app, ["policy", "validate", str(example_policy_path())])
    assert result.exit_code == 0, result.output
    assert "ok (4 models, 6 routes)" in result.output


def test_every_problem_is_reported_with_line_and_column(tmp_path: Path) -> None:
    code, lines = validate(tmp_path, BROKEN)
    assert code == 1
    assert lines == [
        "F:5:17 models.small.endpoints[0]: Input should be a valid URL, relative URL without a base",
        "F:6:32 models.small.pricing.input_tokens_per_second: Input should be greater than 0",
        "F:8:5 models.remote.model: Field required",
        "F:9:5 models.remote.modle: Extra inputs are not permitted",
        "F:11:5 models.odd.provider: Input tag 'tgi' found using 'provider' does not match any of the "
        "expected tags: 'vllm', 'litellm'",
        "F:15:5 routes.cheap.stratgey: Extra inputs are not permitted",
    ]


def test_references_to_unknown_models(tmp_path: Path) -> None:
    text = """\
models:
  a:
    provider: vllm
    endpoints: [http://h:1/v1]
    pricing: {input_per_1m: 1, output_per_1m: 1}
    fallbacks: [a, b]
routes:
  r: {models: [a, zz]}
  a: {models: [a]}
"""
    code, lines = validate(tmp_path, text)
    assert code == 1
    assert lines == ["F:1:1 (policy): Value error, names used for both a model and a route: a"]
    code, lines = validate(tmp_path, text.replace("  a: {models: [a]}\n", ""))
    assert lines == [
        "F:6:17 models.a.fallbacks[0]: a model cannot fall back to itself",
        "F:6:20 models.a.fallbacks[1]: unknown model 'b'",
        "F:8:19 routes.r.models[1]: unknown model 'zz'",
    ]


def test_yaml_syntax_error_has_a_position(tmp_path: Path) -> None:
    code, lines = validate(tmp_path, "models:\n  a: [1, 2\n  b: 3\n")
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("F:3:") and "(yaml)" in lines[0]


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    result = runner.invoke(app, ["policy", "validate", str(tmp_path / "none.yaml")])
    assert result.exit_code == 1 and "none.yaml:1:1 (file): No such file" in result.output
    code, lines = validate(tmp_path, "- just\n- a list\n")
    assert code == 1 and lines == ["F:1:1 (policy): the policy must be a YAML mapping"]


def test_gpu_hour_price_becomes_a_token_price() -> None:
    p = GpuHourPricing(gpu_hour_usd=3.6, input_tokens_per_second=1000, output_tokens_per_second=100)
    tp = p.as_token_pricing()
    assert tp.input_per_1m == pytest.approx(1.0)  # $0.001/s over 1000 tokens/s, per 1M
    assert tp.output_per_1m == pytest.approx(10.0)


def test_parse_rejects_unknown_top_level_key() -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy("models: {}\nroutse: {}\n", "p.yaml")
    messages = [str(p) for p in exc.value.problems]
    assert "p.yaml:2:1 routse: Extra inputs are not permitted" in messages
    assert any(m.startswith("p.yaml:1:1 models:") for m in messages)


ROUTE_KINDS = """\
version: 1
models:
  a: {provider: vllm, endpoints: ["http://h/v1"], pricing: {input_per_1m: 1, output_per_1m: 2}}
  b:
    provider: vllm
    endpoints: ["http://h/v1"]
    pricing: {input_per_1m: 1, output_per_1m: 2}
    quality: 0.7
routes:
  r1: {kind: magic, models: [a]}
  r2: {kind: cost_aware, models: [b], pacing: {budget_usd: 5, period: year}}
"""


def test_route_kind_and_pacing_errors_name_the_field(tmp_path: Path) -> None:
    code, lines = validate(tmp_path, ROUTE_KINDS)
    assert code == 1
    assert lines == [
        "F:10:8 routes.r1.kind: kind must be 'fixed', 'cost_aware', 'learned', 'cascade', 'ead' "
        "or 'experiment'",
        "F:11:63 routes.r2.pacing.period: Input should be 'day', 'week' or 'month'",
    ]


def test_cost_aware_route_needs_model_qualities(tmp_path: Path) -> None:
    text = ROUTE_KINDS.replace("{kind: magic, models: [a]}", "{kind: cost_aware, models: [b, a]}")
    code, lines = validate(tmp_path, text.replace("period: year", "period: day"))
    assert code == 1
    assert lines == [
        "F:10:38 routes.r1.models[1]: model 'a' needs a `quality` (0..1) for a cost_aware route"
    ]


def test_access_settings_are_checked_with_line_and_column(tmp_path: Path) -> None:
    text = """\
version: 1
models:
  m: {provider: litellm, model: openai/x}
access:
  auth: maybe
  auth_failures: {limit: 0}
"""
    code, lines = validate(tmp_path, text)
    assert code == 1
    assert lines[0].startswith("F:5:3 access.auth: Input should be 'keys' or 'open'")
    assert (
        lines[1] == "F:6:19 access.auth_failures.limit: Input should be greater than or equal to 1"
    )


def test_timeout_settings_must_be_positive_and_name_the_field(tmp_path: Path) -> None:
    code, lines = validate(
        tmp_path,
        "version: 1\n"
        "defaults: {first_byte_timeout_s: 0, eject_after: 0}\n"
        "models:\n"
        "  m:\n"
        "    provider: vllm\n"
        "    endpoints: [http://h:8000/v1]\n"
        "    pricing: {input_per_1m: 1, output_per_1m: 1}\n"
        "    stream_idle_timeout_s: -1\n",
    )
    assert code == 1
    assert lines == [
        "F:2:12 defaults.first_byte_timeout_s: Input should be greater than 0",
        "F:2:37 defaults.eject_after: Input should be greater than or equal to 1",
        "F:8:5 models.m.stream_idle_timeout_s: Input should be greater than 0",
    ]
