"""Routing records: the one data format every router trains and is judged on.

JSONL, one line per (query, model) pair:
`{"query_id", "query", "task", "model", "quality" (0..1), "cost_usd", "input_tokens",
"output_tokens"}`. Model descriptions, optional, come in a side file (JSON object or JSONL of
`{"model", "description"}`). See docs/routing-records.md.

`RecordTable` pivots records into query x model matrices (NaN where a pair is missing), the
shape every router and the evaluator work on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class RecordError(ValueError):
    """A bad records file: the message names the file, the line and the field."""


class RoutingRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    query_id: str = Field(min_length=1)
    query: str
    task: str = Field(min_length=1)
    model: str = Field(min_length=1)
    quality: float = Field(ge=0, le=1)
    cost_usd: float = Field(ge=0)
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)


def load_records(path: str | Path) -> list[RoutingRecord]:
    """Every record of a JSONL file, or RecordError naming the first bad line and field."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise RecordError(f"{path}: cannot read: {exc.strerror or exc}") from None
    records: list[RoutingRecord] = []
    seen: dict[tuple[str, str], tuple[int, RoutingRecord]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise RecordError(f"{path}:{number}: not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RecordError(f"{path}:{number}: expected a JSON object")
        try:
            record = RoutingRecord.model_validate(data)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in err["loc"]) or "(record)"
            raise RecordError(f"{path}:{number}: {field}: {err['msg']}") from None
        pair = (record.query_id, record.model)
        if pair in seen:
            first_line, first = seen[pair]
            if first == record:
                continue  # an exact copy of an earlier line (public data sets have some)
            raise RecordError(
                f"{path}:{number}: query_id: ({record.query_id!r}, {record.model!r}) "
                f"differs from line {first_line}"
            )
        seen[pair] = (number, record)
        records.append(record)
    if not records:
        raise RecordError(f"{path}: no records")
    return records


def load_descriptions(path: str | Path) -> dict[str, str]:
    """Model -> description, from a JSON object or JSONL of {"model", "description"}."""
    path = Path(path)
    text = path.read_bytes()
    try:
        data = orjson.loads(text)
        # A JSON object maps model -> description, unless it is a one-line JSONL file.
        if isinstance(data, dict) and set(data) != {"model", "description"}:
            return {str(k): str(v) for k, v in data.items()}
    except orjson.JSONDecodeError:
        pass
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
            out[str(row["model"])] = str(row["description"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise RecordError(
                f'{path}:{number}: expected {{"model": ..., "description": ...}}'
            ) from None
    return out


def source_names(paths: list[str | Path]) -> list[str]:
    """Each file's name as a slice of the records: its stem, with its place where two clash."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}#{i + 1}" for i, s in enumerate(stems)]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class RecordTable:
    """Records as matrices: row i is query `query_ids[i]`, column j is model `models[j]`."""

    query_ids: list[str]
    queries: list[str]
    tasks: list[str]
    models: list[str]
    quality: np.ndarray  # [n_queries, n_models], NaN where the pair is missing
    cost: np.ndarray  # [n_queries, n_models] USD, NaN where missing
    input_tokens: np.ndarray  # [n_queries] (the first record's count for the query)
    output_tokens: np.ndarray  # [n_queries, n_models], NaN where missing
    sources: list[str] | None = None  # per query, the file it came from (slices in evaluation)

    @classmethod
    def from_records(cls, records: list[RoutingRecord]) -> RecordTable:
        models = sorted({r.model for r in records})
        col = {m: j for j, m in enumerate(models)}
        row: dict[str, int] = {}
        queries: list[str] = []
        tasks: list[str] = []
        inputs: list[int] = []
        for r in records:
            if r.query_id not in row:
                row[r.query_id] = len(row)
                queries.append(r.query)
                tasks.append(r.task)
                inputs.append(r.input_tokens)
        shape = (len(row), len(models))
        quality = np.full(shape, np.nan)
        cost = np.full(shape, np.nan)
        out_tokens = np.full(shape, np.nan)
        for r in records:
            i, j = row[r.query_id], col[r.model]
            quality[i, j], cost[i, j], out_tokens[i, j] = r.quality, r.cost_usd, r.output_tokens
        return cls(
            list(row), queries, tasks, models, quality, cost, np.array(inputs, float), out_tokens
        )

    @classmethod
    def load(cls, path: str | Path) -> RecordTable:
        return cls.from_records(load_records(path))

    @classmethod
    def load_many(cls, paths: list[str | Path]) -> RecordTable:
        """The records of several files as one table (a query need not have every model: files
        may name disjoint model sets); `sources` says which file each query came from, named
        by its stem (with its index where two stems are alike)."""
        records: list[RoutingRecord] = []
        origin: dict[str, str] = {}
        for path, name in zip(paths, source_names(paths), strict=True):
            for r in load_records(path):
                records.append(r)
                origin.setdefault(r.query_id, name)
        table = cls.from_records(records)
        table.sources = [origin[q] for q in table.query_ids]
        return table

    def __len__(self) -> int:
        return len(self.query_ids)

    def subset(self, rows: np.ndarray | list[int]) -> RecordTable:
        idx = np.asarray(rows, dtype=int)
        return RecordTable(
            [self.query_ids[i] for i in idx],
            [self.queries[i] for i in idx],
            [self.tasks[i] for i in idx],
            list(self.models),
            self.quality[idx],
            self.cost[idx],
            self.input_tokens[idx],
            self.output_tokens[idx],
            None if self.sources is None else [self.sources[i] for i in idx],
        )

    def drop_models(self, drop: list[str]) -> RecordTable:
        """The table without the columns of `drop`, and without queries left with no record."""
        keep = [j for j, m in enumerate(self.models) if m not in drop]
        out = RecordTable(
            list(self.query_ids),
            list(self.queries),
            list(self.tasks),
            [self.models[j] for j in keep],
            self.quality[:, keep],
            self.cost[:, keep],
            self.input_tokens.copy(),
            self.output_tokens[:, keep],
            None if self.sources is None else list(self.sources),
        )
        return out.subset(np.flatnonzero(~np.isnan(out.quality).all(axis=1)))

    def source_of(self, i: int) -> str:
        return "records" if self.sources is None else self.sources[i]

    def complete_rows(self) -> np.ndarray:
        """Rows with a record for every model: the only ones a replay can judge fairly."""
        return np.flatnonzero(~np.isnan(self.quality).any(axis=1))


def split_by_query(
    table: RecordTable, seed: int, test_fraction: float = 0.3
) -> tuple[RecordTable, RecordTable]:
    """Train and test tables with no query in both."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(table))
    n_test = round(len(table) * test_fraction)
    return table.subset(np.sort(order[n_test:])), table.subset(np.sort(order[:n_test]))


def task_folds(test_fraction: float) -> int:
    """How many seeds hold out every task once in a task split."""
    return max(2, round(1 / test_fraction))


def split_by_task(
    table: RecordTable, seed: int, test_fraction: float = 0.3
) -> tuple[RecordTable, RecordTable]:
    """Train and test tables with no task (subject) in both: for judging induction to tasks
    never seen in training. Tasks are dealt into `task_folds(test_fraction)` folds (no more
    than the most tasks a file has, so none is left empty), within each source file
    separately, and seed s holds out fold s mod folds (reshuffled every round), so seeds
    0..folds-1 hold out every task exactly once."""
    by_source = {
        source: sorted({t for i, t in enumerate(table.tasks) if table.source_of(i) == source})
        for source in sorted({table.source_of(i) for i in range(len(table))})
    }
    most = max((len(tasks) for tasks in by_source.values()), default=0)
    folds = max(2, min(task_folds(test_fraction), most))
    rng = np.random.default_rng(seed // folds)
    held: set[str] = set()
    for tasks in by_source.values():
        order = list(rng.permutation(tasks))
        offset = int(rng.integers(folds))  # so one-task-short folds are not always the last
        held |= {t for i, t in enumerate(order) if (i + offset) % folds == seed % folds}
    test = [i for i, t in enumerate(table.tasks) if t in held]
    train = [i for i, t in enumerate(table.tasks) if t not in held]
    return table.subset(train), table.subset(test)
