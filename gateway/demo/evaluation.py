"""`routegate demo eval`: the built-in questions answered through a running gateway.

Every question goes through each route asked for and through each model those routes use,
called by name (the answers that become routing records). Calls are made with the official
`openai` SDK, as a user's code would, at temperature 0. What each answer cost, which model gave
it and which models a cascade called come from the gateway's `x-routegate-*` response headers;
an EAD route's split between its models from `usage.models`.

The run writes, under its output folder:
- `results.json`: per route and per model, accuracy (overall and per task), cost, cost against
  the strong route, latency, and which models answered;
- `answers.jsonl`: every reply, checked;
- `records.jsonl`: the models' own answers as routing records (docs/routing-records.md), which
  `routegate routers train --data` takes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import openai
import orjson

from gateway.demo.eval_questions import TASKS, Question
from gateway.dialects.base import H_COST
from gateway.pipeline.respond import H_CACHE, H_MODEL, H_STEPS

Kind = Literal["route", "model"]


class EvalError(RuntimeError):
    """Why the evaluation cannot run (gateway unreachable, a name the policy lacks): one line."""


@dataclass(frozen=True, slots=True)
class Target:
    """A name to send as `model`: a route of the policy, or one of its models called directly."""

    name: str
    kind: Kind
    strategy: str  # a route's kind (fixed, learned, cascade, ead...); "model" for a model
    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EvalConfig:
    base_url: str
    api_key: str | None
    routes: tuple[str, ...]
    models: tuple[str, ...] | None  # None: every model the routes use
    strong_route: str
    concurrency: int = 4
    max_tokens: int = 24
    timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class Reply:
    """One question answered (or not) through one target."""

    target: str
    question: Question
    text: str
    correct: bool
    model: str  # who answered, per the gateway ("" when the call failed)
    steps: tuple[str, ...]  # a cascade's models called, in order
    cost_usd: float
    latency_s: float
    input_tokens: int
    output_tokens: int
    model_tokens: dict[str, int]  # EAD: completion tokens per model (usage.models)
    cache: str | None
    error: str | None

    def row(self, kind: Kind) -> dict[str, Any]:
        q = self.question
        return {
            "target": self.target,
            "kind": kind,
            "question_id": q.id,
            "task": q.task,
            "prompt": q.prompt,
            "expected": q.answer.expected,
            "reply": self.text,
            "correct": self.correct,
            "model": self.model,
            "steps": list(self.steps),
            "cost_usd": self.cost_usd,
            "latency_s": round(self.latency_s, 4),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache": self.cache,
            "error": self.error,
        }


@dataclass(slots=True)
class Summary:
    """A target's figures over the questions it was asked."""

    target: Target
    asked: int = 0
    correct: int = 0
    errors: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    escalated: int = 0  # answers that took more than one model (cascade steps)
    cache_hits: int = 0
    answered_by: Counter[str] = field(default_factory=Counter)
    model_tokens: Counter[str] = field(default_factory=Counter)
    tasks: dict[str, list[int]] = field(default_factory=dict)  # task -> [correct, asked]
    cost_vs_strong: float | None = None

    def add(self, reply: Reply) -> None:
        self.asked += 1
        self.correct += reply.correct
        self.cost_usd += reply.cost_usd
        self.latency_s += reply.latency_s
        per_task = self.tasks.setdefault(reply.question.task, [0, 0])
        per_task[0] += reply.correct
        per_task[1] += 1
        if reply.error is not None:
            self.errors += 1
            return
        self.answered_by[reply.model] += 1
        self.escalated += len(reply.steps) > 1
        self.cache_hits += reply.cache == "hit"
        self.model_tokens.update(reply.model_tokens)

    @property
    def accuracy(self) -> float:
        return self.correct / self.asked if self.asked else 0.0

    @property
    def mean_latency_s(self) -> float:
        return self.latency_s / self.asked if self.asked else 0.0

    def shares(self) -> dict[str, float]:
        """Who answered: for EAD each model's share of the completion tokens, else of answers."""
        counts = self.model_tokens if self.target.strategy == "ead" else self.answered_by
        total = sum(counts.values())
        return {m: n / total for m, n in counts.most_common()} if total else {}

    def as_json(self) -> dict[str, Any]:
        t = self.target
        return {
            "kind": t.kind,
            "strategy": t.strategy,
            "models": list(t.models),
            "asked": self.asked,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "errors": self.errors,
            "cost_usd": self.cost_usd,
            "cost_vs_strong": self.cost_vs_strong,
            "mean_latency_s": self.mean_latency_s,
            "share_by": "completion_tokens" if t.strategy == "ead" else "answers",
            "shares": self.shares(),
            # Answers a cascade escalated (more than one step); other kinds do not escalate.
            "escalated": self.escalated if t.strategy == "cascade" else None,
            "cache_hits": self.cache_hits,
            "tasks": {
                task: {"correct": c, "asked": n, "accuracy": c / n}
                for task in TASKS
                if task in self.tasks
                for c, n in [self.tasks[task]]
            },
        }


@dataclass(slots=True)
class EvalResult:
    config: EvalConfig
    questions: list[Question]
    targets: list[Target]
    replies: list[Reply]
    summaries: dict[str, Summary]
    duration_s: float
    request_seed: int

    def routes(self) -> list[Summary]:
        return [self.summaries[t.name] for t in self.targets if t.kind == "route"]

    def models(self) -> list[Summary]:
        return [self.summaries[t.name] for t in self.targets if t.kind == "model"]


def _client(config: EvalConfig) -> openai.AsyncOpenAI:
    # An open gateway takes any key; the SDK insists on one. No SDK retries: a failed call is
    # a failed answer here, and a retry would be paid for twice.
    return openai.AsyncOpenAI(
        base_url=config.base_url,
        api_key=config.api_key or "unused",
        timeout=config.timeout_s,
        max_retries=0,
    )


async def discover(client: openai.AsyncOpenAI, config: EvalConfig) -> list[Target]:
    """The routes asked for and the models to call directly, checked against GET /v1/models."""
    try:
        listed = [m async for m in client.models.list()]
    except openai.APIConnectionError:
        raise EvalError(f"cannot reach the gateway at {config.base_url}") from None
    except openai.APIStatusError as exc:
        raise EvalError(
            f"{config.base_url}/models answered {exc.status_code}: {_message(exc)}"
        ) from None
    about = {m.id: (m.model_extra or {}).get("routegate") for m in listed}
    if not any(isinstance(a, dict) for a in about.values()):
        raise EvalError(f"{config.base_url} is not a Routegate gateway (GET /models)")
    routes = {n: a for n, a in about.items() if isinstance(a, dict) and a.get("kind") == "route"}
    models = {n for n, a in about.items() if isinstance(a, dict) and a.get("kind") == "model"}
    missing = [r for r in config.routes if r not in routes]
    if missing:
        raise EvalError(
            f"route {missing[0]!r} is not in the gateway's policy (its routes: "
            f"{', '.join(sorted(routes)) or 'none'})"
        )
    if config.strong_route not in config.routes:
        raise EvalError(f"--strong-route {config.strong_route!r} is not one of --routes")
    targets = [
        Target(r, "route", str(routes[r].get("strategy")), tuple(routes[r].get("models") or ()))
        for r in config.routes
    ]
    if config.models is None:  # every model the routes use, in the order they name them
        direct = list(dict.fromkeys(m for t in targets for m in t.models if m in models))
    else:
        unknown = [m for m in config.models if m not in models]
        if unknown:
            raise EvalError(
                f"model {unknown[0]!r} is not in the gateway's policy (its models: "
                f"{', '.join(sorted(models)) or 'none'})"
            )
        direct = list(config.models)
    return targets + [Target(m, "model", "model", (m,)) for m in direct]


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return exc.message


async def ask(
    client: openai.AsyncOpenAI, target: Target, question: Question, config: EvalConfig, seed: int
) -> Reply:
    """One question through one target, with what the gateway says it cost and who answered."""
    started = time.perf_counter()
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=target.name,
            messages=[{"role": "user", "content": question.prompt}],
            temperature=0,
            max_tokens=config.max_tokens,
            # Greedy decoding ignores the seed, but the response cache keys on it: a fresh seed
            # per run makes every answer a real call, so the costs are the models', not a cache's.
            seed=seed,
        )
    except openai.APIStatusError as exc:
        cost = _cost(exc.response.headers.get(H_COST))
        error = f"{exc.status_code}: {_message(exc)}"
        return _failed(target, question, error, cost, time.perf_counter() - started)
    except openai.APIConnectionError as exc:
        error = f"{type(exc).__name__}: {exc}"
        return _failed(target, question, error, 0.0, time.perf_counter() - started)
    latency = time.perf_counter() - started
    completion = raw.parse()
    text = (completion.choices[0].message.content or "") if completion.choices else ""
    usage = completion.usage
    per_model = (usage.model_extra or {}).get("models") if usage is not None else None
    tokens = {
        str(m): int(u.get("completion_tokens") or 0)
        for m, u in (per_model or {}).items()
        if isinstance(u, dict)
    }
    steps = raw.headers.get(H_STEPS)
    return Reply(
        target.name,
        question,
        text,
        question.check(text),
        raw.headers.get(H_MODEL, ""),
        tuple(steps.split(",")) if steps else (),
        _cost(raw.headers.get(H_COST)),
        latency,
        usage.prompt_tokens if usage is not None else 0,
        usage.completion_tokens if usage is not None else 0,
        tokens,
        raw.headers.get(H_CACHE),
        None,
    )


def _cost(header: str | None) -> float:
    try:
        return max(0.0, float(header)) if header else 0.0
    except ValueError:
        return 0.0


def _failed(target: Target, q: Question, error: str, cost: float, latency: float) -> Reply:
    return Reply(target.name, q, "", False, "", (), cost, latency, 0, 0, {}, None, error)


async def evaluate(
    config: EvalConfig,
    questions: list[Question],
    *,
    on_start: Callable[[int], None] | None = None,
    on_reply: Callable[[Reply], None] | None = None,
) -> EvalResult:
    """Every question through every target, `config.concurrency` calls at a time."""
    started = time.monotonic()
    seed = secrets.randbelow(2**31)
    async with _client(config) as client:
        targets = await discover(client, config)
        # Question by question, all targets: a run stopped early has judged them alike.
        jobs = iter([(t, q) for q in questions for t in targets])
        if on_start is not None:
            on_start(len(questions) * len(targets))
        replies: list[Reply] = []

        async def worker() -> None:
            for target, question in jobs:
                reply = await ask(client, target, question, config, seed)
                replies.append(reply)
                if on_reply is not None:
                    on_reply(reply)

        await asyncio.gather(*(worker() for _ in range(max(1, config.concurrency))))
    order = {q.id: i for i, q in enumerate(questions)}
    replies.sort(key=lambda r: (order[r.question.id], r.target))
    summaries = summarize(targets, replies, config.strong_route)
    return EvalResult(
        config, questions, targets, replies, summaries, time.monotonic() - started, seed
    )


def summarize(
    targets: list[Target], replies: Iterable[Reply], strong_route: str
) -> dict[str, Summary]:
    """Each target's figures; costs also as a multiple of the strong route's."""
    summaries = {t.name: Summary(t) for t in targets}
    for reply in replies:
        summaries[reply.target].add(reply)
    strong = summaries[strong_route].cost_usd
    for summary in summaries.values():
        summary.cost_vs_strong = summary.cost_usd / strong if strong > 0 else None
    return summaries


def record_rows(result: EvalResult) -> Iterable[dict[str, Any]]:
    """The models' own answers as routing records. A call the model did not answer itself (an
    error, or its fallback answered) says nothing about the model, so it is left out."""
    direct = {t.name for t in result.targets if t.kind == "model"}
    for r in result.replies:
        if r.target not in direct or r.error is not None or r.model != r.target:
            continue
        yield {
            "query_id": r.question.id,
            "query": r.question.prompt,
            "task": f"demo/{r.question.task}",
            "model": r.target,
            "quality": 1.0 if r.correct else 0.0,
            "cost_usd": r.cost_usd,
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "answer": r.text,  # extra fields are ignored by the loader, kept for reading
        }


def write_outputs(result: EvalResult, out_dir: Path) -> dict[str, Path]:
    """results.json, answers.jsonl and records.jsonl under `out_dir`; their paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = result.config
    kinds = {t.name: t.kind for t in result.targets}
    tasks = Counter(q.task for q in result.questions)
    results = {
        "base_url": config.base_url,
        "questions": len(result.questions),
        "tasks": {t: tasks[t] for t in TASKS if t in tasks},
        "max_tokens": config.max_tokens,
        "temperature": 0,
        "request_seed": result.request_seed,
        "strong_route": config.strong_route,
        "duration_s": round(result.duration_s, 3),
        "routes": {s.target.name: s.as_json() for s in result.routes()},
        "models": {s.target.name: s.as_json() for s in result.models()},
    }
    paths = {
        "results": out_dir / "results.json",
        "answers": out_dir / "answers.jsonl",
        "records": out_dir / "records.jsonl",
    }
    paths["results"].write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    paths["answers"].write_bytes(
        b"".join(orjson.dumps(r.row(kinds[r.target])) + b"\n" for r in result.replies)
    )
    paths["records"].write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in record_rows(result)))
    return paths
