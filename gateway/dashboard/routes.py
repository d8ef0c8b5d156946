"""The dashboard pages, their JSON feed, login, and the static files they load."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from gateway.admin import MASTER_KEY_ENV
from gateway.dashboard import auth
from gateway.dashboard.data import DEFAULT_WINDOW, WINDOWS_S, snapshot
from gateway.dashboard.history import PolicyHistory
from gateway.dashboard.policy_edit import PolicyEditor
from gateway.errors import ApiError
from gateway.guard import client_address, rules_of, throttle_of
from gateway.reloader import PolicyHolder

_PACKAGE = Path(__file__).resolve().parent.parent
POLL_INTERVAL_MS = 3000

router = APIRouter(prefix="/dashboard")


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


templates = Jinja2Templates(directory=str(_PACKAGE / "templates"))
templates.env.filters.update(utc=_utc, ms=_ms, pct=_pct, usd=lambda v: f"${v:.6f}")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def holder_of(request: Request) -> PolicyHolder:
    holder: PolicyHolder = request.app.state.holder
    if holder.current is None:
        raise ApiError(503, "No policy is loaded", code="not_ready")
    return holder


def editor_of(request: Request) -> PolicyEditor:
    return request.app.state.policy_editor


async def page_guard(request: Request) -> Response | None:
    """None when the caller may view; else where to send a browser instead."""
    if await auth.may_view(request):
        return None
    if auth.master_key() is None:
        return _login_page(request, 403, f"The dashboard is off: start the gateway with "
                           f"{MASTER_KEY_ENV} set.")  # fmt: skip
    return RedirectResponse(
        f"/dashboard/login?next={quote(request.url.path, safe='/')}", status_code=303
    )


async def api_guard(request: Request) -> None:
    if await auth.may_view(request):
        return
    if auth.master_key() is None:
        raise ApiError(403, f"The dashboard is off: start the gateway with {MASTER_KEY_ENV} set",
                       code="admin_disabled")  # fmt: skip
    raise ApiError(401, "The dashboard needs the master key", code="invalid_master_key")


def _login_page(
    request: Request, status: int, error: str | None = None, nxt: str | None = None
) -> Response:
    nxt = _safe_next(nxt or request.query_params.get("next", "/dashboard"))
    return templates.TemplateResponse(
        request, "dashboard/login.html", {"error": error, "next": nxt}, status_code=status
    )


def _safe_next(target: str) -> str:
    # Only back into the dashboard: an open redirect would let a link send users elsewhere.
    return target if target.startswith("/dashboard") and "//" not in target else "/dashboard"


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _login_page(request, 200)


@router.post("/login")
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode(errors="replace"))
    given = form.get("master_key", [""])[0]
    nxt = _safe_next(form.get("next", ["/dashboard"])[0])
    master = auth.master_key()
    if master is None:
        return _login_page(request, 403, f"The gateway has no master key ({MASTER_KEY_ENV}).")
    try:
        right = await throttle_of(request).verify(
            client_address(request), rules_of(request).failures, given, [master]
        )
    except ApiError as err:  # too many wrong keys from this address: the page says so
        page = _login_page(request, err.status, err.message, nxt)
        page.headers.update(err.headers)
        return page
    if not right:
        return _login_page(request, 401, "Wrong master key.", nxt)
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


def mount_dashboard(app: FastAPI, settings: Any) -> None:
    """Add the dashboard to the gateway app; `settings` is gateway.app.Settings."""
    from gateway.dashboard.policy_routes import router as policy_router

    history_path = getattr(settings, "policy_history_path", None) or (
        Path(settings.log_path).parent / "routegate-policy-history.sqlite"
    )
    app.state.dashboard_log_path = Path(settings.log_path)
    app.state.policy_editor = PolicyEditor(PolicyHistory(Path(history_path)), settings.watch_policy)
    app.include_router(router)
    app.include_router(policy_router)
    static = StaticFiles(directory=str(_PACKAGE / "static"))
    app.mount("/dashboard/static", static, name="dashboard-static")
