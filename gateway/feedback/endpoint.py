"""`POST /v1/feedback`: a score for an answer, by the key that asked for it."""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import Response

from gateway.admission.guard import authorization, client_address
from gateway.errors import ApiError
from gateway.feedback.service import FeedbackService
from gateway.request_schema import parse_body
from gateway.runtime import Runtime


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, Field(min_length=1, max_length=128)]
    score: Annotated[float, Field(ge=0, le=1)] | None = None
    thumbs: Literal["up", "down"] | None = None
    comment: Annotated[str, Field(max_length=4096)] | None = None
    source: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] = "user"

    @model_validator(mode="after")
    def _one_score(self) -> FeedbackBody:
        if (self.score is None) == (self.thumbs is None):
            raise ValueError("give exactly one of score (0..1) and thumbs (up|down)")
        return self

    @property
    def value(self) -> float:
        return self.score if self.score is not None else (1.0 if self.thumbs == "up" else 0.0)


async def feedback(request: Request) -> Response:
    runtime: Runtime | None = request.app.state.holder.current
    if runtime is None:
        raise ApiError(503, "No policy is loaded", code="not_ready")
    services = request.app.state.services
    key = await services.access.authenticate(
        authorization(request), runtime.access, client_address(request)
    )
    body = parse_body(await request.body(), FeedbackBody)
    service: FeedbackService = services.feedback
    learned = await service.record(
        runtime, key, body.request_id, body.value, body.source, body.comment
    )
    out = {
        "object": "feedback",
        "request_id": body.request_id,
        "source": body.source,
        "score": body.value,
        "learned": learned,
    }
    return Response(orjson.dumps(out), media_type="application/json")
