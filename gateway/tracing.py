"""OpenTelemetry tracing, configured by the standard OTEL_* environment variables, off unless
an exporter is configured.

Off (the default), `Tracing.tracer` is None: the pipeline checks that once per phase and makes
no span, no context and no header, and the SDK is never imported. On, one SDK TracerProvider
per app, owned by it (never the process-global one: tests build their own, and the app flushes
and shuts down its own on exit), with a BatchSpanProcessor per exporter that
OTEL_TRACES_EXPORTER names. The SDK reads the rest of the variables itself: the sampler
(OTEL_TRACES_SAMPLER[_ARG]), the resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), the
exporters' endpoints, protocol, headers and timeouts (OTEL_EXPORTER_OTLP_*), the batching
(OTEL_BSP_*); the propagators come from OTEL_PROPAGATORS (W3C tracecontext and baggage by
default).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode, Tracer, set_span_in_context

log = logging.getLogger("routegate.tracing")

TRACER_NAME = "routegate"
SERVICE_NAME = "routegate"  # the resource's service.name unless OTEL_SERVICE_NAME says another
FLUSH_TIMEOUT_MS = 5000  # at shutdown: a collector that is down must not hold the exit long

# The GenAI semantic conventions' operation names, by the kind of upstream call.
OPERATION = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}

_OFF_SPAN: AbstractContextManager[None] = nullcontext()  # stateless: safe to share


class SpanProvider(Protocol):
    """What the app needs of a TracerProvider (the SDK's, or a test's)."""

    def get_tracer(self, instrumenting_module_name: str, *args: Any, **kwargs: Any) -> Tracer: ...

    def force_flush(self, timeout_millis: int = 30000) -> bool: ...

    def shutdown(self) -> None: ...


@dataclass(slots=True, frozen=True)
class Tracing:
    """The app's tracer (None: tracing is off) and the provider it flushes at shutdown."""

    tracer: Tracer | None = None
    provider: SpanProvider | None = None

    @classmethod
    def of(cls, provider: SpanProvider) -> Tracing:
        """Spans through `provider` (the test seam: an SDK provider with an in-memory exporter)."""
        return cls(provider.get_tracer(TRACER_NAME), provider)

    def span(
        self, name: str, attributes: Mapping[str, Any] | None = None
    ) -> AbstractContextManager[Span | None]:
        """A child of the current span, current while the block runs; nothing when off."""
        if self.tracer is None:
            return _OFF_SPAN
        return self.tracer.start_as_current_span(name, attributes=attributes)

    def shutdown(self) -> None:
        """Export what is still buffered, then stop the exporters (at the app's exit)."""
        if self.provider is None:
            return
        try:
            self.provider.force_flush(FLUSH_TIMEOUT_MS)
            self.provider.shutdown()
        except Exception:  # a collector that is down must not fail the shutdown
            log.exception("flushing the traces at shutdown failed")


@dataclass(slots=True)
class RequestSpan:
    """A request's SERVER span, and the exception type its end reports (a gateway bug)."""

    span: Span
    error_type: str | None = None
    ended: bool = False

    def end(self) -> bool:
        """End the span; False when it had already ended (nothing is done then)."""
        if self.ended:
            return False
        self.ended = True
        self.span.end()
        return True


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() == "true"


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The trace exporters configured: OTEL_TRACES_EXPORTER's (comma-separated; "none" for
    none), or "otlp" where only an OTLP endpoint is set. None of either: tracing is off."""
    if _flag(environ, "OTEL_SDK_DISABLED"):
        return []
    names = environ.get("OTEL_TRACES_EXPORTER")
    if names is None:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    return [n.strip() for n in names.split(",") if n.strip() and n.strip().lower() != "none"]


def exporter_classes(names: list[str]) -> list[type[Any]]:
    """The SDK's exporter class for each name ("otlp" by the protocol in
    OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL: grpc or http/protobuf), found by its entry points;
    ValueError naming the variable for a name or protocol it does not know."""
    from opentelemetry.sdk._configuration import _get_exporter_entry_point, _import_exporters

    try:
        entry_points = [_get_exporter_entry_point(name, "traces") for name in names]
        exporters, _, _ = _import_exporters(entry_points, [], [])
    except RuntimeError as exc:
        raise ValueError(f"OTEL_TRACES_EXPORTER={','.join(names)}: {exc}") from None
    return list(exporters.values())


def check_env() -> None:
    """ValueError when the OTEL_* variables name an exporter that cannot be loaded (for the
    CLI, before the port is bound); nothing is started."""
    names = exporter_names(os.environ)
    if names:
        exporter_classes(names)


def from_env() -> Tracing:
    """Tracing as the OTEL_* variables say: off (no SDK loaded) unless an exporter is named.
    An exporter that cannot be loaded is a start-up error (ValueError) naming the variable.
    Called in each process that serves (after any fork: the batching thread is per process)."""
    names = exporter_names(os.environ)
    if not names:
        return Tracing()
    # Imported here: a gateway that does not trace never loads the SDK or the exporters.
    from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_KEY
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = exporter_classes(names)
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, take precedence over this.
    resource = Resource({SERVICE_KEY: SERVICE_NAME}).merge(Resource.create())
    # TracerProvider takes its sampler from OTEL_TRACES_SAMPLER[_ARG] (parentbased_always_on).
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter()))
    log.info("tracing on: exporting spans to %s", ", ".join(names))
    return Tracing.of(provider)


def extract(headers: Mapping[str, str]) -> Context:
    """The caller's trace context from its headers (W3C traceparent/tracestate)."""
    return propagate.extract(headers)


def inject(span: Span) -> dict[str, str]:
    """The headers that carry `span`'s context to an upstream (traceparent, tracestate)."""
    carrier: MutableMapping[str, str] = {}
    propagate.inject(carrier, context=set_span_in_context(span))
    return dict(carrier)


def fail(span: Span, error_type: str, description: str | None = None) -> None:
    """Mark `span` failed, as the semantic conventions say: status ERROR and `error.type`."""
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description))


def request_attributes(body: Mapping[str, Any]) -> dict[str, Any]:
    """The GenAI request attributes the body gives (max tokens, temperature, top_p)."""
    out: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        out["gen_ai.request.max_tokens"] = max_tokens
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[f"gen_ai.request.{key}"] = float(value)
    return out
