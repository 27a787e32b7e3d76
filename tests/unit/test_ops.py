"""The ops endpoints: /health, /ready and /metrics on the ops listener and on wado-server's own port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support import make_archive

from dicomcloud.archive.core import Archive
from dicomcloud.config import OpsSettings
from dicomcloud.errors import ServiceUnavailable
from dicomcloud.ops import Check, OpsServer, ops_listener, readiness, runtime_checks
from dicomcloud.web.app import create_app


def reachable() -> None:
    """A dependency that answers."""


def unreachable() -> None:
    raise ServiceUnavailable("connection refused")


def broken() -> None:
    raise RuntimeError("driver bug")


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    archive = make_archive(tmp_path / "data")
    yield archive
    archive.close()


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


def test_runtime_checks_are_ready_on_the_embedded_backends(archive: Archive) -> None:
    ready, body = readiness(runtime_checks(archive.runtime))
    assert ready
    assert set(body["checks"]) == {"index", "bus", "storage", "cache"}


def test_runtime_is_unavailable_when_its_storage_folder_is_gone(archive: Archive, tmp_path: Path) -> None:
    (tmp_path / "data" / "tmp").rmdir()
    ready, body = readiness(runtime_checks(archive.runtime))
    assert not ready
    assert body["checks"]["storage"]["status"] == "failed"


def test_wado_server_answers_health_ready_and_metrics_outside_the_dicomweb_root(archive: Archive) -> None:
    with TestClient(create_app(archive)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready")
        assert (ready.status_code, ready.json()["status"]) == (200, "ready")
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")


def test_with_oidc_on_the_ops_paths_need_no_token_and_dicomweb_still_does(tmp_path: Path) -> None:
    auth = {"enabled": True, "issuer": "http://127.0.0.1:9/realms/none", "audience": "dicomcloud"}
    archive = make_archive(tmp_path / "data", auth=auth)
    try:
        with TestClient(create_app(archive)) as client:
            assert [client.get(path).status_code for path in ("/health", "/ready", "/metrics")] == [200, 200, 200]
            assert client.get("/dicom-web/studies").status_code == 401
    finally:
        archive.close()


def sample_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` with these labels in a Prometheus text exposition (0 if none)."""
    return sum(
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_parse_and_count_a_request_by_its_route_template_not_its_uids(archive: Archive) -> None:
    study = "1.2.826.0.1.3680043.8.498.101"
    route = "/dicom-web/studies/{study}/series"
    with TestClient(create_app(archive)) as client:
        before = sample_value(client.get("/metrics").text, "dicomcloud_http_requests_total", method="GET", route=route)
        client.get(f"/dicom-web/studies/{study}/series")
        text = client.get("/metrics").text
    assert sample_value(text, "dicomcloud_http_requests_total", method="GET", route=route) == before + 1
    assert sample_value(text, "dicomcloud_http_request_duration_seconds_count", method="GET", route=route) >= 1
    assert sample_value(text, "dicomcloud_http_response_bytes_total", method="GET", route=route) > 0
    assert study not in text


def test_ops_listener_metrics_parse_as_prometheus_text(ops_url: str) -> None:
    response = httpx.get(f"{ops_url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"dicomcloud_http_requests", "dicomcloud_events_processed", "dicomcloud_consumer_lag"} <= names


# Logs through every path a service has: ours, uvicorn's, pynetdicom's, a warning, and uncaught
# exceptions in a thread and in the main thread.
LOGGING_PROGRAM = """
import logging, threading, warnings
from dicomcloud.cli import build_parser
from dicomcloud.config import load_settings
from dicomcloud.logs import setup_logging
args = build_parser().parse_args(["consumer"])
setup_logging(load_settings().log_level, args.log_format)
logging.getLogger("dicomcloud").info("multi\\nline")
logging.getLogger("uvicorn.error").info("Uvicorn running")
logging.getLogger("pynetdicom").error("association aborted")
warnings.warn("deprecated")
thread = threading.Thread(target=lambda: 1 / 0)
thread.start()
thread.join()
raise ValueError("fatal")
"""


def test_with_the_json_log_format_every_stderr_line_is_one_json_object(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src"), "DICOMCLOUD_LOG_FORMAT": "json"}
    result = subprocess.run(
        [sys.executable, "-c", LOGGING_PROGRAM], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    lines = result.stderr.splitlines()
    entries = [json.loads(line) for line in lines]
    assert [entry["logger"] for entry in entries] == [
        "dicomcloud", "uvicorn.error", "pynetdicom", "py.warnings", "dicomcloud", "dicomcloud"
    ]
    assert entries[0]["message"] == "multi\nline"
    assert "ZeroDivisionError" in entries[4]["exception"]
    assert "ValueError: fatal" in entries[5]["exception"]
