"""Who may see the dashboard and who may change the policy.

A browser cannot send a bearer header when it navigates, so the master key is typed once into
a login form and kept as a cookie. The cookie holds an HMAC of the master key, never the key,
and stays valid until the master key changes.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from starlette.requests import Request

from gateway.admin import MASTER_KEY_ENV
from gateway.keys import bearer_token

COOKIE = "routegate_dashboard"
_COOKIE_CONTEXT = b"routegate-dashboard-session-v1"


def master_key() -> str | None:
    return os.environ.get(MASTER_KEY_ENV) or None


def session_token(master: str) -> str:
    return hmac.new(master.encode(), _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


def key_matches(candidate: str, master: str) -> bool:
    return hmac.compare_digest(candidate.encode(), master.encode())


def has_master(request: Request) -> bool:
    """The caller proved the master key: a bearer header or the login cookie."""
    master = master_key()
    if master is None:
        return False
    token = bearer_token(request.headers.get("authorization"))
    if token is not None and key_matches(token, master):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(cookie.encode(), session_token(master).encode())


async def gateway_is_open(request: Request) -> bool:
    """No master key and no virtual keys: the gateway serves anyone, so does the dashboard."""
    if master_key() is not None:
        return False
    return not await request.app.state.services.access.state.has_keys()


async def may_view(request: Request) -> bool:
    return has_master(request) or await gateway_is_open(request)
