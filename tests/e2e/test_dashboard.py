"""Done when: the dashboard, in headless Chromium, draws its charts with the API's numbers in human units,
names the most-read study by patient, description and date with a link to the viewer, changes its numbers
with the period chosen, does not count a 404 as a read, and lists conversion failures with their reason.

History older than the test (objects received and reads made ten days ago, a conversion failure) is loaded
into the archive's warehouse while it is stopped, as the loader would have loaded it then.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.synthetic import ct_series, write_part10
from dicomcloud.adapters.duckdb_warehouse import DuckDBWarehouse
from dicomcloud.ports.warehouse import TABLES, Batch

from .conftest import Archive, wait_until
from .dicom_clients import stow

pytestmark = pytest.mark.e2e

INSTANCES = 4
PATIENT_NAME, PATIENT_ID, DESCRIPTION = "Doe^Jane", "DASHBOARD", "CT chest for the dashboard"
READS, OLD_READS, NOT_FOUND = 3, 5, 2
OLD_OBJECTS, OLD_OBJECT_BYTES = 6, 2_000_000_000
MISSING_STUDY = "1.2.826.0.1.404"
FAILURE_REASON = "decoder failed: corrupt JPEG data"
# The charts' bar colours (dashboard.py) and the least pixels of each a drawn chart shows.
BAR_COLOURS = {"modalities": (54, 162, 235), "tenants": (255, 99, 132), "received": (75, 192, 192)}
MIN_PIXELS = 500
HUMAN_SIZE = r"\d+(\.\d+)? (B|KB|MB|GB|TB)"


def chromium(*args: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed (./dev test installs Debian's chromium)"
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--virtual-time-budget=20000", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def api(archive: Archive, name: str, **params: str) -> Any:
    response = httpx.get(f"{archive.base_url}/api/stats/{name}", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def text_of(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match, f"no #{element_id} in the page"
    return match.group(1)


def load_history(data: Path, study: str) -> None:
    """Ten days ago: OLD_OBJECTS objects of another study received, OLD_READS reads of `study`; an hour ago,
    a conversion failure."""
    old = (datetime.now(UTC) - timedelta(days=10)).isoformat()
    recent = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    objects = [
        TABLES["dicom_object_meta"].row(
            {"received_at": old, "tenant_id": "default", "study_instance_uid": "1.2.826.0.1.10",
             "series_instance_uid": "1.2.826.0.1.10.1", "sop_instance_uid": f"1.2.826.0.1.10.1.{n}",
             "file_size": OLD_OBJECT_BYTES, "source": "dimse"}
        )
        for n in range(OLD_OBJECTS)
    ]
    reads = [
        TABLES["wado_access_log"].row(
            {"accessed_at": old, "tenant_id": "default", "method": "GET", "route": "/studies/{study}/metadata",
             "study_instance_uid": study, "status": 200, "bytes_sent": 1000}
        )
        for _ in range(OLD_READS)
    ]
    failure = TABLES["transcode_failure"].row(
        {"failed_at": recent, "tenant_id": "default", "study_instance_uid": study, "sop_instance_uid": "1.2.826.0.1.9",
         "transfer_syntax": "1.2.840.10008.1.2.4.50", "target_syntax": "1.2.840.10008.1.2.1",
         "reason": FAILURE_REASON, "attempts": 3}
    )
    warehouse = DuckDBWarehouse(data / "warehouse.duckdb")
    try:
        warehouse.load(Batch("dicom_object_meta", "history", 0, 0, OLD_OBJECTS - 1), objects)
        warehouse.load(Batch("wado_access_log", "history", 0, 0, OLD_READS - 1), reads)
        warehouse.load(Batch("transcode_failure", "history", 0, 0, 0), [failure])
    finally:
        warehouse.close()


def test_the_dashboard_shows_people_what_is_stored_read_and_failed_over_a_period(
    archive_factory: Callable[..., Archive], tmp_path: Path
) -> None:
    archive = archive_factory("dashboard", {"DICOMCLOUD_WAREHOUSE__BATCH_SECONDS": "0.2"})
    parts = []
    for n, ds in enumerate(ct_series(INSTANCES, rows=32, columns=32, patient_id=PATIENT_ID, seed=3)):
        ds.PatientName, ds.StudyDescription, ds.StudyDate = PATIENT_NAME, DESCRIPTION, "20260314"
        write_part10(ds, tmp_path / f"{n}.dcm")
        parts.append((tmp_path / f"{n}.dcm").read_bytes())
    study = ds.StudyInstanceUID
    assert stow(archive.dicomweb_url(), parts).status_code == 200
    for _ in range(READS):
        assert httpx.get(f"{archive.dicomweb_url()}/studies/{study}/metadata", timeout=30).status_code == 200
    for _ in range(NOT_FOUND):
        assert httpx.get(f"{archive.dicomweb_url()}/studies/{MISSING_STUDY}/metadata", timeout=30).status_code == 404
    wait_until(
        lambda: api(archive, "requests")[0]["failed"] >= NOT_FOUND
        and api(archive, "summary")["totals"]["instances"] == INSTANCES,
        60,
        "the warehouse to hold the instances and the requests",
    )
    archive.stop()
    load_history(archive.data, study)
    archive.start()

    week, everything = api(archive, "summary", range="7d"), api(archive, "summary", range="all")
    assert week["totals"] == everything["totals"]
    assert (week["received"]["instances"], everything["received"]["instances"]) == (INSTANCES, INSTANCES + OLD_OBJECTS)
    assert (week["requests"]["reads"], everything["requests"]["reads"]) == (READS, READS + OLD_READS)
    assert week["requests"]["failed"] == NOT_FOUND
    read_studies = {r["study_instance_uid"] for r in api(archive, "most_read_studies", range="all")}
    assert read_studies == {study}, "a 404 on a study that does not exist is not a read of it"

    url = f"{archive.base_url}/dashboard"
    pages = {period: chromium("--dump-dom", f"{url}?range={period}") for period in ("7d", "all")}
    for period, dom in pages.items():
        assert 'data-ready="true"' in dom, (period, re.findall(r'<p id="error">(.*?)</p>', dom))
        assert text_of(dom, "instances") == str(INSTANCES)
        assert re.fullmatch(HUMAN_SIZE, text_of(dom, "size")), text_of(dom, "size")
        assert re.fullmatch(HUMAN_SIZE + " per day", text_of(dom, "rate-size")), text_of(dom, "rate-size")
        assert text_of(dom, "failed") == str(NOT_FOUND)
        assert "Doe, Jane" in dom and DESCRIPTION in dom and "2026-03-14" in dom
        assert f'href="/viewer/viewer?StudyInstanceUIDs={study}"' in dom
        assert MISSING_STUDY not in dom
        assert FAILURE_REASON in dom and "JPEG Baseline (Process 1)" in dom and "Explicit VR Little Endian" in dom
    assert text_of(pages["7d"], "reads") == str(READS)
    assert text_of(pages["all"], "reads") == str(READS + OLD_READS)
    assert text_of(pages["7d"], "received-instances") == f"{INSTANCES} instances"
    assert text_of(pages["all"], "received-instances") == f"{INSTANCES + OLD_OBJECTS} instances"
    assert text_of(pages["all"], "received-size").endswith(" GB")
    # Nouns agree with their numbers: the period's one study, then two; the rate in either form.
    assert (text_of(pages["7d"], "received-studies"), text_of(pages["all"], "received-studies")) == (
        "1 study", "2 studies"
    )
    for dom in pages.values():
        rate = text_of(dom, "rate-instances")
        number = rate.split(" ")[0]
        assert rate == f"{number} {'instance' if number == '1' else 'instances'} per day", rate

    shot = tmp_path / "dashboard.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,1300", f"{url}?range=all")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    for chart, colour in BAR_COLOURS.items():
        drawn = int((np.abs(pixels - np.array(colour)).sum(axis=2) < 30).sum())
        assert drawn >= MIN_PIXELS, f"the {chart} chart shows {drawn} pixels of its bars"
