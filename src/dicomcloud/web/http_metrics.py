"""Request metrics of wado-server: count, duration and bytes per method, route template and status.

A pure ASGI middleware just inside the access log, so it sees the bytes actually sent (after gzip) and
the route the router matched; a request that matched no route is labelled `<unmatched>`, so a scan of
random paths cannot grow the label set.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from dicomcloud.metrics import HTTP_DURATION, HTTP_REQUESTS, HTTP_RESPONSE_BYTES
from dicomcloud.web.access_log import UNMATCHED_ROUTE, ResponseFacts, route_template


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        response = ResponseFacts()
        try:
            await self.app(scope, receive, response.watch(send))
        finally:
            method = str(scope["method"])
            route = _route(scope)
            HTTP_REQUESTS.labels(method, route, str(response.status)).inc()
            HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)
            HTTP_RESPONSE_BYTES.labels(method, route).inc(response.sent)


def _route(scope: Scope) -> str:
    if scope.get("route") is None:
        return UNMATCHED_ROUTE
    params: dict[str, Any] = scope.get("path_params") or {}
    return route_template(str(scope["path"]), params)
