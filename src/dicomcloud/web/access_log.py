"""The access log: every wado-server request becomes one AccessLog event on the bus (`wado_access_log`), and is
counted in the request metrics (web/http_metrics.py) in the same pass.

A pure ASGI middleware, outermost but for web/origin.py's, so it sees the status and the bytes actually
sent (after gzip) and the route template and path parameters the router matched. It records no header,
ever: the user is the `sub` an authentication layer leaves in `request.state`, the client the address
web/origin.py decided (the peer, or what a trusted proxy forwarded). Each request is also one unit of
work for the log: its repeated warnings are summarised in one line (logs.py `repeats_summarised`).
Publishing never touches the request: events go into a bounded buffer that a
background thread flushes to the bus; a bus failure is logged and the events kept for the next
flush, the oldest dropped when the buffer is full.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomcloud.errors import DicomCloudError
from dicomcloud.events import AccessLog
from dicomcloud.logs import repeats_summarised
from dicomcloud.ports.bus import Bus
from dicomcloud.ports.bus import Message as BusMessage
from dicomcloud.runtime import Runtime
from dicomcloud.web.http_metrics import HttpMetrics
from dicomcloud.web.zero_copy import ZERO_COPY_SEND

log = logging.getLogger(__name__)

UNMATCHED_ROUTE = "<unmatched>"
MAX_UID = 64


class AccessLogPublisher:
    """A bounded buffer of events and the thread that publishes them, started by the first event."""

    def __init__(self, bus: Bus, flush_seconds: float, max_queued: int) -> None:
        self.bus = bus
        self.flush_seconds = flush_seconds
        self._events: collections.deque[AccessLog] = collections.deque(maxlen=max_queued)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failing = False

    def submit(self, event: AccessLog) -> None:
        """Never blocks and never raises: a full buffer drops its oldest event."""
        self._events.append(event)
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Publish what is buffered; on a bus failure keep it for the next flush."""
        batch: list[AccessLog] = []
        while self._events:
            try:
                batch.append(self._events.popleft())
            except IndexError:
                break
        if not batch:
            return
        try:
            self.bus.publish([BusMessage(e.topic, e.key, e.to_bytes()) for e in batch])
        except DicomCloudError as exc:
            if not self._failing:
                log.warning("access log not published (%d events kept): %s", len(batch), exc.message)
            self._failing = True
            self._events.extendleft(reversed(batch))
            return
        if self._failing:
            log.info("access log published again")
        self._failing = False

    def close(self) -> None:
        """Stop the thread after a last flush."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()


@dataclass
class ResponseFacts:
    """What a middleware sees of a response passing through: its status (500 if none was sent) and body bytes."""

    status: int = 500
    sent: int = 0

    def watch(self, send: Send) -> Send:
        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = int(message["status"])
            elif message["type"] == "http.response.body":
                self.sent += len(message.get("body", b""))
            elif message["type"] == ZERO_COPY_SEND:
                self.sent += int(message["count"])
            await send(message)

        return watching_send


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, publisher: AccessLogPublisher, default_tenant: str) -> None:
        self.app = app
        self.publisher = publisher
        self.default_tenant = default_tenant
        self.metrics = HttpMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accessed_at = datetime.now(UTC).isoformat(timespec="microseconds")
        started = time.perf_counter()
        response = ResponseFacts()
        try:
            with repeats_summarised(f"{scope['method']} {scope['path']}"):
                await self.app(scope, receive, response.watch(send))
        finally:
            seconds = time.perf_counter() - started
            params: dict[str, Any] = scope.get("path_params") or {}
            route = route_template(str(scope["path"]), params) if scope.get("route") is not None else UNMATCHED_ROUTE
            self.metrics.record(str(scope["method"]), route, response.status, response.sent, seconds)
            self.publisher.submit(self._event(scope, accessed_at, route, response, seconds * 1000))

    def _event(
        self, scope: Scope, accessed_at: str, route: str, response: ResponseFacts, duration_ms: float
    ) -> AccessLog:
        params: dict[str, Any] = scope.get("path_params") or {}
        state: dict[str, Any] = scope.get("state") or {}
        client = scope.get("client")
        return AccessLog(
            accessed_at=accessed_at,
            tenant_id=str(state.get("tenant") or self.default_tenant),
            user_id=str(state.get("sub") or ""),
            client_address=str(client[0]) if client else "",
            method=str(scope["method"]),
            route=route,
            study_instance_uid=str(params.get("study", ""))[:MAX_UID],
            series_instance_uid=str(params.get("series", ""))[:MAX_UID],
            sop_instance_uid=str(params.get("instance", ""))[:MAX_UID],
            status=response.status,
            bytes_sent=response.sent,
            duration_ms=round(duration_ms, 3),
        )


def route_template(path: str, params: dict[str, Any]) -> str:
    """The matched path with each parameter's value put back as `{name}`, e.g. `/{tenant}/dicom-web/studies/{study}`.

    Built from the path because an included router's route knows only its own part; parameters
    are in the order they appear in the path, each a whole segment (or, for `:path`, the rest).
    """
    out: list[str] = []
    cursor = 0
    for name, value in params.items():
        needle = f"/{value}"
        at = path.find(needle, cursor)
        while at >= 0 and not path.startswith("/", at + len(needle)) and at + len(needle) != len(path):
            at = path.find(needle, at + 1)
        if at < 0:
            continue
        out.append(path[cursor:at] + "/{" + name + "}")
        cursor = at + len(needle)
    return "".join(out) + path[cursor:]


def install_access_log(app: FastAPI, runtime: Runtime) -> AccessLogPublisher:
    """Add the middleware and its publisher: after every middleware but the origin's, so it logs what was sent."""
    settings = runtime.settings
    publisher = AccessLogPublisher(
        runtime.bus, settings.warehouse.access_log_flush_seconds, settings.warehouse.access_log_max_queued
    )
    app.add_middleware(AccessLogMiddleware, publisher=publisher, default_tenant=settings.tenant)
    app.router.add_event_handler("shutdown", publisher.close)
    return publisher
