"""The ops endpoints: /health, /ready and /metrics on the ops listener and on wado-server's own port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from support import make_runtime

from dicomcloud.config import OpsSettings
from dicomcloud.errors import ServiceUnavailable
from dicomcloud.services.ops import Check, OpsServer, ops_listener, readiness, runtime_checks
from dicomcloud.services.runtime import Runtime
from dicomcloud.services.server.app import create_app


def reachable() -> None:
    """A dependency that answers."""


def unreachable() -> None:
    raise ServiceUnavailable("connection refused")


def broken() -> None:
    raise RuntimeError("driver bug")


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    runtime = make_runtime(tmp_path / "data")
    yield runtime
    runtime.close()


def serve(checks: list[Check]) -> OpsServer:
    server = OpsServer(OpsSettings(host="127.0.0.1", port=0), checks)
    server.start()
    return server


@pytest.fixture
def ops_url() -> Iterator[str]:
    server = serve([Check("index", reachable), Check("bus", reachable)])
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def test_health_answers_ok_while_the_process_runs(ops_url: str) -> None:
    response = httpx.get(f"{ops_url}/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_ready_is_200_and_names_every_check_when_all_answer(ops_url: str) -> None:
    response = httpx.get(f"{ops_url}/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"index": {"status": "ok"}, "bus": {"status": "ok"}}}


def test_ready_is_503_naming_the_failing_check() -> None:
    server = serve([Check("index", reachable), Check("bus", unreachable)])
    try:
        response = httpx.get(f"http://127.0.0.1:{server.port}/ready")
    finally:
        server.stop()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["index"] == {"status": "ok"}
    assert body["checks"]["bus"] == {"status": "failed", "error": "connection refused"}


def test_an_optional_check_that_fails_degrades_but_stays_ready() -> None:
    ready, body = readiness([Check("index", reachable), Check("cache", unreachable, required=False)])
    assert ready
    assert body["checks"]["cache"] == {"status": "degraded", "error": "connection refused"}


def test_a_probe_that_breaks_unexpectedly_counts_as_unreachable() -> None:
    ready, body = readiness([Check("index", broken)])
    assert not ready
    assert body["checks"]["index"] == {"status": "failed", "error": "RuntimeError: driver bug"}


def test_an_unknown_ops_path_is_404(ops_url: str) -> None:
    assert httpx.get(f"{ops_url}/dicom-web/studies").status_code == 404


def test_ops_port_0_starts_no_listener() -> None:
    with ops_listener(OpsSettings(port=0), [Check("index", reachable)]) as server:
        assert server is None


def test_runtime_checks_are_ready_on_the_embedded_backends(runtime: Runtime) -> None:
    ready, body = readiness(runtime_checks(runtime))
    assert ready
    assert set(body["checks"]) == {"index", "bus", "storage", "cache"}


def test_runtime_is_unavailable_when_its_storage_folder_is_gone(runtime: Runtime, tmp_path: Path) -> None:
    (tmp_path / "data" / "tmp").rmdir()
    ready, body = readiness(runtime_checks(runtime))
    assert not ready
    assert body["checks"]["storage"]["status"] == "failed"


def test_wado_server_answers_health_ready_and_metrics_outside_the_dicomweb_root(runtime: Runtime) -> None:
    with TestClient(create_app(runtime)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready")
        assert (ready.status_code, ready.json()["status"]) == (200, "ready")
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
