"""Routing records from the request log: what `routegate routers train --from-log` trains on.

A logged request becomes one record (query_id = request id, query = the logged prompt, task =
the route, the model that answered, its cost and tokens) when it has a prompt (its route had
`log_prompts: true`) and feedback on that model. Its quality is, in this order: the explicit
feedback (source "user" or any source the gateway does not write itself), else the judge's,
else the other implicit signals (escalation, upstream_error, slo); several rows of the chosen
kind are averaged. A log gives one model per query: the records are partial, which the
routers that train on observed pairs only (knn, mf, complexity) accept.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from gateway.accounting.log_store import LogError, open_reader
from routers.records import RoutingRecord

JUDGE = "judge"
# What the gateway writes itself; any other source is a person's (or a client's) verdict.
IMPLICIT_SOURCES = frozenset({JUDGE, "escalation", "upstream_error", "slo"})
EXPLICIT, JUDGED, IMPLICIT = "explicit", "judge", "implicit"


@dataclass(slots=True)
class LogRecords:
    """The records, and what was left out and why."""

    records: list[RoutingRecord]
    quality_from: dict[str, int] = field(default_factory=dict)  # explicit | judge | implicit
    rows: int = 0  # requests in the log
    no_prompt: int = 0  # skipped: no prompt kept
    no_feedback: int = 0  # skipped: a prompt but no feedback on the answering model
    other_model_feedback: int = 0  # feedback rows on another model than the one that answered

    def jsonl(self) -> bytes:
        return b"".join(orjson.dumps(r.model_dump()) + b"\n" for r in self.records)


def quality_of(scores: dict[str, list[float]]) -> tuple[str, float] | None:
    """The quality a request's feedback gives (source -> scores), and which kind gave it."""
    explicit = [s for src, v in scores.items() if src not in IMPLICIT_SOURCES for s in v]
    if explicit:
        return EXPLICIT, sum(explicit) / len(explicit)
    if scores.get(JUDGE):
        return JUDGED, sum(scores[JUDGE]) / len(scores[JUDGE])
    implicit = [s for v in scores.values() for s in v]
    if implicit:
        return IMPLICIT, sum(implicit) / len(implicit)
    return None


def records_from_log(path: str | Path) -> LogRecords:
    """The log's requests with a prompt and feedback, as routing records. `path`: a SQLite
    file or a Postgres URL; ValueError names a log that cannot be read."""
    reader = open_reader(path)
    try:
        rows = [row for batch in reader.batches() for row in batch]
        found = reader.feedback()
    except LogError as exc:
        raise ValueError(str(exc).removeprefix(f"{reader.location}: ")) from None
    feedback: dict[str, list[dict[str, object]]] = defaultdict(list)
    for f in found:
        feedback[str(f["request_id"])].append(f)
    out = LogRecords([], rows=len(rows))
    for row in rows:
        # A log from before the prompt column has none: nothing to train on.
        if not row.get("prompt") or not row["model"]:
            out.no_prompt += 1
            continue
        scores: dict[str, list[float]] = defaultdict(list)
        for f in feedback.get(row["request_id"], []):
            if f["model"] in ("", row["model"]):
                scores[str(f["source"])].append(float(f["score"]))  # type: ignore[arg-type]
            else:
                out.other_model_feedback += 1
        got = quality_of(scores)
        if got is None:
            out.no_feedback += 1
            continue
        kind, quality = got
        out.quality_from[kind] = out.quality_from.get(kind, 0) + 1
        out.records.append(
            RoutingRecord(
                query_id=row["request_id"],
                query=row["prompt"],
                task=row["route"] or "log",
                model=row["model"],
                quality=min(1.0, max(0.0, quality)),
                cost_usd=max(0.0, float(row["cost_usd"] or 0.0)),
                input_tokens=max(0, int(row["prompt_tokens"] or 0)),
                output_tokens=max(0, int(row["completion_tokens"] or 0)),
            )
        )
    return out
