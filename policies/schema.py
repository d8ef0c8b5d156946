"""The policy file's schema: models, routes and defaults.

Everything the gateway does per request is decided from a validated `Policy`;
nothing is parsed on the hot path.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    HttpUrl,
    PrivateAttr,
    Tag,
    model_validator,
)

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:/@-]+$")]


class _Strict(BaseModel):
    # A typo in a policy key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenPricing(_Strict):
    """List price in USD per one million tokens."""

    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)
    # Prompt tokens the upstream read from its prefix cache. Unset: litellm's cache-read
    # price for a remote model where its map has one, else input_per_1m (no discount).
    cached_input_per_1m: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _cached_not_dearer(self) -> TokenPricing:
        # A cache read is never dearer than the prefill it saves: a larger number is a typo.
        if self.cached_input_per_1m is not None and self.cached_input_per_1m > self.input_per_1m:
            raise ValueError("cached_input_per_1m must not exceed input_per_1m")
        return self


class GpuHourPricing(_Strict):
    """A local model's cost: the GPU-hour price spread over the server's token throughput."""

    gpu_hour_usd: float = Field(gt=0)
    input_tokens_per_second: float = Field(gt=0, description="prefill throughput of one endpoint")
    output_tokens_per_second: float = Field(gt=0, description="decode throughput of one endpoint")

    def as_token_pricing(self) -> TokenPricing:
        per_second = self.gpu_hour_usd / 3600.0
        # The GPU time a prompt costs is its prefill; a token read from the prefix cache is
        # not prefilled again, so only the uncached tokens are charged GPU time.
        return TokenPricing(
            input_per_1m=per_second / self.input_tokens_per_second * 1e6,
            output_per_1m=per_second / self.output_tokens_per_second * 1e6,
            cached_input_per_1m=0.0,
        )


def _pricing_kind(value: object) -> str:
    keys = value.keys() if isinstance(value, dict) else vars(value) if value is not None else ()
    return "gpu_hour" if "gpu_hour_usd" in keys else "token"


# Tagged by the keys present, so an error names the fields of the kind the user meant.
Pricing = Annotated[
    Annotated[TokenPricing, Tag("token")] | Annotated[GpuHourPricing, Tag("gpu_hour")],
    Discriminator(_pricing_kind),
]


class _ModelBase(_Strict):
    kind: Literal["chat", "embedding"] = Field(
        default="chat",
        description="chat: chat and text completions; embedding: POST /v1/embeddings only",
    )
    context_length: int | None = Field(default=None, gt=0)
    # Each of these overrides the policy default of the same name (see `Defaults`).
    timeout_s: float | None = Field(default=None, gt=0)
    retries: int | None = Field(default=None, ge=0, le=10)
    connect_timeout_s: float | None = Field(default=None, gt=0)
    first_byte_timeout_s: float | None = Field(default=None, gt=0)
    stream_timeout_s: float | None = Field(default=None, gt=0)
    stream_idle_timeout_s: float | None = Field(default=None, gt=0)
    fallbacks: list[Name] = Field(
        default_factory=list, description="models tried, in order, when this one fails"
    )
    description: str | None = None
    quality: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="prior answer quality (0..1) that cost-aware routes weigh against cost",
    )


class ScorerWeights(_Strict):
    """How much each scorer counts in the endpoint choice (each scores 0..1 per endpoint)."""

    prefix: float = Field(default=0, ge=0, description="affinity for the prompt's leading text")
    queue: float = Field(default=0, ge=0, description="vLLM's running + waiting requests")
    kv: float = Field(default=0, ge=0, description="vLLM's KV-cache usage")
    outstanding: float = Field(default=0, ge=0, description="this replica's requests in flight")

    @model_validator(mode="after")
    def _some_weight(self) -> ScorerWeights:
        if not (self.prefix or self.queue or self.kv or self.outstanding):
            raise ValueError("at least one scorer needs a weight above 0")
        return self


class StickyConfig(_Strict):
    """Requests with the same session key go to the same endpoint while it is usable."""

    header: str | None = Field(default=None, min_length=1, description="a request header")
    field: Literal["user"] | None = Field(default=None, description="a request body field")

    @model_validator(mode="after")
    def _one_key(self) -> StickyConfig:
        if (self.header is None) == (self.field is None):
            raise ValueError("sticky takes exactly one of 'header' or 'field'")
        return self


class SchedulingConfig(_Strict):
    """Endpoint choice by weighted scorers (gateway/backends/vllm_pool/scheduling.py)."""

    scorers: ScorerWeights
    prefix_block_chars: int = Field(
        default=256, ge=16, le=65536, description="the prefix scorer's block, in characters"
    )
    max_imbalance: float = Field(
        default=2.0,
        ge=1,
        description="an endpoint whose load passes this many times the least-loaded one's "
        "(at least 1) loses its prefix preference",
    )
    sticky: StickyConfig | None = None


SchedulingPreset = Literal["least_outstanding", "round_robin", "prefix_aware"]


def _scheduling_kind(value: object) -> str:
    return "preset" if isinstance(value, str) else "weighted"


Scheduling = Annotated[
    Annotated[SchedulingPreset, Tag("preset")] | Annotated[SchedulingConfig, Tag("weighted")],
    Discriminator(_scheduling_kind),
]


class VllmModel(_ModelBase):
    provider: Literal["vllm"]
    endpoints: list[HttpUrl] = Field(
        min_length=1, description="OpenAI base URLs, e.g. http://h:8000/v1"
    )
    served_name: str | None = Field(default=None, description="the name vLLM serves it under")
    pricing: Pricing
    scheduling: Scheduling = Field(
        default="least_outstanding", description="how a request's endpoint is chosen"
    )


class LitellmModel(_ModelBase):
    provider: Literal["litellm"]
    model: str = Field(min_length=1, description="litellm model string, e.g. openai/gpt-4o-mini")
    api_key_env: str | None = Field(default=None, description="environment variable with the key")
    api_base: HttpUrl | None = None
    pricing: Pricing | None = Field(
        default=None, description="when absent, litellm's cost map prices the call"
    )


ModelConfig = Annotated[VllmModel | LitellmModel, Field(discriminator="provider")]


class PacingConfig(_Strict):
    """Spread a budget over its period: a controller compares spend with the plan and sets the
    price multiplier lambda that cost-aware routers weigh cost by
    (see gateway/admission/pacing_controller.py)."""

    budget_usd: float = Field(gt=0, description="spend planned over one period; also a hard cap")
    period: Literal["day", "week", "month"] = "day"
    plan: Literal["uniform", "weekday", "learned"] | list[Annotated[float, Field(ge=0)]] = Field(
        default="uniform",
        description="uniform, weekday (weekends get a fifth of a weekday's share), learned (the "
        "previous period's traffic shape in the request log; uniform without one), or a custom "
        "curve: relative weights of equal slices of the period",
    )
    update_interval_s: float = Field(
        default=5.0, gt=0, description="lambda changes at most this often"
    )
    min_multiplier: float = Field(default=0.1, gt=0)
    max_multiplier: float = Field(default=100.0, gt=0)

    @model_validator(mode="after")
    def _sane(self) -> PacingConfig:
        if isinstance(self.plan, list) and (len(self.plan) < 1 or sum(self.plan) <= 0):
            raise ValueError("a custom plan needs at least one positive weight")
        if self.min_multiplier > self.max_multiplier:
            raise ValueError("min_multiplier is above max_multiplier")
        return self


class CacheConfig(_Strict):
    """An exact-match response cache for a route, stored in the state store (memory or Redis).

    Keyed by the normalised request (route, messages or prompt, sampling parameters) and the
    scope; a hit costs nothing. Eviction weighs what a miss would cost (the answer's price with
    the model the route picked), after "On Optimal Caching and Model Multiplexing for Large
    Model Inference"."""

    eviction: Literal["gdsf", "lec", "lru"] = Field(
        default="gdsf",
        description="gdsf: Greedy-Dual-Size-Frequency; lec: Least-Expected-Cost; lru: baseline",
    )
    max_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="stored answers, in all")
    ttl_s: float = Field(default=3600.0, gt=0, description="an answer is served this long")
    scope: Literal["key", "team", "global"] = Field(
        default="key",
        description="who shares cached answers: each API key alone, its team, or everyone",
    )
    cache_sampled: bool = Field(
        default=False, description="also cache requests with temperature > 0"
    )


class _RouteBase(_Strict):
    """What every route kind may set besides its models."""

    description: str | None = None
    pacing: PacingConfig | None = None
    cache: CacheConfig | None = None
    slo_latency_ms: float | None = Field(
        default=None,
        gt=0,
        description="an answer slower than this is recorded as implicit feedback (source slo)",
    )
    log_prompts: bool = Field(
        default=False,
        description="keep the prompt text in the request log (redacted), for routers train "
        "--from-log",
    )
    prompt_redaction: Literal["default", "none"] = Field(
        default="default",
        description="what log_prompts keeps: default redacts e-mail addresses and runs of 4+ "
        "digits; none keeps the text as sent",
    )


class FixedRoute(_RouteBase):
    """The first model answers; the rest are fallbacks, tried in order."""

    kind: Literal["fixed"] = "fixed"
    models: list[Name] = Field(min_length=1)


class CostAwareRoute(_RouteBase):
    """Pick the model with the best quality - lambda x cost (or the cheapest that reaches the
    quality floor), from each model's declared `quality` and its price. Budget pacing multiplies
    lambda: spend ahead of plan makes the choice cheaper."""

    kind: Literal["cost_aware"]
    models: list[Name] = Field(min_length=1)
    lambda_: float = Field(
        default=100.0,
        ge=0,
        alias="lambda",
        description="quality points given up per USD of expected cost",
    )
    quality_floor: float | None = Field(
        default=None, ge=0, le=1, description="instead of lambda: the cheapest model reaching it"
    )
    expected_output_tokens: int = Field(
        default=256, gt=0, description="answer length assumed when the request sets no max_tokens"
    )


class OnlineConfig(_Strict):
    """An online layer over a learned route (routers/serving/online.py): per query context and
    model, a discounted mean of feedback minus the router's prediction corrects the prediction;
    a share of requests explores by Thompson sampling. Its state lives in the state store."""

    discount: float = Field(
        default=0.98,
        gt=0,
        le=1,
        description="each new observation of a (context, model) multiplies the older ones' "
        "weight by this: 0.98 remembers about the last 50",
    )
    prior_weight: float = Field(
        default=5.0, gt=0, description="observations the offline prediction is worth"
    )
    explore: float = Field(
        default=0.1, ge=0, le=1, description="share of requests chosen by Thompson sampling"
    )
    noise: float = Field(
        default=0.3, gt=0, le=1, description="spread of one feedback score around its mean"
    )
    refresh_s: float = Field(
        default=1.0, gt=0, description="how often a replica reads what all replicas learned"
    )


class LearnedRoute(_RouteBase):
    """A trained router (`routegate routers train`) predicts each model's quality for the
    request; the choice maximises quality - lambda x cost (or takes the cheapest model reaching
    the quality floor), with cost from this policy's prices and lambda times pacing's
    multiplier."""

    kind: Literal["learned"]
    router: str = Field(
        min_length=1, description="router artifact directory, relative to this policy file"
    )
    models: list[Name] = Field(min_length=1)
    model_map: dict[Name, str] = Field(
        default_factory=dict,
        description="policy model -> the model's name in the router's training records",
    )
    lambda_: float = Field(
        default=100.0, ge=0, alias="lambda", description="quality points per USD"
    )
    quality_floor: float | None = Field(default=None, ge=0, le=1)
    lead: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="quality points added, when ranking, to the model the router finds best on "
        "average over its training records: the most quality-seeking end of the dial, below "
        "lambda 0 (at 1 with lambda 0, every request goes to that model); another model is "
        "chosen only where predicted better by more than this",
    )
    expected_output_tokens: int = Field(default=256, gt=0)
    online: OnlineConfig | None = Field(
        default=None, description="learn a correction of the router's predictions from feedback"
    )


class ConfidenceConfig(_Strict):
    """How sure the answering model was, and below what the next model is asked."""

    method: Literal["mean_logprob", "min_logprob", "mean_entropy", "judge"] = Field(
        default="mean_logprob",
        description="mean_logprob / min_logprob of the answer's tokens; mean_entropy of the "
        "top-k distribution at each token; judge: a judge model's yes/no on the answer",
    )
    threshold: float = Field(
        description="escalate when the score is below it (for mean_entropy: above it, in nats; "
        "for judge: the judge's probability of 'yes')"
    )
    top_k: int = Field(default=5, ge=1, le=20, description="top_logprobs asked for entropy")
    judge_model: Name | None = Field(default=None, description="the judge, for method judge")

    @model_validator(mode="after")
    def _judge_named(self) -> ConfidenceConfig:
        if self.method == "judge" and self.judge_model is None:
            raise ValueError("method judge needs a judge_model")
        return self


class CascadeRoute(_RouteBase):
    """Ask the models from cheap to strong: each answer's confidence decides whether the next
    model is asked. The client pays for every step."""

    kind: Literal["cascade"]
    models: list[Name] = Field(min_length=2, description="cheapest first, strongest last")
    confidence: ConfidenceConfig
    stream_hold_tokens: int = Field(
        default=32,
        ge=1,
        description="streaming: tokens held back and scored before the rest is streamed",
    )


class EadRoute(_RouteBase):
    """Entropy Adaptive Decoding: the small model writes while the rolling entropy of its next-
    token distribution stays low; past the threshold the large model writes a span, then hands
    back. Both must be vLLM models (their completions API continues any text)."""

    kind: Literal["ead"]
    small: Name
    large: Name
    window: int = Field(default=4, ge=1, description="tokens in the rolling entropy window")
    threshold: float = Field(
        default=1.5, ge=0, description="rolling mean entropy (nats) that hands over to large"
    )
    span: int = Field(default=16, ge=1, description="tokens the large model writes per switch")
    chunk: int = Field(default=16, ge=1, description="tokens the small model writes per call")
    top_k: int = Field(default=5, ge=1, le=20, description="top_logprobs used for entropy")

    @property
    def models(self) -> list[str]:
        return [self.small, self.large]


class ExperimentRoute(_RouteBase):
    """An A/B test between routes of this policy: each request is given one arm by a stable
    hash of the salt and the caller (its key, or its `user`), weighted, then served exactly as
    if it had named that arm (gateway/pipeline/experiment.py)."""

    kind: Literal["experiment"]
    arms: dict[Name, Annotated[float, Field(gt=0)]] = Field(
        min_length=2, description="route name -> relative weight (> 0); at least two arms"
    )
    sticky: Literal["key", "user"] = Field(
        default="key",
        description="who always gets the same arm: the API key, or the request's `user` "
        "(falling back to the key); an anonymous request with neither is not sticky",
    )
    salt: str | None = Field(
        default=None, description="hashed with the caller; unset: the route's name"
    )
    # The arms' models, first arm first; set by Policy once the arms are known.
    _models: list[str] = PrivateAttr(default_factory=list)

    @property
    def models(self) -> list[str]:
        return self._models


def _route_kind(value: object) -> object:
    return value.get("kind", "fixed") if isinstance(value, dict) else getattr(value, "kind", None)


RouteConfig = Annotated[
    Annotated[FixedRoute, Tag("fixed")]
    | Annotated[CostAwareRoute, Tag("cost_aware")]
    | Annotated[LearnedRoute, Tag("learned")]
    | Annotated[CascadeRoute, Tag("cascade")]
    | Annotated[EadRoute, Tag("ead")]
    | Annotated[ExperimentRoute, Tag("experiment")],
    Discriminator(
        _route_kind,
        custom_error_type="invalid_route_kind",
        custom_error_message="kind must be 'fixed', 'cost_aware', 'learned', 'cascade', 'ead' "
        "or 'experiment'",
    ),
]


class Defaults(_Strict):
    timeout_s: float = Field(
        default=120.0, gt=0, description="one upstream attempt in all (a stream: to its 1st chunk)"
    )
    retries: int = Field(default=1, ge=0, le=10)
    connect_timeout_s: float = Field(default=2.0, gt=0, description="TCP (and TLS) connect")
    first_byte_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="no byte from a vLLM endpoint this long: its /health is asked, and the call "
        "moves on if it does not answer (a frozen server); a live one is waited on",
    )
    stream_timeout_s: float | None = Field(
        default=None, gt=0, description="a whole stream, first call to last chunk; unset: timeout_s"
    )
    stream_idle_timeout_s: float = Field(
        default=30.0, gt=0, description="the longest gap between two chunks of a stream"
    )
    max_tokens: int = Field(default=512, gt=0, description="assumed when a request sets none")
    max_request_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    health_interval_s: float = Field(default=5.0, gt=0)
    health_timeout_s: float = Field(default=2.0, gt=0, description="one health probe")
    metrics_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="vLLM endpoints' own /metrics (running, waiting, KV cache, prefix cache) "
        "are read this often",
    )
    unhealthy_after: int = Field(
        default=2, ge=1, le=100, description="failed probes in a row that take an endpoint out"
    )
    eject_after: int = Field(
        default=3,
        ge=1,
        le=100,
        description="failed calls in a row (connect error, 5xx, frozen) that eject an endpoint",
    )
    cooldown_s: float = Field(default=10.0, ge=0)
    reservation_ttl_s: float = Field(
        default=600.0, gt=0, description="a budget reservation left by a dead replica expires"
    )


class StateConfig(_Strict):
    """Where keys, budget counters, rate windows and pacing state live."""

    url: str = Field(
        default="memory",
        description="'memory' (one process) or a redis:// URL shared by every replica",
        pattern=r"^(memory|rediss?://.+)$",
    )
    prefix: str = Field(default="routegate", min_length=1, description="Redis key prefix")
    connect_timeout_s: float = Field(
        # 3 s: a burst of new connections can overflow the accept backlog, and a lost SYN is
        # only sent again after 1 s.
        default=3.0,
        gt=0,
        le=60,
        description="Redis: opening a connection gives up after this",
    )
    timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Redis: one command gives up after this; the request then gets 503",
    )


class AuthFailuresConfig(_Strict):
    """Failed authentications (wrong master key, metrics token or API key) allowed per client
    address in a sliding window, counted in the state store so that replicas share it."""

    limit: int = Field(default=10, ge=1, description="failures per window, then 429")
    window_s: float = Field(default=60.0, gt=0, description="the sliding window, in seconds")


Guard = Literal["guarded", "open"]


class AccessConfig(_Strict):
    """Who may call what. `None` means the safe default, worked out at start-up from whether
    ROUTEGATE_MASTER_KEY is set (gateway/admission/guard.py)."""

    auth: Literal["keys", "open"] | None = Field(
        default=None,
        description="keys: /v1 needs a virtual key (or the master key); open: anyone, a key "
        "only adds its limits. Default: keys when ROUTEGATE_MASTER_KEY is set, else open",
    )
    metrics: Guard | None = Field(
        default=None,
        description="guarded: /metrics needs the master key or ROUTEGATE_METRICS_TOKEN. "
        "Default: guarded when auth is keys",
    )
    models: Guard | None = Field(
        default=None,
        description="guarded: /v1/models needs a key and lists only what it may use. "
        "Default: guarded when auth is keys",
    )
    readyz: Guard | None = Field(
        default=None,
        description="guarded: /readyz shows only its status unless the master key or metrics "
        "token is sent (the status code is the same). Default: guarded when auth is keys",
    )
    auth_failures: AuthFailuresConfig = Field(default_factory=AuthFailuresConfig)


class Policy(_Strict):
    version: Literal[1] = 1
    defaults: Defaults = Field(default_factory=Defaults)
    state: StateConfig = Field(default_factory=StateConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
    models: dict[Name, ModelConfig] = Field(min_length=1)
    routes: dict[Name, RouteConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names_are_distinct(self) -> Policy:
        clash = sorted(set(self.models) & set(self.routes))
        if clash:
            raise ValueError(f"names used for both a model and a route: {', '.join(clash)}")
        return self

    @model_validator(mode="after")
    def _experiment_models(self) -> Policy:
        # The loader reports bad arms with their lines; here only what exists is collected.
        for route in self.routes.values():
            if isinstance(route, ExperimentRoute):
                models: dict[str, None] = {}
                for arm in route.arms:
                    target = self.routes.get(arm)
                    if target is not None and not isinstance(target, ExperimentRoute):
                        models.update(dict.fromkeys(target.models))
                route._models = list(models)
        return self


def serves_embeddings(route: RouteConfig, policy: Policy) -> bool:
    """Whether a route's requests are embeddings: its models are embedding models (in a valid
    policy a route serves one kind of model; an experiment, its arms')."""
    return any(m in policy.models and policy.models[m].kind == "embedding" for m in route.models)
