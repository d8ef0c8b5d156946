"""What the dashboard's pages share: templates, the guards, JSON answers, the app's holders."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from gateway.admission.admin_api import MASTER_KEY_ENV
from gateway.dashboard import auth
from gateway.dashboard.policy_edit import PolicyEditor
from gateway.errors import ApiError
from gateway.reloader import PolicyHolder

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


templates = Jinja2Templates(directory=str(PACKAGE_DIR / "templates"))
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
        return login_page(request, 403, f"The dashboard is off: start the gateway with "
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


def login_page(
    request: Request, status: int, error: str | None = None, nxt: str | None = None
) -> Response:
    nxt = safe_next(nxt or request.query_params.get("next", "/dashboard"))
    return templates.TemplateResponse(
        request, "dashboard/login.html", {"error": error, "next": nxt}, status_code=status
    )


def safe_next(target: str) -> str:
    # Only back into the dashboard: an open redirect would let a link send users elsewhere.
    return target if target.startswith("/dashboard") and "//" not in target else "/dashboard"
