"""Implicit feedback: what the gateway itself learns about a request's models, recorded as
feedback rows with their own `source` (explicit feedback: gateway/feedback/).

- `upstream_error`: 0.0 about each model that failed (a fallback was tried after it, or the
  request ended in a 5xx);
- `slo`: 0.0 about the answering model when the route's `slo_latency_ms` was exceeded;
- `judge`: a judge cascade's P(yes) about the step's model;
- `escalation`: 0.0 about a cascade step whose answer was not trusted.
"""

from __future__ import annotations

from gateway.accounting.request_log import FeedbackRecord, RequestNotes, RequestRecord
from policies.schema import CascadeRoute, RouteConfig

# Errors of the gateway's own making (handler.py): they say nothing about the model.
_GATEWAY_ERRORS = ("internal error", "state store")


def implicit_feedback(
    rec: RequestRecord, notes: RequestNotes, config: RouteConfig | None, now: float
) -> list[FeedbackRecord]:
    out: list[FeedbackRecord] = []

    def add(source: str, model: str | None, score: float) -> None:
        if model:
            out.append(FeedbackRecord(rec.request_id, source, score, now, model, rec.api_key_id))

    for model in rec.fallbacks:
        add("upstream_error", model, 0.0)
    if rec.status >= 500 and not (rec.error or "").startswith(_GATEWAY_ERRORS):
        add("upstream_error", rec.model, 0.0)
    slo = config.slo_latency_ms if config is not None else None
    if slo is not None and rec.status == 200 and (rec.latency_ms or 0.0) > slo:
        add("slo", rec.model, 0.0)
    judged = isinstance(config, CascadeRoute) and config.confidence.method == "judge"
    for step in notes.steps or []:
        confidence = step.detail.get("confidence")
        if judged and isinstance(confidence, int | float):
            add("judge", step.model, float(min(max(confidence, 0.0), 1.0)))
        if step.detail.get("escalate") is True:
            add("escalation", step.model, 0.0)
    return out
