"""Build the shipped default training set: a deterministic, stratified subset of a routing
records file, every line copied byte for byte.

    python -m routers.data.build_default_set \\
        --source ../shared/data/routellm_mmlu_train.jsonl --out routers/data/default_train.jsonl

Only queries with a record for every model are eligible (a router learns from the comparison).
Each task gets a share of `--queries` proportional to its size (largest remainder, at least
one query each). Within a task, queries are ranked by sha256(seed:query_id) and the first ones
kept: the choice depends only on the seed and the ids, not on file order or library versions.
Also writes SOURCE.md and default_descriptions.json beside the output.
"""

from __future__ import annotations

import argparse
import hashlib
import math
from collections import Counter, defaultdict
from pathlib import Path

import orjson

from routers.records import file_sha256, load_records

DEFAULT_QUERIES = 2000
DEFAULT_SEED = 0

# The graph router places LLM nodes from these; plain facts, no benchmark numbers.
DESCRIPTIONS = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (
        "Mixtral 8x7B Instruct: an open-weight sparse mixture-of-experts model (8 experts of "
        "7B parameters, 2 active per token). Cheap and fast; decent general knowledge and "
        "reading comprehension, weaker at multi-step reasoning, mathematics and code."
    ),
    "gpt-4-1106-preview": (
        "GPT-4 Turbo (1106 preview): a large proprietary frontier model. The strongest and "
        "most expensive option; excellent reasoning, mathematics, science, code and "
        "professional knowledge."
    ),
}


def quotas(sizes: dict[str, int], total: int) -> dict[str, int]:
    """`total` split across tasks in proportion to `sizes`, each task at least one."""
    n = sum(sizes.values())
    total = min(total, n)
    exact = {t: total * s / n for t, s in sizes.items()}
    out = {t: min(sizes[t], max(1, math.floor(x))) for t, x in exact.items()}
    # Largest remainders first; ties by name so the result never depends on dict order.
    order = sorted(sizes, key=lambda t: (-(exact[t] - math.floor(exact[t])), t))
    while sum(out.values()) < total:
        grew = False
        for t in order:
            if sum(out.values()) >= total:
                break
            if out[t] < sizes[t]:
                out[t] += 1
                grew = True
        if not grew:
            break
    while sum(out.values()) > total:  # the at-least-one floor overshot: trim the largest
        t = max(out, key=lambda k: (out[k] - exact[k], k))
        out[t] -= 1
    return out


def _rank(seed: int, query_id: str) -> str:
    return hashlib.sha256(f"{seed}:{query_id}".encode()).hexdigest()


def select(lines: list[bytes], n_queries: int, seed: int) -> tuple[list[bytes], dict[str, int]]:
    """The chosen lines in source order, and the number of queries kept per task."""
    models: set[str] = set()
    by_query: dict[str, set[str]] = defaultdict(set)
    task_of: dict[str, str] = {}
    parsed = []
    for line in lines:
        if not line.strip():
            parsed.append(None)
            continue
        row = orjson.loads(line)
        parsed.append(row)
        models.add(row["model"])
        by_query[row["query_id"]].add(row["model"])
        task_of[row["query_id"]] = row["task"]
    complete = [q for q, ms in by_query.items() if ms == models]
    per_task: dict[str, list[str]] = defaultdict(list)
    for q in complete:
        per_task[task_of[q]].append(q)
    share = quotas({t: len(qs) for t, qs in per_task.items()}, n_queries)
    keep: set[str] = set()
    for task, qs in per_task.items():
        keep.update(sorted(qs, key=lambda q: _rank(seed, q))[: share[task]])
    chosen: list[bytes] = []
    written: set[tuple[str, str]] = set()
    for line, row in zip(lines, parsed, strict=True):
        if not row or row["query_id"] not in keep:
            continue
        pair = (row["query_id"], row["model"])
        if pair not in written:  # MMLU repeats some questions: keep the first copy only
            written.add(pair)
            chosen.append(line)
    return chosen, share


def _source_md(source: Path, out: Path, n_queries: int, seed: int, share: dict[str, int]) -> str:
    records = load_records(out)
    by_model: dict[str, list[float]] = defaultdict(list)
    cost: dict[str, list[float]] = defaultdict(list)
    for r in records:
        by_model[r.model].append(r.quality)
        cost[r.model].append(r.cost_usd)
    n_q = len({r.query_id for r in records})
    model_rows = "\n".join(
        f"| `{m}` | {len(v)} | {sum(v) / len(v):.3f} | {sum(cost[m]) / len(cost[m]):.2e} |"
        for m, v in sorted(by_model.items())
    )
    task_rows = ", ".join(f"{t.split('/', 1)[-1]} {k}" for t, k in sorted(share.items()))
    return f"""# Default routing records: source and construction

`default_train.jsonl` is what a router trains on when no other data is given. It is a subset
of real routing records, not synthetic data.

## Source

- **Data**: the public MMLU evaluation responses of [lm-sys/RouteLLM](https://github.com/lm-sys/RouteLLM)
  (`routellm/evals/mmlu/responses/*.csv`), converted to Routegate's record format
  (docs/routing-records.md). Licence: **Apache License 2.0** (the RouteLLM repository's). MMLU
  itself (Hendrycks et al., 2021) is released under the MIT licence.
- **Models**: `mistralai/Mixtral-8x7B-Instruct-v0.1` (weak, cheap) and `gpt-4-1106-preview`
  (strong, expensive), one record per (question, model).
- **Quality**: 1.0 when the model's answer letter was correct, 0.0 otherwise.
- **Tokens and cost are estimates**, not measurements: `input_tokens` = prompt characters / 4,
  `output_tokens` = 1 (the answer is one letter); `cost_usd` uses list prices per million
  tokens, GPT-4-1106 $10 input / $30 output, Mixtral-8x7B $0.24 / $0.24. They are facts about
  this data set, not about any provider's prices today: the gateway prices requests from its
  policy.

## Construction

Built from `{source.name}` (sha256 {file_sha256(source)[:16]}…) by

```
python -m routers.data.build_default_set --source {source} --out {out} \\
    --queries {n_queries} --seed {seed}
```

1. Only questions with a record for every model are eligible.
2. Each of the {len(share)} subjects (`task` = `mmlu/<subject>`) gets a share of the
   {n_queries} questions proportional to its size (largest remainder, at least one each).
3. Within a subject, questions are ranked by sha256(`"<seed>:<query_id>"`) and the first ones
   kept: deterministic, independent of file order and library versions.
4. The chosen lines are copied byte for byte, in source order; where the source repeats a
   (query_id, model) line (MMLU has a few duplicate questions), only the first copy is kept.

Result: {n_q} questions, {len(records)} records, sha256 {file_sha256(out)[:16]}….

| model | records | mean quality | mean cost (USD) |
|---|---|---|---|
{model_rows}

Questions per subject: {task_rows}.

`default_descriptions.json` (one plain-language description per model, for the graph router's
LLM nodes) is written by the same script.

## Caveat

All of it is four-option multiple choice on 36 MMLU subjects. A router trained only on it has
seen no open-ended, code-writing or conversational prompts; judge it on held-out subjects
(`split_by_task`) before trusting it elsewhere, and train on your own records where you can.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=DEFAULT_QUERIES)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)

    load_records(args.source)  # refuse a bad source with its file:line:field message
    lines = args.source.read_bytes().splitlines()
    chosen, share = select(lines, args.queries, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(b"".join(line + b"\n" for line in chosen))
    (args.out.parent / "default_descriptions.json").write_bytes(
        orjson.dumps(DESCRIPTIONS, option=orjson.OPT_INDENT_2) + b"\n"
    )
    (args.out.parent / "SOURCE.md").write_text(
        _source_md(args.source, args.out, args.queries, args.seed, share)
    )
    per_model = Counter(orjson.loads(line)["model"] for line in chosen)
    size_mb = args.out.stat().st_size / 1e6
    print(f"{args.out}: {sum(share.values())} queries, {len(chosen)} records, {size_mb:.2f} MB")
    for model, n in sorted(per_model.items()):
        print(f"  {model}: {n}")


if __name__ == "__main__":
    main()
