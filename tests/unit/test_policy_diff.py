"""`routegate policy diff`: every kind of change said in words, invalid files named by line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from gateway.cli import app
from policies.diff import diff_policies
from policies.loader import parse_policy

OLD = """
version: 1
defaults: {timeout_s: 60}
models:
  small:
    provider: vllm
    endpoints: [http://10.0.0.1:8000/v1]
    pricing: {input_per_1m: 1, output_per_1m: 2}
    quality: 0.5
  large:
    provider: vllm
    endpoints: [http://10.0.0.2:8000/v1]
    pricing: {gpu_hour_usd: 3.6, input_tokens_per_second: 1000, output_tokens_per_second: 100}
    quality: 0.9
  remote:
    provider: litellm
    model: openai/gpt-4o
routes:
  cheap:
    models: [small, large]
  smart:
    kind: cost_aware
    models: [small, large]
    lambda: 100
    pacing: {budget_usd: 10, period: day}
  casc:
    kind: cascade
    models: [small, large]
    confidence: {method: mean_logprob, threshold: -1.0}
  gone:
    models: [remote]
"""

NEW = """
version: 1
defaults: {timeout_s: 30}
models:
  small:
    provider: vllm
    endpoints: [http://10.0.0.1:8000/v1, http://10.0.0.3:8000/v1]
    pricing: {input_per_1m: 1.5, output_per_1m: 2}
    quality: 0.5
  large:
    provider: vllm
    endpoints: [http://10.0.0.2:8000/v1]
    pricing: {gpu_hour_usd: 3.6, input_tokens_per_second: 1000, output_tokens_per_second: 100}
    quality: 0.9
  mid:
    provider: litellm
    model: openai/gpt-4o-mini
    pricing: {input_per_1m: 0.15, output_per_1m: 0.6}
    quality: 0.7
routes:
  cheap:
    models: [large, small]
    cache: {eviction: lru, scope: team}
  smart:
    kind: cost_aware
    models: [small, mid, large]
    lambda: 150
    pacing: {budget_usd: 12.5, period: week}
  casc:
    kind: cascade
    models: [small, large]
    confidence: {method: mean_logprob, threshold: -0.5}
  fresh:
    models: [mid]
"""

EXPECTED = [
    "Model mid added (litellm, $0.15 in / $0.6 out per 1M tokens).",
    "Model remote removed (was litellm, litellm's cost map).",
    "Price of small: input $1 → $1.5 per 1M tokens (+50.0%).",
    "Model small: endpoint http://10.0.0.3:8000/v1 added.",
    "Route fresh added (fixed: mid).",
    "Route gone removed (was fixed: remote).",
    "Route cheap: model order small > large → large > small.",
    "Route cheap: cache added ({eviction: lru, max_bytes: 67108864, ttl_s: 3600, scope: team, "
    "cache_sampled: False}).",
    "Route smart: models added: mid.",
    "Route smart: pacing budget_usd 10 → 12.5 (+25.0%).",
    "Route smart: pacing period day → week.",
    "Route smart: lambda 100 → 150 (+50.0%).",
    "Route casc: confidence threshold -1 → -0.5 (-50.0%).",
    "Defaults: timeout_s 60 → 30.",
]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_change_is_said_once() -> None:
    changes = diff_policies(parse_policy(OLD), parse_policy(NEW))
    assert sorted(c.text for c in changes) == sorted(EXPECTED)
    price = next(c for c in changes if c.section == "price")
    assert (price.subject, price.old["input_per_1m"], price.new["input_per_1m"]) == (
        "small",
        1.0,
        1.5,
    )


def test_cli_prints_the_sentences(tmp_path: Path) -> None:
    old, new = _write(tmp_path, "old.yaml", OLD), _write(tmp_path, "new.yaml", NEW)
    result = CliRunner().invoke(app, ["policy", "diff", str(old), str(new)])
    assert result.exit_code == 0, result.output
    assert sorted(result.stdout.splitlines()) == sorted(EXPECTED)


def test_cli_json_is_structured(tmp_path: Path) -> None:
    old, new = _write(tmp_path, "old.yaml", OLD), _write(tmp_path, "new.yaml", NEW)
    result = CliRunner().invoke(app, ["policy", "diff", str(old), str(new), "--json"])
    assert result.exit_code == 0, result.output
    changes = json.loads(result.stdout)
    removed = [c for c in changes if c["action"] == "removed"]
    assert {(c["section"], c["subject"]) for c in removed} == {
        ("model", "remote"),
        ("route", "gone"),
    }


def test_no_changes(tmp_path: Path) -> None:
    old = _write(tmp_path, "old.yaml", OLD)
    result = CliRunner().invoke(app, ["policy", "diff", str(old), str(old)])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"No changes between {old} and {old}."


def test_gpu_hour_price_changes_are_per_token(tmp_path: Path) -> None:
    new = OLD.replace("gpu_hour_usd: 3.6,", "gpu_hour_usd: 7.2,")
    changes = [c.text for c in diff_policies(parse_policy(OLD), parse_policy(new))]
    # 3.6 $/h over 1000 in / 100 out tokens/s = $1 / $10 per 1M tokens.
    assert changes == [
        "Price of large: input $1 → $2 per 1M tokens (+100.0%); "
        "output $10 → $20 per 1M tokens (+100.0%)."
    ]


def test_kind_change_and_removed_pacing() -> None:
    new = OLD.replace(
        "  smart:\n    kind: cost_aware\n    models: [small, large]\n    lambda: 100\n"
        "    pacing: {budget_usd: 10, period: day}\n",
        "  smart:\n    kind: cost_aware\n    models: [small, large]\n    lambda: 100\n",
    ).replace(
        "  cheap:\n    models: [small, large]\n",
        "  cheap:\n    kind: cost_aware\n    models: [small, large]\n",
    )
    texts = [c.text for c in diff_policies(parse_policy(OLD), parse_policy(new))]
    assert texts == [
        "Route cheap: kind fixed → cost_aware (fixed: small > large → cost_aware: small > large).",
        "Route smart: pacing removed (was {budget_usd: 10, period: day, plan: uniform, "
        "update_interval_s: 5, min_multiplier: 0.1, max_multiplier: 100}).",
    ]


def test_invalid_file_gives_file_line_col_and_exit_1(tmp_path: Path) -> None:
    old = _write(tmp_path, "old.yaml", OLD)
    bad = _write(tmp_path, "bad.yaml", OLD.replace("lambda: 100", "lambda: -1"))
    result = CliRunner().invoke(app, ["policy", "diff", str(old), str(bad)])
    assert result.exit_code == 1
    line = next(i for i, text in enumerate(OLD.splitlines(), 1) if "lambda: 100" in text)
    assert result.stdout.startswith(f"{bad}:{line}:5 routes.smart.lambda: ")
