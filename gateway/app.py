"""The FastAPI application: OpenAI endpoints, health, metrics."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.accounting.log_store import default_spool_path, open_reader, open_request_log
from gateway.admission.access import Access
from gateway.admission.admin_api import router as admin_router
from gateway.admission.guard import (
    METRICS_TOKEN_ENV,
    bearer_is,
    master_key,
    metrics_token,
    rules_of,
    state_unavailable,
)
from gateway.admission.price_multiplier import Pacers
from gateway.backends.http_client import new_upstream_client
from gateway.dashboard import mount_dashboard
from gateway.dialects import Dialect
from gateway.dialects.messages import MessagesApi
from gateway.dialects.responses import ResponsesApi
from gateway.drain import Drain
from gateway.errors import ApiError
from gateway.feedback.endpoint import feedback
from gateway.feedback.service import FeedbackService
from gateway.hot_routes import HotRoutes
from gateway.http_limits import RequestLimits
from gateway.metrics import Metrics, exposition
from gateway.model_list import model_entries, visible_names
from gateway.model_list import not_found as model_not_found
from gateway.pipeline import Services, handle
from gateway.pipeline.count_tokens import count_tokens
from gateway.reloader import PolicyHolder
from gateway.route_errors import http_error
from gateway.runtime import BackendFactory, Runtime
from gateway.state import StateUnavailable, is_memory_url, open_state
from gateway.tracing import Tracing, from_env
from policies.loader import example_policy_path

log = logging.getLogger("routegate")

READY_PING_TIMEOUT_S = 1.0  # /readyz: a state store slower than this is not ready


@dataclass
class Settings:
    policy_path: Path = field(default_factory=example_policy_path)
    log_path: Path = Path("routegate-requests.sqlite")
    # Where the in-process state store keeps keys and spend across restarts.
    state_path: Path = Path("routegate-state.sqlite")
    watch_policy: bool = True
    # Applied policy versions (the dashboard's history); None: beside log_path.
    policy_history_path: Path | None = None
    # A request's whole body must arrive within this long of the first read (408 after).
    body_timeout_s: float = 60.0
    # The request log on Postgres (postgresql://...) instead of the SQLite file log_path; rows
    # wait in log_spool_path (default: beside state_path, named by replica) while it is away.
    log_url: str | None = None
    log_spool_path: Path | None = None
    # Each answer waits until its row is committed or spooled (no row lost to a SIGKILL).
    log_durable: bool = False
    # Builds each model's backend instead of vLLM pools and litellm: a test seam (a fake backend).
    backend_factory: BackendFactory | None = None
    # This process's name among the replicas (`serve --replica`): in the shared store's policy
    # reports, /readyz and the dashboard.
    replica: str = field(default_factory=socket.gethostname)
    # Spans go where OTEL_* say (off unless set); a test seam: a provider of its own.
    tracing: Tracing | None = None


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def _operator(request: Request) -> bool:
    """The master key or the metrics token as the bearer. For /readyz a throttled address, or
    a state store that is down, only means no details: the status must reach the probe."""
    try:
        return await bearer_is(request, [master_key(), metrics_token()])
    except (ApiError, StateUnavailable):
        if request.url.path == "/readyz":
            return False
        raise


def create_app(settings: Settings | None = None, drain: Drain | None = None) -> FastAPI:
    """`drain`: the serving process's shutdown state (gateway/draining_server.py sets it)."""
    settings = settings or Settings()
    drain = drain or Drain()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing = settings.tracing or from_env()
        client = new_upstream_client()
        metrics = Metrics()
        holder = PolicyHolder(
            settings.policy_path, client, metrics, settings.backend_factory, settings.replica
        )
        runtime = await holder.load()  # a bad policy is fatal here: PolicyError names the lines
        # The state store is chosen at start-up; a reload that changes it needs a restart.
        config = runtime.policy.state
        state = await open_state(
            config.url,
            memory_path=settings.state_path,
            prefix=config.prefix,
            connect_timeout_s=config.connect_timeout_s,
            timeout_s=config.timeout_s,
        )
        holder.state = state
        runtime.bind_state(state)
        if not is_memory_url(config.url):
            # Several replicas: the policy published in the store wins over the file.
            await holder.follow(state)
        log_location = settings.log_url or settings.log_path
        request_log = open_request_log(
            log_location,
            replica=settings.replica,
            spool_path=settings.log_spool_path
            or default_spool_path(settings.state_path, settings.replica),
            counters=metrics,
            durable=settings.log_durable,
        )
        app.state.holder = holder
        pacers = Pacers(state, log_location)
        feedback_service = FeedbackService(request_log, state, open_reader(log_location))
        app.state.services = Services(
            request_log,
            metrics,
            Access(state),
            pacers,
            feedback_service,
            tracing=tracing,
            drain=drain,
        )
        app.state.started = time.time()
        if settings.watch_policy:
            holder.watch()
        # Everything built at start-up lives as long as the process: keep it out of the
        # collector's scans, so a full collection under load is short and p99 stays flat.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await holder.aclose()
            await client.aclose()
            await state.aclose()
            request_log.close()
            await asyncio.to_thread(tracing.shutdown)  # the spans still batched, exported

    app = FastAPI(
        title="Routegate", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )

    hot_paths = ("/v1/chat/completions", "/v1/completions")

    def runtime_of(request: Request) -> Runtime:
        runtime = request.app.state.holder.current
        if runtime is None:
            raise ApiError(503, "No policy is loaded", code="not_ready")
        return runtime

    # The two hot endpoints are plain Starlette routes: they read the raw body themselves, so
    # FastAPI's per-request dependency solving would only add latency.
    async def chat_completions(request: Request) -> Response:
        return await handle(request, "chat", runtime_of(request), request.app.state.services)

    async def completions(request: Request) -> Response:
        return await handle(request, "completions", runtime_of(request), request.app.state.services)

    async def embeddings(request: Request) -> Response:
        return await handle(request, "embeddings", runtime_of(request), request.app.state.services)

    # Added first, so the router tries them first: a request passes every route before its
    # own (a regex match each), and no other route matches these paths, so no answer changes.
    app.router.add_route(hot_paths[0], chat_completions, methods=["POST"])
    app.router.add_route(hot_paths[1], completions, methods=["POST"])
    app.router.add_route("/v1/embeddings", embeddings, methods=["POST"])
    app.router.add_route("/v1/feedback", feedback, methods=["POST"])

    # Other APIs, translated to chat and back over the same pipeline (gateway/dialects/). Errors
    # under their paths, the app's own included (404, 413, validation), are in their shapes.
    dialects: dict[str, Dialect] = {"/v1/messages": MessagesApi(), "/v1/responses": ResponsesApi()}

    def spoken(dialect: Dialect) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            services = request.app.state.services
            return await handle(request, "chat", runtime_of(request), services, dialect)

        return endpoint

    async def messages_count_tokens(request: Request) -> Response:
        return await count_tokens(request, runtime_of(request), request.app.state.services)

    for path, dialect in dialects.items():
        app.router.add_route(path, spoken(dialect), methods=["POST"])
    app.router.add_route("/v1/messages/count_tokens", messages_count_tokens, methods=["POST"])

    app.include_router(admin_router)
    mount_dashboard(app, settings)

    def api_body_limit() -> int:
        holder: PolicyHolder | None = getattr(app.state, "holder", None)
        runtime = holder.current if holder is not None else None
        return runtime.policy.defaults.max_request_bytes if runtime else 4 * 1024 * 1024

    # Added before the body limits, so it runs inside them: the completions' short way
    # through the app (gateway/hot_routes.py).
    app.add_middleware(HotRoutes, router=app.router, paths=hot_paths)
    app.add_middleware(
        RequestLimits, api_limit=api_body_limit, body_timeout_s=settings.body_timeout_s
    )

    def shaped(request: Request, err: ApiError) -> Response:
        """The error in the shape of the API the path belongs to."""
        path = request.url.path
        for prefix, dialect in dialects.items():
            if path.startswith(prefix):
                return dialect.error(err)
        return err.response()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return shaped(request, exc)

    @app.exception_handler(StateUnavailable)
    async def _state_down(request: Request, exc: StateUnavailable) -> Response:
        log.warning("%s %s refused: %s", request.method, request.url.path, exc)
        return shaped(request, state_unavailable(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return shaped(request, http_error(request.app.router.routes, request.scope, exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0]
        # ("path", "version_id"): where it came from, then the field.
        loc = [str(p) for p in err.get("loc", ())][1:]
        param = ".".join(loc) or None
        where = f"Invalid field '{param}': " if param else ""
        return shaped(
            request, ApiError(400, where + str(err.get("msg")), code="invalid_value", param=param)
        )

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        # The last resort (Starlette logs the traceback after it): JSON, never plain text.
        return shaped(
            request, ApiError(500, "Internal error in the gateway", code="internal_error")
        )

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        runtime = runtime_of(request)
        allowed = await visible_names(request, runtime)
        data = [
            entry
            for name, entry in model_entries(runtime).items()
            if allowed is None or name in allowed
        ]
        return _json({"object": "list", "data": data})

    # `:path`: model names may hold "/" ("openai/gpt-4o"; the SDK sends it as %2F).
    @app.get("/v1/models/{model_id:path}")
    async def model(request: Request, model_id: str) -> Response:
        runtime = runtime_of(request)
        allowed = await visible_names(request, runtime)
        entry = model_entries(runtime).get(model_id)
        if entry is None or (allowed is not None and model_id not in allowed):
            raise model_not_found(model_id)
        return _json(entry)

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        holder: PolicyHolder = request.app.state.holder
        runtime = holder.current
        healthy = runtime.healthy_models() if runtime else []
        services: Services = request.app.state.services
        state_error: str | None = None
        try:
            await services.access.state.ping(READY_PING_TIMEOUT_S)
        except StateUnavailable as exc:
            state_error = str(exc)
        ready = bool(healthy) and state_error is None and not drain.draining
        status = 200 if ready else 503
        word = "draining" if drain.draining else "ready" if ready else "not_ready"
        body: dict[str, Any] = {
            "status": word,
            "state": "unavailable" if state_error else "ok",
        }
        rules = rules_of(request)
        # Probes only need the status code; names of models and files are for operators.
        if rules.readyz_guarded and not await _operator(request):
            return _json(body, status)
        body.update(
            policy_version=runtime.version if runtime else None,
            policy_id=holder.policy_id,
            policy_source=holder.source,
            replica=holder.replica,
            healthy_models=healthy,
            state_error=state_error,
            last_reload_error=str(holder.last_error) if holder.last_error else None,
            # Spooling while Postgres is away is degraded, not down: no rows are lost.
            request_log=services.request_log.status(),
        )
        return _json(body, status)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if rules_of(request).metrics_guarded and not await _operator(request):
            raise ApiError(
                401,
                f"/metrics needs the master key or {METRICS_TOKEN_ENV} as a bearer",
                code="invalid_metrics_token",
            )
        services: Services = request.app.state.services
        runtime = request.app.state.holder.current
        if runtime is not None:
            for name, backend in runtime.backends.items():
                services.metrics.backend_healthy.labels(name).set(1 if backend.healthy() else 0)
            services.metrics.set_endpoints(
                (model, r.endpoint, r.engine) for model, r in runtime.endpoint_reports()
            )
        body, media_type = exposition(services.metrics)
        return Response(body, media_type=media_type)

    return app
