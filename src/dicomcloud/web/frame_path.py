"""The frames route without FastAPI's routing: a viewer sends frame requests by the hundred, and each paid more
for FastAPI's route matching and dependency resolution than for the archive's work (py-spy under a viewer's load).

`FramePath` is the innermost of the app's middlewares, so the origin, access log, metrics, response headers,
CORS and gzip layers see its requests like any other. A GET of a frames URL, under the default tenant's root or
under `/<tenant>`, is answered here by the very functions FastAPI's route and its dependencies call, in the same
order: web/context.py's tenant and scope, web/auth.py's access check, web/wado.py `frames_response`; an error
becomes a response through the app's one error handler. It records the match as FastAPI's router does (the
route, its endpoint and path parameters in the scope), so the access log and metrics name the same route
template. Any other request, and any other method on a frames URL, goes on to FastAPI.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomcloud.web import wado
from dicomcloud.web.auth import require_dicomweb_access
from dicomcloud.web.context import request_scope, use_default_tenant, use_path_tenant

ErrorResponder = Callable[[Request, Exception], Awaitable[Response]]


class FramePath:
    def __init__(self, app: ASGIApp, root_path: str, error_response: ErrorResponder) -> None:
        self.app = app
        self.error_response = error_response
        self.route = _frames_route()
        self.default_tenant = _path_regex(root_path + self.route.path)
        self.named_tenant = _path_regex("/{tenant}" + root_path + self.route.path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        route_path = get_route_path(scope)
        found = self.default_tenant.match(route_path) or self.named_tenant.match(route_path)
        if found is None:
            await self.app(scope, receive, send)
            return
        params = {name: value for name, value in found.groupdict().items() if value is not None}
        scope.update(endpoint=self.route.endpoint, path_params=params, route=self.route)
        request = Request(scope, receive, send)
        try:
            response = await self._answer(request, params)
        except Exception as exc:  # what FastAPI's exception middleware hands the app's handler; others re-raised
            response = await self.error_response(request, exc)
        await response(scope, receive, send)

    async def _answer(self, request: Request, params: dict[str, str]) -> Response:
        if "tenant" in params:
            await use_path_tenant(request, params["tenant"])
        else:
            await use_default_tenant(request)
        await require_dicomweb_access(request)
        scope = await request_scope(request)
        return await wado.frames_response(
            request, scope, params["study"], params["series"], params["instance"], params["frames"]
        )


def _frames_route() -> APIRoute:
    """The frames route of web/wado.py's router, the one FastAPI's router records for a frames request."""
    for route in wado.router.routes:
        if isinstance(route, APIRoute) and route.endpoint is wado.retrieve_frames:
            return route
    raise LookupError("web/wado.py has no frames route")


def _path_regex(path: str) -> re.Pattern[str]:
    """The regular expression Starlette's router matches `path` (a route template) with."""
    regex, _, _ = compile_path(path)
    return regex
