"""Answers for requests no route takes, worked out from the app's own routes, so an endpoint
is named here as soon as it is added: a 404 lists the endpoints that exist (those under the
path's first segment, else the API's under /v1), a 405 the methods the path takes."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Scope

from gateway.errors import ApiError

API_PREFIX = "/v1"
_SHOWN_PATH_CHARS = 200  # a client's path is echoed back, but not a megabyte of it


def _methods(route: Route) -> set[str]:
    # Starlette adds HEAD to every GET route: not worth naming.
    return set(route.methods or ()) - {"HEAD"}


def _top(path: str) -> str:
    """ "/admin/keys/k1" -> "/admin"; "/" -> ""."""
    first = path.strip("/").split("/", 1)[0]
    return "/" + first if first else ""


def _under(routes: Sequence[BaseRoute], prefix: str) -> list[str]:
    """'GET /v1/models' for each method of each route at or under `prefix`."""
    out = []
    for route in routes:
        if not isinstance(route, Route) or not prefix:
            continue
        if route.path == prefix or route.path.startswith(prefix + "/"):
            out.extend(f"{m} {route.path_format}" for m in sorted(_methods(route)))
    return out


def _elsewhere(routes: Sequence[BaseRoute], prefix: str) -> list[str]:
    tops = {_top(r.path) for r in routes if isinstance(r, Route | Mount)}
    return sorted(t for t in tops if t and t != prefix)


def unknown_endpoint(routes: Sequence[BaseRoute], method: str, path: str) -> ApiError:
    prefix = _top(path)
    listed = _under(routes, prefix)
    if not listed:
        prefix, listed = API_PREFIX, _under(routes, API_PREFIX)
    shown = path if len(path) <= _SHOWN_PATH_CHARS else path[:_SHOWN_PATH_CHARS] + "..."
    others = _elsewhere(routes, prefix)
    also = f"; also paths under {', '.join(others)}" if others else ""
    return ApiError(
        404,
        f"No endpoint {method} {shown}. The endpoints under {prefix}: {', '.join(listed)}{also}",
        code="not_found",
    )


def http_error(routes: Sequence[BaseRoute], scope: Scope, exc: HTTPException) -> ApiError:
    """Starlette's HTTPException as an OpenAI-shaped error. The router's own 404 and 405
    (no route for the path, or none for its method) name what does exist."""
    headers = dict(exc.headers or {})
    if exc.status_code not in (404, 405):
        return ApiError(exc.status_code, str(exc.detail), headers=headers)
    method = scope.get("method", "GET")
    # The scope as the router first saw it: a Mount that matched has moved root_path on.
    probe = {
        "type": "http",
        "path": scope["path"],
        "root_path": scope.get("app_root_path", scope.get("root_path", "")),
        "method": method,
    }
    allowed: set[str] = set()
    for route in routes:
        match, _ = route.matches(probe)
        if match is Match.FULL:  # the route itself refused (a static file that is not there)
            code = "not_found" if exc.status_code == 404 else "method_not_allowed"
            message = f"{exc.detail}: {method} {scope['path'][:_SHOWN_PATH_CHARS]}"
            return ApiError(exc.status_code, message, code=code, headers=headers)
        if match is Match.PARTIAL and isinstance(route, Route):
            allowed |= set(route.methods or ())
    if not allowed:
        return unknown_endpoint(routes, method, scope["path"])
    # Several routes may share a path, one per method: the Allow header names them all.
    headers.pop("Allow", None)
    headers["allow"] = ", ".join(sorted(allowed))
    names = sorted(allowed - {"HEAD"}) or ["HEAD"]
    return ApiError(
        405,
        f"Method {method} is not allowed on {scope['path'][:_SHOWN_PATH_CHARS]}; "
        f"it takes {', '.join(names)}",
        code="method_not_allowed",
        headers=headers,
    )
