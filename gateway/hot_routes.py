"""A short way through the app for the completion endpoints, which are most of its traffic.

An ASGI middleware, the innermost of the app's own (inside the body limits): a POST to one of
its paths goes to the route the router would pick, with the exception handlers the exception
middleware would give it, and what the router would put in the scope. That skips, per
request, the exception middleware's own wrapper (the route's wrapper below it has the same
handlers: an exception one of them handles is answered there, any other passes both), FastAPI's
exit stack (it closes uploaded files of FastAPI routes; these are plain Starlette routes) and
the search through the route list. Anything else, or a stack not built as expected, takes the
full way.
"""

from __future__ import annotations

from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import Match, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send


class HotRoutes:
    def __init__(self, app: ASGIApp, *, router: Router, paths: tuple[str, ...]):
        self.app = app
        self._router = router
        self._paths = paths
        self._routes: dict[str, Route] = {}
        self._seen = -1  # how many routes the router had when `_routes` was worked out

    def _route_for(self, path: str) -> Route | None:
        routes = self._router.routes
        if len(routes) != self._seen:  # routes were added: find them again
            self._routes, self._seen = {}, len(routes)
            if not self._stack_as_expected():
                return None
            for hot in self._paths:
                probe = {"type": "http", "method": "POST", "path": hot, "root_path": ""}
                for route in routes:  # the first full match, as Router.app takes it
                    match, _ = route.matches(probe)
                    if match is Match.FULL:
                        if type(route) is Route:
                            self._routes[hot] = route
                        break
        return self._routes.get(path)

    def _stack_as_expected(self) -> bool:
        """Below: the exception middleware, FastAPI's exit stack, then the router with no
        middleware of its own. Anything else: the short way would skip something."""
        inner = getattr(self.app, "app", None)
        return (
            isinstance(self.app, ExceptionMiddleware)
            and isinstance(inner, AsyncExitStackMiddleware)
            and inner.app is self._router
            and self._router.middleware_stack == self._router.app
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (
            self._route_for(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path")
            else None
        )
        if route is None:
            await self.app(scope, receive, send)
            return
        exceptions = self.app
        assert isinstance(exceptions, ExceptionMiddleware)  # _stack_as_expected
        # What ExceptionMiddleware and Router.app put in the scope before Route.handle.
        scope["starlette.exception_handlers"] = (
            exceptions._exception_handlers,
            exceptions._status_handlers,
        )
        scope.setdefault("router", self._router)
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = dict(scope.get("path_params", {}))
        await route.handle(scope, receive, send)
