"""Admit: who is calling, what they ask for, and whether they may (before and after routing).

`identify` runs first: the key, the body, the route and the key's permission for it.
`reserve` runs once the route is planned: rate limits and the worst case on every budget.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway.accounting.redaction import redactor
from gateway.admission.access import AdmissionRequest
from gateway.admission.guard import authorization, client_address
from gateway.backends.base import Kind
from gateway.errors import ApiError
from gateway.pipeline.context import RequestContext
from gateway.pipeline.experiment import choose_arm, sticky_id
from gateway.pipeline.route import Plan
from gateway.request_schema import parse_request
from gateway.runtime import Runtime
from policies.schema import ExperimentRoute, FixedRoute, RouteConfig, serves_embeddings


def resolve(runtime: Runtime, name: str) -> tuple[str | None, RouteConfig | None]:
    """Policy: the route asked for (None, None for a model asked by name), or 404."""
    if name in runtime.policy.models:
        return None, None
    config = runtime.policy.routes.get(name)
    if config is None:
        raise ApiError(
            404,
            f"The model '{name}' does not exist: it is neither a model nor a route of this "
            "gateway (see GET /v1/models)",
            code="model_not_found",
            param="model",
        )
    return name, config


def check_api(runtime: Runtime, kind: Kind, name: str, config: RouteConfig | None) -> None:
    """An embeddings request names an embedding model or a fixed route of them; a chat or
    text completion names neither: 400 naming `model` otherwise."""
    policy = runtime.policy
    if config is None:
        embedding = policy.models[name].kind == "embedding"
    else:
        embedding = serves_embeddings(config, policy)
    wants = kind == "embeddings"
    if wants == embedding and (config is None or not wants or isinstance(config, FixedRoute)):
        return  # on every request: the messages below are made only for a refusal
    if config is None:
        what = f"'{name}' is an embedding model" if embedding else f"'{name}' is a chat model"
    else:
        what = f"route '{name}' serves {'embedding' if embedding else 'chat'} models"
    if wants and not embedding:
        raise ApiError(
            400,
            f"{what}: POST /v1/embeddings needs an embedding model (`kind: embedding` in the "
            "policy) or a fixed route of them",
            code="model_not_embedding",
            param="model",
        )
    if wants:
        assert config is not None  # the early return passed every model and fixed route
        raise ApiError(
            400,
            f"route '{name}' is of kind {config.kind}: only fixed routes serve embeddings",
            code="invalid_route_kind",
            param="model",
        )
    raise ApiError(
        400,
        f"{what}: it answers POST /v1/embeddings only, not {kind} requests",
        code="model_is_embedding",
        param="model",
    )


async def identify(request: Request, ctx: RequestContext) -> None:
    """The caller's key, the parsed body and the route; ApiError when any is refused."""
    rec, access = ctx.record, ctx.services.access
    key = await access.authenticate(
        authorization(request), ctx.runtime.access, client_address(request)
    )
    ctx.key = key
    if key is not None:
        rec.api_key_id, rec.team = key.id, key.team
    # Size and time limits are enforced while the body is read (gateway/http_limits.py).
    raw = await request.body()
    dialect = ctx.dialect
    ctx.body = body = parse_request(raw, ctx.kind) if dialect is None else dialect.parse(raw)
    ctx.headers = request.headers
    rec.stream = bool(body.get("stream"))
    rec.route, ctx.config = resolve(ctx.runtime, body["model"])
    # The key's permission is for what it asked: the experiment, not the arm it is given.
    access.check_route(key, body["model"])
    if isinstance(ctx.config, ExperimentRoute):
        _enter_arm(ctx, body["model"], ctx.config)
    check_api(ctx.runtime, ctx.kind, body["model"], ctx.config)
    if ctx.config is not None and ctx.config.log_prompts:
        rec.prompt = logged_prompt(body, ctx.config)
    _feedback_from(ctx)


def _feedback_from(ctx: RequestContext) -> None:
    """Implicit feedback (gateway/accounting/feedback_signals.py) needs the route's policy;
    on a route that learns it also goes to the online layer, off the request path."""
    ctx.account.route_config = ctx.config
    service, route, runtime = ctx.services.feedback, ctx.record.route, ctx.runtime
    if route is None or route not in runtime.learners:
        return
    notes = ctx.notes
    ctx.account.learn = lambda fb: service.learn_later(runtime, route, notes.online, fb)


def _enter_arm(ctx: RequestContext, name: str, config: ExperimentRoute) -> None:
    """From here on the request is the arm's: its router, cache, pacing and log row."""
    rec = ctx.record
    who = sticky_id(config, rec.api_key_id, ctx.body, rec.request_id)
    arm = choose_arm(name, config, who)
    rec.route, ctx.config = arm, ctx.runtime.policy.routes[arm]
    ctx.notes.experiment = {"name": name, "arm": arm}


def logged_prompt(body: dict[str, Any], config: RouteConfig) -> str:
    """What a `log_prompts` route keeps in the request log: the router's text (what
    `routegate routers train --from-log` trains on), redacted as the route says."""
    # Imported here: the learned routers' module (numpy) loads only where a route needs it.
    from routers.serving.learned import request_text

    return redactor(config.prompt_redaction).redact(request_text(body))


async def reserve(ctx: RequestContext, plan: Plan) -> None:
    """Rate limits and budget reservations for the planned models; the chain loses the models
    a budget can no longer cover. ApiError (429) when nothing fits."""
    rec, runtime = ctx.record, ctx.runtime
    budgets = ctx.services.pacers.budgets(ctx.key, rec.route, ctx.config, rec.ts)
    admission = await ctx.services.access.admit(
        AdmissionRequest(
            key=ctx.key,
            budgets=budgets,
            body=ctx.body,
            prompt_upper=plan.prompt_upper,
            models=plan.models,
            request_id=rec.request_id,
            prices=runtime.prices,
            defaults=runtime.policy.defaults,
            cascade=plan.cascade,
            generates=ctx.kind != "embeddings",
        )
    )
    ctx.account.admission = admission
    allowed = admission.models
    if allowed is not None and len(allowed) < len(plan.attempts):
        ctx.notes.skipped_for_budget = [a.model for a in plan.attempts if a.model not in allowed]
        plan.attempts = [a for a in plan.attempts if a.model in allowed]
