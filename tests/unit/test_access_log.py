"""The access log: one AccessLog per wado-server request, without headers, published off the request path."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from fastapi import Request
from fastapi.testclient import TestClient

from dicomcloud.archive.core import Archive
from dicomcloud.events import ACCESS_LOG_QUEUE, AccessLog
from dicomcloud.web.access_log import AccessLogPublisher, route_template
from dicomcloud.web.app import create_app

STUDY, SERIES, SOP = "1.2.826.0.4.1", "1.2.826.0.4.1.1", "1.2.826.0.4.1.1.1"


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    opened = support.make_archive(tmp_path / "data", warehouse={"access_log_flush_seconds": 0.05})
    yield opened
    opened.close()


def published(archive: Archive) -> list[AccessLog]:
    records = archive.runtime.bus.subscribe("test", [ACCESS_LOG_QUEUE]).poll(1000, 0.2)
    return [AccessLog.from_bytes(r.value) for r in records]


def requests(archive: Archive, *paths: str, **headers: str) -> list[int]:
    """GET each path; leaving the client runs the app's shutdown, which flushes the access log."""
    app = create_app(archive)

    @app.get("/whoami")
    def whoami(request: Request) -> dict[str, str]:
        request.state.sub = "alice"  # what an authentication layer leaves for the access log
        return {"user": "alice"}

    with TestClient(app, client=("192.0.2.7", 50000)) as client:
        return [client.get(path, headers=headers).status_code for path in paths]


def test_each_request_becomes_one_event_with_its_route_template_and_uids(archive: Archive) -> None:
    requests(archive, f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/metadata")
    [event] = published(archive)
    assert event.route == "/dicom-web/studies/{study}/series/{series}/instances/{instance}/metadata"
    assert (event.study_instance_uid, event.series_instance_uid, event.sop_instance_uid) == (STUDY, SERIES, SOP)
    assert (event.method, event.status, event.tenant_id) == ("GET", 404, "default")
    assert event.client_address == "192.0.2.7"
    assert event.duration_ms >= 0


def test_the_tenant_comes_from_the_url(archive: Archive) -> None:
    requests(archive, "/radiology/dicom-web/studies")
    [event] = published(archive)
    assert (event.tenant_id, event.route) == ("radiology", "/{tenant}/dicom-web/studies")


def test_bytes_sent_and_status_are_what_the_client_received(archive: Archive) -> None:
    requests(archive, "/health", "/no/such/path")
    health, unmatched = published(archive)
    assert (health.status, health.bytes_sent) == (200, len(b'{"status":"ok"}'))
    assert (unmatched.status, unmatched.route) == (404, "<unmatched>")


def test_the_user_is_the_sub_left_in_request_state(archive: Archive) -> None:
    requests(archive, "/whoami", "/health")
    whoami, health = published(archive)
    assert (whoami.user_id, health.user_id) == ("alice", "")


def test_headers_are_never_recorded(archive: Archive) -> None:
    requests(archive, "/dicom-web/studies", Authorization="Bearer secret-token-42", Cookie="session=cookie-43")
    raw = archive.runtime.bus.subscribe("test", [ACCESS_LOG_QUEUE]).poll(10, 0.2)[0].value
    assert b"secret-token-42" not in raw and b"cookie-43" not in raw


def test_a_bus_failure_fails_no_request_and_the_events_wait_for_the_bus(
    archive: Archive, caplog: pytest.LogCaptureFixture
) -> None:
    real_bus = archive.runtime.bus
    archive.runtime.bus = support.FailingBus(archive)
    with caplog.at_level(logging.WARNING):
        assert requests(archive, "/health", "/health") == [200, 200]
    assert "access log not published" in caplog.text
    archive.runtime.bus = real_bus
    assert published(archive) == []


def test_the_publisher_keeps_failed_events_for_the_next_flush(archive: Archive) -> None:
    event = AccessLog("2026-01-01T00:00:00+00:00", "default", "", "", "GET", "/health", "", "", "", 200, 1, 0.1)
    publisher = AccessLogPublisher(support.FailingBus(archive), flush_seconds=60, max_queued=10)
    publisher.submit(event)
    publisher.flush()
    publisher.bus = archive.runtime.bus
    publisher.close()
    assert published(archive) == [event]


@pytest.mark.parametrize(
    ("path", "params", "template"),
    [
        ("/t/dicom-web/studies/1.2", {"tenant": "t", "study": "1.2"}, "/{tenant}/dicom-web/studies/{study}"),
        ("/dicom-web/studies/1/series/1", {"study": "1", "series": "1"}, "/dicom-web/studies/{study}/series/{series}"),
        ("/s/1/i/2/bulkdata/0028/7FE0", {"s": "1", "i": "2", "tag_path": "0028/7FE0"}, "/s/{s}/i/{i}/bulkdata/{tag_path}"),  # noqa: E501
        ("/studies/12/series/1", {"series": "1"}, "/studies/12/series/{series}"),
    ],
)
def test_the_route_template_puts_each_parameter_back_by_name(path: str, params: dict[str, str], template: str) -> None:
    assert route_template(path, params) == template
