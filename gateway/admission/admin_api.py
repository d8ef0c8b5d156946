"""The admin HTTP API: virtual keys. Guarded by the master key from ROUTEGATE_MASTER_KEY."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from gateway.admission.guard import (
    MASTER_KEY_ENV,
    client_address,
    master_key,
    request_bearer,
    rules_of,
    throttle_of,
)
from gateway.admission.keys import KeySpec, create_key, public_view
from gateway.admission.periods import resets_at, window_id
from gateway.errors import ApiError
from gateway.state import State

__all__ = ["MASTER_KEY_ENV", "router"]

router = APIRouter(prefix="/admin")


async def require_master_key(request: Request) -> None:
    master = master_key()
    if not master:
        raise ApiError(
            403, f"The admin API is off: start the gateway with {MASTER_KEY_ENV} set",
            code="admin_disabled",
        )  # fmt: skip
    # A missing bearer counts as a failure too: the admin API has no anonymous use.
    token = request_bearer(request) or ""
    rules = rules_of(request)
    if not await throttle_of(request).verify(
        client_address(request), rules.failures, token, [master]
    ):
        raise ApiError(401, "The admin API needs the master key", code="invalid_master_key")


def _state(request: Request) -> State:
    return request.app.state.services.access.state


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def _with_usage(state: State, view: dict[str, Any]) -> dict[str, Any]:
    now = time.time()
    if view["budget_usd"] is not None:
        spent, reserved = await state.budget_usage(
            f"key:{view['id']}:{window_id(view['period'], now)}", now
        )
        view["spent_usd"], view["reserved_usd"] = spent, reserved
        view["resets_at"] = resets_at(view["period"], now)
    return view


@router.post("/keys")
async def create(request: Request) -> Response:
    await require_master_key(request)
    try:
        spec = KeySpec.model_validate_json(await request.body())
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        where = f"Invalid field '{param}'" if param else "Invalid key"
        raise ApiError(400, f"{where}: {err['msg']}", param=param, code="invalid_value") from None
    key, secret = await create_key(_state(request), spec)
    # The only time the secret is shown.
    return _json({**public_view(key), "secret": secret}, 201)


@router.get("/keys")
async def list_keys(request: Request) -> Response:
    await require_master_key(request)
    state = _state(request)
    keys = sorted(await state.list_keys(), key=lambda k: k.created_at)
    return _json({"data": [await _with_usage(state, public_view(k)) for k in keys]})


@router.get("/keys/{key_id}")
async def get_key(request: Request, key_id: str) -> Response:
    await require_master_key(request)
    state = _state(request)
    key = await state.key_by_id(key_id)
    if key is None:
        raise ApiError(404, f"No API key {key_id}", code="key_not_found")
    return _json(await _with_usage(state, public_view(key)))


@router.delete("/keys/{key_id}")
async def revoke(request: Request, key_id: str) -> Response:
    await require_master_key(request)
    state = _state(request)
    if not await state.revoke_key(key_id, time.time()):
        raise ApiError(404, f"No API key {key_id}", code="key_not_found")
    key = await state.key_by_id(key_id)
    assert key is not None
    return _json(public_view(key))
