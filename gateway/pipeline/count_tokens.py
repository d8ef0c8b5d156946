"""`POST /v1/messages/count_tokens`: the prompt's tokens for the model or route it names.

No model is called and nothing is charged or logged: it generates nothing. The key must
still be valid and may only ask about what it may call."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.admission.guard import authorization, client_address, state_unavailable
from gateway.dialects.messages import count_tokens_body
from gateway.dialects.messages.errors import error_response
from gateway.errors import ApiError
from gateway.pipeline.admit import resolve
from gateway.pipeline.context import Services
from gateway.provider_prices import load_litellm
from gateway.runtime import Runtime
from gateway.state import StateUnavailable


async def count_tokens(request: Request, runtime: Runtime, services: Services) -> Response:
    access = services.access
    try:
        key = await access.authenticate(
            authorization(request), runtime.access, client_address(request)
        )
        body = count_tokens_body(await request.body())
        resolve(runtime, body["model"])
        access.check_route(key, body["model"])
        tokens = await anyio.to_thread.run_sync(_count, body)
    except ApiError as err:
        return error_response(err)
    except StateUnavailable as exc:
        return error_response(state_unavailable(exc))
    return Response(orjson.dumps({"input_tokens": tokens}), media_type="application/json")


def _count(body: dict[str, Any]) -> int:
    # litellm's counter (its bundled tokenizer, no download): an estimate, as Anthropic's own
    # count_tokens is; the models behind a route may tokenize differently.
    litellm = load_litellm()  # on the first count: a gateway without remote models needs none
    return int(litellm.token_counter(messages=body["messages"], tools=body.get("tools")))
