"""Request metrics of wado-server: count, duration and bytes per method, route template and status.

A pure ASGI middleware just inside the access log, so it sees the bytes actually sent (after gzip) and
the route the router matched; a request that matched no route is labelled `<unmatched>`, so a scan of
random paths cannot grow the label set.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomcloud.metrics import HTTP_DURATION, HTTP_REQUESTS, HTTP_RESPONSE_BYTES
from dicomcloud.services.server.access_log import UNMATCHED_ROUTE, route_template


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            method = str(scope["method"])
            route = _route(scope)
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)
            HTTP_RESPONSE_BYTES.labels(method, route).inc(sent)


def _route(scope: Scope) -> str:
    if scope.get("route") is None:
        return UNMATCHED_ROUTE
    params: dict[str, Any] = scope.get("path_params") or {}
    return route_template(str(scope["path"]), params)
