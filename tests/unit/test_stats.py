"""Statistics: `/api/stats/…` and `dicomcloud stats` show what the warehouse holds."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import support
from fastapi.testclient import TestClient

from dicomcloud import cli
from dicomcloud.archive.core import Archive
from dicomcloud.archive.stats import format_table
from dicomcloud.ports.warehouse import STATISTICS, TABLES, Batch
from dicomcloud.web.app import create_app

STUDY, SERIES = "1.2.826.0.5.1", "1.2.826.0.5.1.1"


def fill(archive: Archive) -> None:
    """Two CT instances of 1000 and 3000 bytes in one series of the default tenant."""
    state = TABLES["dicom_state_meta"].row(
        {"tenant_id": "default", "study_instance_uid": STUDY, "series_instance_uid": SERIES, "modality": "CT"}
    )
    images = [
        TABLES["dicom_image_meta"].row(
            {"tenant_id": "default", "study_instance_uid": STUDY, "series_instance_uid": SERIES,
             "sop_instance_uid": f"{SERIES}.{n}", "file_size": size}
        )
        for n, size in enumerate((1000, 3000))
    ]
    archive.runtime.warehouse.load(Batch("dicom_state_meta", "s", 0, 0, 0), [state])
    archive.runtime.warehouse.load(Batch("dicom_image_meta", "i", 0, 0, 1), images)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    opened = support.make_archive(tmp_path / "data")
    fill(opened)
    yield opened
    opened.close()


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive)) as test_client:
        yield test_client


def test_the_summary_counts_studies_series_instances_and_bytes_per_tenant_and_modality(client: TestClient) -> None:
    body = client.get("/api/stats/summary").json()
    assert body["totals"] == {"studies": 1, "series": 1, "instances": 2, "bytes": 4000}
    assert body["tenants"] == [{"tenant_id": "default", "studies": 1, "series": 1, "instances": 2, "bytes": 4000}]
    assert body["modalities"] == [{"modality": "CT", "studies": 1, "series": 1, "instances": 2, "bytes": 4000}]


def test_every_statistic_is_served_as_json_rows(client: TestClient) -> None:
    assert client.get("/api/stats").json() == {"statistics": list(STATISTICS)}
    for name in STATISTICS:
        response = client.get(f"/api/stats/{name}", params={"limit": 5})
        assert response.status_code == 200, response.text
        assert isinstance(response.json(), list)


def test_a_range_bounds_what_was_received_and_read_and_a_failed_request_is_not_a_read(
    archive: Archive, client: TestClient
) -> None:
    now = datetime.now(UTC)
    ago = {name: (now - age).isoformat() for name, age in (("hour", timedelta(hours=1)), ("days", timedelta(days=10)))}
    objects = [
        TABLES["dicom_object_meta"].row(
            {"received_at": ago[when], "tenant_id": "default", "study_instance_uid": STUDY,
             "series_instance_uid": SERIES, "sop_instance_uid": f"{SERIES}.{n}", "file_size": 1_500_000_000}
        )
        for n, when in enumerate(("hour", "days"))
    ]
    reads = [
        TABLES["wado_access_log"].row(
            {"accessed_at": ago[when], "tenant_id": "default", "method": "GET", "route": "/studies/{study}",
             "study_instance_uid": study, "status": status}
        )
        for when, study, status in (("hour", STUDY, 200), ("hour", "1.2.404", 404), ("days", STUDY, 200))
    ]
    archive.runtime.warehouse.load(Batch("dicom_object_meta", "o", 0, 0, 1), objects)
    archive.runtime.warehouse.load(Batch("wado_access_log", "a", 0, 0, 2), reads)

    day = client.get("/api/stats/summary", params={"range": "24h"}).json()
    assert (day["received"]["instances"], day["received"]["bytes_per_day"]) == (1, 1_500_000_000)
    assert (day["requests"]["reads"], day["requests"]["failed"]) == (1, 1)
    month = client.get("/api/stats/summary", params={"range": "30d"}).json()
    assert (month["received"]["instances"], month["received"]["bytes_per_day"]) == (2, 100_000_000)
    assert month["requests"]["reads"] == 2
    assert month["totals"] == day["totals"]  # what is stored does not depend on the range
    most_read = client.get("/api/stats/most_read_studies", params={"range": "24h"}).json()
    assert [(r["study_instance_uid"], r["read_count"]) for r in most_read] == [(STUDY, 1)]
    assert client.get("/api/stats/summary", params={"range": "1y"}).status_code == 400


def test_a_transcode_failure_names_its_syntaxes(archive: Archive, client: TestClient) -> None:
    failure = TABLES["transcode_failure"].row(
        {"failed_at": datetime.now(UTC).isoformat(), "tenant_id": "default", "study_instance_uid": STUDY,
         "sop_instance_uid": f"{SERIES}.1", "transfer_syntax": "1.2.840.10008.1.2.4.50",
         "target_syntax": "1.2.840.10008.1.2.1", "reason": "cannot decode"}
    )
    archive.runtime.warehouse.load(Batch("transcode_failure", "f", 0, 0, 0), [failure])
    (row,) = client.get("/api/stats/transcode_failures", params={"range": "7d"}).json()
    assert (row["transfer_syntax_name"], row["target_syntax_name"], row["reason"]) == (
        "JPEG Baseline (Process 1)", "Explicit VR Little Endian", "cannot decode"
    )


def test_an_unknown_statistic_is_not_found(client: TestClient) -> None:
    assert client.get("/api/stats/nope").status_code == 404
    assert client.get("/api/stats/totals", params={"limit": 0}).status_code == 400


def test_dicomcloud_stats_prints_the_summary_as_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = support.make_archive(tmp_path / "data")
    fill(archive)
    archive.close()
    with pytest.raises(SystemExit) as exited:
        cli.main(["stats", "--data", str(tmp_path / "data")])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "totals\n  studies  series  instances  bytes\n" in out
    assert "       1       1          2   4000" in out
    assert "modalities" in out and "CT" in out


def test_a_table_aligns_numbers_right_and_text_left() -> None:
    table = format_table("t", [{"name": "a", "n": 10}, {"name": "bbb", "n": 2.5}])
    assert table == "t\n  name    n\n  ----  ---\n  a      10\n  bbb   2.5\n"
