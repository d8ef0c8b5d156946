"""The dashboard pages, their JSON feed, login, and the static files they load."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from gateway.admission.admin_api import MASTER_KEY_ENV
from gateway.admission.guard import client_address, rules_of, throttle_of
from gateway.dashboard import auth
from gateway.dashboard.common import (
    api_guard,
    holder_of,
    json_response,
    login_page,
    page_guard,
    safe_next,
    templates,
)
from gateway.dashboard.data import DEFAULT_WINDOW, WINDOWS_S, snapshot
from gateway.errors import ApiError

POLL_INTERVAL_MS = 3000

router = APIRouter(prefix="/dashboard")


@router.get("/login")
async def login_form(request: Request) -> Response:
    return login_page(request, 200)


@router.post("/login")
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode(errors="replace"))
    given = form.get("master_key", [""])[0]
    nxt = safe_next(form.get("next", ["/dashboard"])[0])
    master = auth.master_key()
    if master is None:
        return login_page(request, 403, f"The gateway has no master key ({MASTER_KEY_ENV}).")
    try:
        right = await throttle_of(request).verify(
            client_address(request), rules_of(request).failures, given, [master]
        )
    except ApiError as err:  # too many wrong keys from this address: the page says so
        page = login_page(request, err.status, err.message, nxt)
        page.headers.update(err.headers)
        return page
    if not right:
        return login_page(request, 401, "Wrong master key.", nxt)
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(
        auth.COOKIE, auth.session_token(master), httponly=True, samesite="strict",
        path="/dashboard",
    )  # fmt: skip
    return resp


@router.post("/logout")
async def logout(request: Request) -> Response:
    resp = RedirectResponse("/dashboard/login", status_code=303)
    resp.delete_cookie(auth.COOKIE, path="/dashboard")
    return resp


async def _snapshot(request: Request) -> dict[str, Any]:
    holder = holder_of(request)
    services = request.app.state.services
    window = request.query_params.get("window", DEFAULT_WINDOW)
    assert holder.current is not None
    return await snapshot(
        request.app.state.dashboard_log_path,
        services.access.state,
        services.pacers,
        holder.current,
        holder.last_error,
        window,
    )


@router.get("")
async def dashboard(request: Request) -> Response:
    if (redirect := await page_guard(request)) is not None:
        return redirect
    data = await _snapshot(request)
    return templates.TemplateResponse(
        request,
        "dashboard/dashboard.html",
        {
            "data": data,
            # No "<": the JSON sits inside a <script> element ("</", "<!--" would break it).
            "data_json": orjson.dumps(data).decode().replace("<", "\\u003c"),
            "windows": list(WINDOWS_S),
            "poll_ms": POLL_INTERVAL_MS,
            "is_master": await auth.has_master(request),
        },
    )


@router.get("/data.json")
async def data_json(request: Request) -> Response:
    await api_guard(request)
    return json_response(await _snapshot(request))
