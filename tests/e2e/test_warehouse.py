"""Done when: after ingesting pydicom's files and a generated study through `dicomcloud up`, the DuckDB
warehouse holds one image row per instance, one state row per series, one receive-log row per object
received and access-log rows for the requests made, matching the index."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from bench.synthetic import ct_series, write_part10

from .conftest import AE_TITLE, Archive, wait_until
from .dicom_clients import pynetdicom_store, stow
from .test_pydicom_files import COMPLETE, tenant_groups

pytestmark = pytest.mark.e2e

GENERATED = 5
READS = 3
STUDY = "1.2.826.0.6.1"


def qido_count(archive: Archive, tenant: str | None, level: str) -> int:
    response = httpx.get(f"{archive.dicomweb_url(tenant)}/{level}", params={"limit": "100000"}, timeout=30)
    assert response.status_code in (200, 204), response.text
    return len(response.json()) if response.status_code == 200 else 0


def stats(archive: Archive, name: str) -> Any:
    response = httpx.get(f"{archive.base_url}/api/stats/{name}", params={"limit": "10000"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_warehouse_matches_the_index_after_ingest_and_reads(
    archive_factory: Callable[..., Archive], tmp_path: Path
) -> None:
    archive = archive_factory("warehouse", {"DICOMCLOUD_WAREHOUSE__BATCH_SECONDS": "0.2"})
    tenants: list[str | None] = []
    received = 0
    for i, group in enumerate(tenant_groups(COMPLETE)):
        tenant = f"files{i}"
        response = stow(archive.dicomweb_url(tenant), [p.read_bytes() for p in group])
        assert response.status_code == 200, response.text
        tenants.append(tenant)
        received += len(group)
    generated = []
    for n, ds in enumerate(ct_series(GENERATED, rows=32, columns=32, patient_id="WAREHOUSE", study_uid=STUDY, seed=11)):
        write_part10(ds, tmp_path / f"{n}.dcm")
        generated.append(tmp_path / f"{n}.dcm")
    assert pynetdicom_store(archive.dimse_port, AE_TITLE, generated) == [0] * GENERATED
    tenants.append(None)
    received += GENERATED

    for tenant in tenants:
        wait_until(lambda t=tenant: qido_count(archive, t, "instances") > 0, 60, f"tenant {tenant} indexed")
    instances = sum(qido_count(archive, t, "instances") for t in tenants)
    series = sum(qido_count(archive, t, "series") for t in tenants)
    for _ in range(READS):
        assert httpx.get(f"{archive.dicomweb_url()}/studies/{STUDY}/metadata", timeout=30).status_code == 200

    def loaded() -> bool:
        totals = stats(archive, "totals")[0]
        objects = sum(day["objects"] for day in stats(archive, "received_per_day"))
        reads = [r["read_count"] for r in stats(archive, "most_read_studies") if r["study_instance_uid"] == STUDY]
        return (totals["instances"], totals["series"], objects, reads) == (instances, series, received, [READS])

    wait_until(loaded, 120, "the warehouse to hold what the index holds")
    senders = stats(archive, "busiest_ae_titles")
    assert [(s["calling_ae"], s["objects"]) for s in senders] == [("TESTSCU", GENERATED)]
    archive.stop()

    with duckdb.connect(str(archive.data / "warehouse.duckdb"), read_only=True) as db:

        def one(sql: str) -> Any:
            row = db.execute(sql).fetchone()
            assert row is not None
            return row[0]

        assert one("SELECT COUNT(*) FROM dicom_image_meta") == instances
        assert one("SELECT COUNT(DISTINCT (tenant_id, sop_instance_uid)) FROM dicom_image_meta") == instances
        assert one("SELECT COUNT(*) FROM dicom_state_meta") == series
        assert one("SELECT COUNT(*) FROM dicom_object_meta") == received
        assert one("SELECT COUNT(*) FROM dicom_object_meta WHERE source = 'dimse'") == GENERATED
        metadata_reads = one(
            "SELECT COUNT(*) FROM wado_access_log WHERE route = '/dicom-web/studies/{study}/metadata'"
            f" AND study_instance_uid = '{STUDY}' AND status = 200"
        )
        assert metadata_reads == READS
        assert one("SELECT COUNT(*) FROM wado_access_log WHERE method = 'POST' AND status = 200") == len(tenants) - 1
