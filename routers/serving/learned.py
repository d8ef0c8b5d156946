"""A learned route in the gateway: a trained predictor scores the request's candidate models,
and the shared objective picks one.

Predicted quality comes from the router artifact; expected cost from this policy's prices
(the training records' prices describe the data, not what this gateway pays). Scoring runs in
a worker thread through a micro-batcher, never on the event loop.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from policies.pricing import CostFn
from policies.schema import LearnedRoute, Policy
from routers.predictors import artifact
from routers.predictors.base import Predictor, Queries
from routers.predictors.contexts import Contexts
from routers.serving.base import RouteContext, RoutingDecision, answers
from routers.serving.batcher import MicroBatcher
from routers.serving.objective import lead_of, rank_models
from routers.serving.online import OnlineLayer

_cache_lock = threading.Lock()
_loaded: dict[tuple[str, float], Predictor] = {}


def serve_single_threaded() -> None:
    """Serving multiplies one query by small matrices: BLAS threads only contend with the
    event loop and the embedder (measured: 8 ms per call with 2 OpenBLAS threads on a busy
    2-core machine, 0.04 ms with one)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def load_predictor(directory: Path) -> Predictor:
    """An artifact, loaded once per process while its manifest is unchanged (policy reloads
    that keep the same router cost nothing)."""
    serve_single_threaded()
    manifest = directory / artifact.MANIFEST
    key = (str(directory.resolve()), manifest.stat().st_mtime)
    with _cache_lock:
        if key not in _loaded:
            _loaded[key] = artifact.load(directory)
        return _loaded[key]


def request_text(body: dict[str, Any]) -> str:
    """What the router reads: the last user message of a chat, or the prompt."""
    messages = body.get("messages")
    if messages is not None:
        for message in reversed(messages):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return ""
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else str(prompt)


class LearnedRouter:
    def __init__(
        self,
        config: LearnedRoute,
        predictor: Predictor,
        policy: Policy,
        prices: dict[str, CostFn],
        online: OnlineLayer | None = None,
        contexts: Contexts | None = None,
    ):
        self._config = config
        self.online = online
        # Without an online layer nobody reads the context: it is not computed.
        self._contexts = contexts if online is not None else None
        self._predictor = predictor
        self._models = list(config.models)
        self._names = [config.model_map.get(m, m) for m in self._models]
        add_model = getattr(predictor, "add_model", None)
        for model, name in zip(self._models, self._names, strict=True):
            if name not in predictor.models and add_model is not None:
                # Inductive: a model known only by its description joins without retraining.
                add_model(name, policy.models[model].description or model)
        self._prices = {m: prices.get(m) for m in self._models}
        # Each model's quality on average (the guard's prior), logged beside the predictions
        # so a simulated policy can replay a `lead`; the lead goes to the best of them.
        prior = getattr(predictor, "prior", None)
        self._prior = (
            dict(zip(self._models, map(float, prior(self._names)), strict=True))
            if prior is not None
            else {}
        )
        self._lead = lead_of(self._prior, config.lead)
        self._batcher: MicroBatcher[tuple[str, int], tuple[np.ndarray, int]] = MicroBatcher(
            self._score
        )

    def _score(self, items: list[tuple[str, int]]) -> list[tuple[np.ndarray, int]]:
        """Each item's predicted quality per model, and its context (0 without contexts)."""
        queries = Queries(
            [text for text, _ in items],
            [None] * len(items),
            np.array([tokens for _, tokens in items], dtype=float),
        )
        quality = self._predictor.predict_quality(queries, self._names)
        if self._contexts is None:
            return [(row, 0) for row in quality]
        contexts = self._contexts.of_queries(queries)  # the predictor's embeddings, reused
        return [(row, int(c)) for row, c in zip(quality, contexts, strict=True)]

    def warm_up(self) -> None:
        """Load the embedding model and run one prediction before the first request."""
        self._score([("warm up", 2)])

    async def route(self, body: dict[str, Any], ctx: RouteContext) -> RoutingDecision:
        quality, context = await self._batcher.submit((request_text(body), ctx.prompt_tokens))
        completion = int(
            body.get("max_tokens")
            or body.get("max_completion_tokens")
            or self._config.expected_output_tokens
        ) * answers(body)
        predictions: dict[str, dict[str, float]] = {}
        for j, model in enumerate(self._models):
            price = self._prices[model]
            cost = price(ctx.prompt_tokens, completion, None) if price is not None else 0.0
            predictions[model] = {"quality": float(quality[j]), "cost_usd": cost}
            if self._prior:
                predictions[model]["prior"] = self._prior[model]
        lam = self._config.lambda_ * ctx.price_multiplier
        floor = self._config.quality_floor
        if self.online is None:
            return RoutingDecision(rank_models(predictions, lam, floor, self._lead), predictions)
        choice = self.online.choose(context, predictions, lam, floor, self._lead)
        offline = {m: p["quality"] for m, p in predictions.items()}
        notes = {"context": context, "explored": choice.explored, "offline": offline}
        return RoutingDecision(choice.models, choice.predictions, online=notes)
