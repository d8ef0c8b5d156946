"""Who may see the dashboard and who may change the policy.

A browser cannot send a bearer header when it navigates, so the master key is typed once into
a login form and kept as a cookie. The cookie holds an HMAC of the master key, never the key,
and stays valid until the master key changes. A wrong master key, by bearer or login form,
counts against the caller's address (gateway/guard.py): past the limit, 429.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from gateway.admission.guard import bearer_is, master_key, rules_of, secret_matches

COOKIE = "routegate_dashboard"
_COOKIE_CONTEXT = b"routegate-dashboard-session-v1"

__all__ = ["COOKIE", "gateway_is_open", "has_master", "key_matches", "master_key", "may_view"]


def session_token(master: str) -> str:
    return hmac.new(master.encode(), _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


def key_matches(candidate: str, master: str) -> bool:
    return secret_matches(candidate, master)


async def has_master(request: Request) -> bool:
    """The caller proved the master key: the login cookie, or a bearer header (throttled)."""
    master = master_key()
    if master is None:
        return False
    # The cookie is an HMAC-SHA256, not worth guessing; a stale one after a key change is
    # normal (the page polls with it), so it is never counted as a failure.
    cookie = request.cookies.get(COOKIE, "")
    if hmac.compare_digest(cookie.encode(), session_token(master).encode()):
        return True
    return await bearer_is(request, [master])


def gateway_is_open(request: Request) -> bool:
    """No master key and `access.auth` open (the default without one): the gateway serves
    anyone, so does the dashboard. Never inferred from the keys in the state store."""
    return master_key() is None and rules_of(request).auth == "open"


async def may_view(request: Request) -> bool:
    return gateway_is_open(request) or await has_master(request)
