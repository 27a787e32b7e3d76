"""Operations on the real archive: `dicomcloud up` with an ops port answers /health, /ready and /metrics,
its metrics follow real traffic, and with `--log-format json` every log line is one JSON object."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import httpx
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from .conftest import AE_TITLE, Archive, free_port, wait_until

# What `dicomcloud up` prints on stdout once it listens (the test log holds stdout and stderr).
ANNOUNCEMENT = "DICOMweb at "


@pytest.fixture(scope="module")
def ops_archive(archive_factory: Callable[..., Archive]) -> tuple[Archive, str]:
    port = free_port()
    archive = archive_factory("ops", {"DICOMCLOUD_OPS__PORT": str(port), "DICOMCLOUD_LOG_FORMAT": "json"})
    return archive, f"http://127.0.0.1:{port}"


def samples(url: str, name: str, **labels: str) -> list[float]:
    """The values of the samples named `name` with these labels in the Prometheus text at `url`."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return [
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def metric(url: str, name: str, **labels: str) -> float:
    return sum(samples(url, name, **labels))


def test_up_with_an_ops_port_is_live_and_ready_with_every_check(ops_archive: tuple[Archive, str]) -> None:
    _, ops = ops_archive
    assert httpx.get(f"{ops}/health", timeout=30).json() == {"status": "ok"}
    ready = httpx.get(f"{ops}/ready", timeout=30)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert set(ready.json()["checks"]) == {"index", "bus", "storage", "cache", "dimse", "http"}


def test_wado_server_port_is_ready_too(ops_archive: tuple[Archive, str]) -> None:
    archive, _ = ops_archive
    assert httpx.get(f"{archive.base_url}/ready", timeout=30).status_code == 200


def test_a_stow_is_counted_as_request_and_processed_event_and_the_lag_drains(ops_archive: tuple[Archive, str]) -> None:
    archive, ops = ops_archive
    stow = {"method": "POST", "route": "/dicom-web/studies"}
    indexed = {"service": "consumer", "topic": "storage_queue"}
    requests_before = metric(ops, "dicomcloud_http_requests_total", **stow)
    events_before = metric(ops, "dicomcloud_events_processed_total", **indexed)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID = (generate_uid() for _ in range(3))
    ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
    archive.client().store_instances([ct])
    assert metric(ops, "dicomcloud_http_requests_total", status="200", **stow) >= 1
    assert metric(ops, "dicomcloud_http_requests_total", **stow) == requests_before + 1
    wait_until(
        lambda: metric(ops, "dicomcloud_events_processed_total", **indexed) > events_before,
        120,
        "the STOW's storage event counted as processed",
    )
    wait_until(
        lambda: samples(ops, "dicomcloud_consumer_lag", group="wado-consumer", topic="storage_queue") == [0.0],
        120,
        "the indexing consumer's lag measured and back to 0",
    )


def test_a_c_echo_is_counted_by_command_and_status(ops_archive: tuple[Archive, str]) -> None:
    archive, ops = ops_archive
    echo = {"command": "C-ECHO", "status": "0x0000"}
    before = metric(ops, "dicomcloud_dimse_operations_total", **echo)
    subprocess.run(["echoscu", "-aec", AE_TITLE, "127.0.0.1", str(archive.dimse_port)], check=True, timeout=60)
    assert metric(ops, "dicomcloud_dimse_operations_total", **echo) == before + 1


def test_every_log_line_is_one_json_object(ops_archive: tuple[Archive, str]) -> None:
    archive, ops = ops_archive
    httpx.get(f"{ops}/ready", timeout=30)
    assert archive.log_path is not None
    complete = archive.log_path.read_text().rpartition("\n")[0]
    lines = [line for line in complete.splitlines() if not line.startswith(ANNOUNCEMENT)]
    assert len(lines) > 3
    for line in lines:
        assert isinstance(json.loads(line), dict), line
