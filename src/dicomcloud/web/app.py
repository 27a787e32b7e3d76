"""The DICOMweb HTTP service (wado-server): one FastAPI app per process, stateless across requests.

Every DICOMweb route exists twice, built from one router: under `<root>` (default: /dicom-web) for
the default tenant and under `/<tenant><root>` for a named one, so `/openapi.json` lists both. A GET of
frames is answered by web/frame_path.py before FastAPI's router, with the route's own functions. WADO-URI
is `/wado` and `/<tenant>/wado`, behind the same tenant and access dependencies.
Errors are turned into responses here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES
from starlette.types import Message, Scope

from dicomcloud.archive.core import Archive
from dicomcloud.errors import AuthError, DicomCloudError
from dicomcloud.ops import HEALTH_BODY, metrics_text, readiness, runtime_checks
from dicomcloud.web import api_docs, dashboard, delete, home, qido, rendered, stats, stow, viewer, wado, wado_uri
from dicomcloud.web.access_log import install_access_log
from dicomcloud.web.auth import open_authenticator, require_admin, require_dicomweb_access
from dicomcloud.web.context import use_default_tenant, use_path_tenant
from dicomcloud.web.frame_path import FramePath
from dicomcloud.web.origin import TrustedOrigin
from dicomcloud.web.response_headers import ResponseHeaders
from dicomcloud.web.zero_copy import GZipAroundZeroCopy

log = logging.getLogger(__name__)

# Headers a browser viewer (OHIF) must be allowed to read on cross-origin responses.
EXPOSED_HEADERS = ["Content-Type", "Content-Length", "Content-Location", "Content-Encoding", "Location", "Warning"]
# Multipart, DICOM and pixel data gain little from gzip and cost CPU per byte; JSON gains a lot.
NOT_GZIPPED = (
    *DEFAULT_EXCLUDED_CONTENT_TYPES,
    "multipart/*",
    "application/dicom",
    "application/octet-stream",
    "application/zip",
)
GZIP_MINIMUM_SIZE = 1024
# A response sent before the request body was read (a stalled, oversized or unauthorized
# upload) must close the connection, or the unread body would be taken as the next request.
CLOSE_AFTER = frozenset({401, 403, 408, 413})
# A path no route answers: asking the router for it visits every route.
WARM_UP_PATH = "/.dicomcloud-warm-up"


def create_app(archive: Archive) -> FastAPI:
    """The DICOMweb app over `archive`: routes translate requests into the archive's operations."""
    runtime = archive.runtime
    # FastAPI's own OpenTelemetry is off: the archive's metrics and access log are its telemetry, and asking for the
    # global providers on every request cost 3% of a frame request's Python time.
    app = FastAPI(
        title="dicomcloud DICOMweb",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.auth = open_authenticator(runtime.settings.auth, runtime.cache)
    app.state.archive = archive

    dicomweb = APIRouter()
    for module in (qido, wado, rendered, stow, delete):
        dicomweb.include_router(module.router)
    root = runtime.settings.http.root_path
    # The tenant dependency runs first: access is checked against the tenant it found.
    authorized = Depends(require_dicomweb_access)
    app.include_router(dicomweb, prefix=root, dependencies=[Depends(use_default_tenant), authorized])
    app.include_router(dicomweb, prefix="/{tenant}" + root, dependencies=[Depends(use_path_tenant), authorized])
    app.include_router(wado_uri.router, dependencies=[Depends(use_default_tenant), authorized])
    app.include_router(wado_uri.router, prefix="/{tenant}", dependencies=[Depends(use_path_tenant), authorized])

    app.include_router(stats.router, dependencies=[Depends(require_admin)])
    app.include_router(dashboard.router)
    for public in (home, viewer, api_docs):  # pages and their files; the data they show goes through the routes above
        app.include_router(public.router)

    @app.get("/health", tags=["Service"], summary="Liveness")
    def health() -> dict[str, str]:
        return HEALTH_BODY

    checks = runtime_checks(runtime)

    @app.get("/ready", tags=["Service"], summary="Readiness: 503 naming the dependency that cannot be reached")
    def ready() -> JSONResponse:
        is_ready, body = readiness(checks)
        return JSONResponse(body, status_code=200 if is_ready else 503)

    @app.get("/metrics", tags=["Service"], summary="Prometheus metrics of this process")
    def metrics() -> Response:
        return Response(metrics_text(), media_type=CONTENT_TYPE_LATEST)

    for handled in (DicomCloudError, HTTPException, RequestValidationError):
        app.add_exception_handler(handled, _error_response)
    app.add_middleware(FramePath, root_path=root, error_response=_error_response)  # innermost: every layer sees it
    app.add_middleware(GZipAroundZeroCopy, minimum_size=GZIP_MINIMUM_SIZE, exclude_content_types=NOT_GZIPPED)
    if runtime.settings.http.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=runtime.settings.http.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
        )
    app.add_middleware(ResponseHeaders)
    install_access_log(app, runtime)  # it sees what was actually sent, and counts it in the metrics
    app.add_middleware(TrustedOrigin, settings=runtime.settings.http)  # outermost: everything sees its origin
    return app


def warm_up(app: FastAPI) -> None:
    """Build what FastAPI and anyio otherwise build on a process's first request: each route's dependencies and
    models (FastAPI resolves them when the router first visits the route), the middleware stack, anyio's thread
    pool backend. A fresh worker's first series metadata request took 25-35 ms instead of 7 ms without this.
    Nothing is logged or counted: the router is asked directly, outside the middleware."""
    app.middleware_stack = app.build_middleware_stack()
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": WARM_UP_PATH,
        "raw_path": WARM_UP_PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "server": ("127.0.0.1", 0),
        "client": ("127.0.0.1", 0),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    async def visit() -> None:
        await app.router(scope, receive, send)
        await anyio.to_thread.run_sync(lambda: None)

    asyncio.run(visit())


async def _error_response(request: Request, exc: Exception) -> JSONResponse:
    """The one place an error becomes a response: its status, `{"error": message}` and a log line."""
    headers: dict[str, str] = {}
    if isinstance(exc, DicomCloudError):
        status, message = exc.http_status, exc.message
        if isinstance(exc, AuthError):
            headers["WWW-Authenticate"] = exc.challenge
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
        headers.update(exc.headers or {})
    elif isinstance(exc, RequestValidationError):
        status = 400
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    else:
        raise exc
    level = logging.ERROR if status >= 500 else logging.WARNING
    log.log(level, "%s %s -> %d: %s", request.method, request.url.path, status, message)
    if status in CLOSE_AFTER:
        headers["Connection"] = "close"
    return JSONResponse({"error": message}, status_code=status, headers=headers)
