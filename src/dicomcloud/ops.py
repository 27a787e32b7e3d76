"""The ops listener: /health, /ready and /metrics of a service process, for orchestrators and Prometheus.

Every long-running process starts one when `ops.port` > 0, on a small threaded HTTP server of its own,
so a worker without an HTTP API is probed the same way as wado-server (which also answers these paths on
its DICOMweb port). `/health` says the process runs; `/ready` asks each dependency (`ping()` on the
ports, plus whatever listener the process owns) and answers 503 naming the failing check. The cache is
an optional check: the archive works without it, only slower, so a cache that cannot be reached marks
the process degraded in the body but still ready.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from dicomcloud.config import OpsSettings
from dicomcloud.errors import DicomCloudError
from dicomcloud.run_folder import METRICS_FOLDER
from dicomcloud.runtime import Runtime

log = logging.getLogger(__name__)

HEALTH_BODY = {"status": "ok"}


@dataclass(frozen=True)
class Check:
    """A named readiness probe: it returns when its dependency answers and raises when it does not."""

    name: str
    probe: Callable[[], None]
    # An optional dependency that fails degrades the process; it stays ready.
    required: bool = True


def runtime_checks(runtime: Runtime) -> list[Check]:
    """The dependencies every service process has: index, bus and storage required, the cache optional.

    Each is looked up when probed, so the checks follow an adapter the runtime was given later.
    """
    return [
        Check("index", lambda: runtime.index.ping()),
        Check("bus", lambda: runtime.bus.ping()),
        Check("storage", lambda: runtime.storage.ping()),
        Check("cache", lambda: runtime.cache.ping(), required=False),
    ]


def readiness(checks: Sequence[Check]) -> tuple[bool, dict[str, Any]]:
    """Run every check; ready unless a required one failed. The body names each check's state."""
    results: dict[str, dict[str, str]] = {}
    ready = True
    for check in checks:
        try:
            check.probe()
        except DicomCloudError as exc:
            results[check.name] = _failed(check, exc.message)
        except Exception as exc:
            # A probe that breaks in an unexpected way still answers the question: not reachable.
            results[check.name] = _failed(check, f"{type(exc).__name__}: {exc}")
        else:
            results[check.name] = {"status": "ok"}
            continue
        ready = ready and not check.required
    return ready, {"status": "ready" if ready else "unavailable", "checks": results}


def _failed(check: Check, error: str) -> dict[str, str]:
    return {"status": "failed" if check.required else "degraded", "error": error}


def metrics_text() -> bytes:
    """Every metric of this service in the Prometheus text format: of this process, or the sum of every
    process's files in the run folder (run_folder.py) when the service runs several. Those carry the
    archive's metrics only: process_* and python_* would describe just the process that answered."""
    folder = os.environ.get(METRICS_FOLDER)
    if not folder:
        return generate_latest()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


class _OpsHandler(BaseHTTPRequestHandler):
    server: _OpsHTTPServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, "application/json", json.dumps(HEALTH_BODY).encode())
        elif path == "/ready":
            ready, body = readiness(self.server.checks)
            self._send(200 if ready else 503, "application/json", json.dumps(body).encode())
        elif path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, metrics_text())
        else:
            self._send(404, "application/json", json.dumps({"error": f"no ops resource {path}"}).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Through logging, not raw stderr: probes every few seconds belong at DEBUG, and JSON logs stay JSON.
        log.debug("ops %s %s", self.address_string(), format % args)


class _OpsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], checks: Sequence[Check]) -> None:
        super().__init__(address, _OpsHandler)
        self.checks = list(checks)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("ops request from %s failed", client_address)


class OpsServer:
    """The ops listener of one process, on its own thread."""

    def __init__(self, settings: OpsSettings, checks: Sequence[Check]) -> None:
        self._http = _OpsHTTPServer((settings.host, settings.port), checks)
        self._thread = threading.Thread(target=self._http.serve_forever, name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._http.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("ops endpoints (/health, /ready, /metrics) on %s:%d", self._http.server_address[0], self.port)

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()


@contextmanager
def ops_listener(settings: OpsSettings, checks: Sequence[Check]) -> Iterator[OpsServer | None]:
    """Serve the ops endpoints while the block runs, when `settings.port` > 0 (else nothing)."""
    if settings.port <= 0:
        yield None
        return
    server = OpsServer(settings, checks)
    server.start()
    try:
        yield server
    finally:
        server.stop()
