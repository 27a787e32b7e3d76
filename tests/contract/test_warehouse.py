"""The warehouse contract, run against every adapter: labelled loads, upserts, logs and statistics."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from dicomcloud.errors import InvalidInput
from dicomcloud.events import (
    AccessLog,
    DicomImageMeta,
    DicomStateMeta,
    DimseRefusal,
    StorageEvent,
    TranscodeFailure,
)
from dicomcloud.ports.warehouse import STATISTICS, TABLES, Batch, Warehouse

STUDY, SERIES = "1.2.826.0.9.1", "1.2.826.0.9.1.1"
_offsets = iter(range(10_000, 10**9, 100))


def batch(table: str, rows: int = 1) -> Batch:
    """A batch at a fresh bus position of one topic per table."""
    first = next(_offsets)
    return Batch(table=table, topic=f"t_{table}", partition=0, first_offset=first, last_offset=first + rows - 1)


def image_row(sop: str, *, size: int = 100, updated: str = "2026-01-02T03:04:05.000+00:00") -> dict[str, Any]:
    event = DicomImageMeta(
        tenant_id="default", sop_instance_uid=sop, study_instance_uid=STUDY, series_instance_uid=SERIES,
        values=DicomImageMeta.catalogue_values({
            "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "InstanceNumber": 1,
            "TransferSyntaxUID": "1.2.840.10008.1.2.1", "Rows": 64, "Columns": 64, "BitsAllocated": 16,
            "NumberOfFrames": None, "PhotometricInterpretation": "MONOCHROME2", "ContentDate": "",
            "ContentTime": "", "AcquisitionDateTime": "", "ImageType": "ORIGINAL\\PRIMARY",
        }),
        file_path=f"default/{STUDY}/{SERIES}/{sop}.dcm", file_size=size, sha256="0" * 64, updated_at=updated,
    )
    return TABLES["dicom_image_meta"].row(event.row())


def state_row(modality: str = "CT", updated: str = "2026-01-02T03:04:05.000+00:00") -> dict[str, Any]:
    event = DicomStateMeta(
        tenant_id="default", study_instance_uid=STUDY, series_instance_uid=SERIES,
        values=DicomStateMeta.catalogue_values({"Modality": modality, "SeriesNumber": 1, "PatientName": "Doe^Jane"}),
        series_related_instances=2, updated_at=updated,
    )
    return TABLES["dicom_state_meta"].row(event.row())


def object_row(
    sop: str, calling_ae: str = "MODALITY1", received_at: str = "2026-01-02T03:04:05.123456+00:00"
) -> dict[str, Any]:
    event = StorageEvent(
        tenant_id="default", transfer_syntax="1.2.840.10008.1.2.1", sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_instance_uid=STUDY, series_instance_uid=SERIES,
        patient_id="P1", file_name=f"{sop}.dcm", file_size=100, file_path=f"default/{STUDY}/{SERIES}/{sop}.dcm",
        sha256="0" * 64, source="dimse", calling_ae=calling_ae, called_ae="DICOMCLOUD",
        received_at=received_at,
    )
    return TABLES["dicom_object_meta"].row(event.row())


def access_row(
    route: str, duration_ms: float, study: str = STUDY, *, status: int = 200, at: str = "2026-01-02T03:04:05+00:00"
) -> dict[str, Any]:
    event = AccessLog(
        accessed_at=at, tenant_id="default", user_id="", client_address="127.0.0.1",
        method="GET", route=route, study_instance_uid=study, series_instance_uid="", sop_instance_uid="",
        status=status, bytes_sent=1000, duration_ms=duration_ms,
    )
    return TABLES["wado_access_log"].row(event.row())


def failure_row(sop: str) -> dict[str, Any]:
    event = TranscodeFailure(
        tenant_id="default", study_instance_uid=STUDY, series_instance_uid=SERIES, sop_instance_uid=sop,
        transfer_syntax="1.2.840.10008.1.2.4.50", target_syntax="1.2.840.10008.1.2.1", reason="decoder failed",
        attempts=3, failed_at="2026-01-02T03:04:05+00:00",
    )
    return TABLES["transcode_failure"].row(event.row())


def refusal_row(calling_ae: str, operation: str, refused_at: str) -> dict[str, Any]:
    event = DimseRefusal(
        refused_at=refused_at, tenant_id="", calling_ae=calling_ae, called_ae="DICOMCLOUD",
        client_address="192.0.2.7", operation=operation, status=0, reason="not a known peer",
    )
    return TABLES["dimse_refusal"].row(event.row())


def test_a_loaded_batch_is_counted(warehouse: Warehouse) -> None:
    rows = [object_row(f"1.2.3.{n}") for n in range(5)]
    assert warehouse.load(batch("dicom_object_meta", 5), rows) is True
    assert warehouse.count("dicom_object_meta") == 5


def test_a_replayed_batch_is_not_loaded_twice(warehouse_factory: Callable[[], Warehouse]) -> None:
    warehouse = warehouse_factory()
    replayed = batch("dicom_object_meta", 3)
    rows = [object_row(f"1.2.4.{n}") for n in range(3)]
    assert warehouse.load(replayed, rows) is True
    warehouse = warehouse_factory()  # the loader crashed before committing and came back
    assert warehouse.load(replayed, rows) is False
    assert warehouse.count("dicom_object_meta") == 3


def test_loaded_until_is_the_highest_offset_loaded_per_topic_partition(warehouse: Warehouse) -> None:
    assert warehouse.loaded_until("t_wado_access_log", 0) == -1
    first, second = batch("wado_access_log", 2), batch("wado_access_log", 2)
    warehouse.load(first, [access_row("/a", 1.0), access_row("/a", 2.0)])
    warehouse.load(second, [access_row("/a", 1.0), access_row("/a", 2.0)])
    assert warehouse.loaded_until("t_wado_access_log", 0) == second.last_offset
    assert warehouse.loaded_until("t_wado_access_log", 1) == -1


def test_unique_tables_keep_one_row_per_key_with_the_newest_values(warehouse: Warehouse) -> None:
    warehouse.load(batch("dicom_image_meta"), [image_row("1.2.5.1", size=100)])
    warehouse.load(batch("dicom_image_meta", 2), [image_row("1.2.5.1", size=200, updated="2026-01-03T00:00:00+00:00"),
                                                  image_row("1.2.5.1", size=300, updated="2026-01-03T00:00:01+00:00")])
    assert warehouse.count("dicom_image_meta") == 1
    assert warehouse.statistics("totals")[0]["bytes"] == 300


def test_a_batch_of_a_loader_batch_size_loads_every_row(warehouse: Warehouse) -> None:
    """The loader's default batch (1,000 rows), some keys again in it and some already loaded."""
    warehouse.load(batch("dicom_image_meta"), [image_row("1.2.7.0", size=1)])
    images = [
        image_row(f"1.2.7.{n % 900}", size=10, updated=f"2026-01-03T00:00:{n // 900:02}+00:00") for n in range(1000)
    ]
    warehouse.load(batch("dicom_image_meta", len(images)), images)
    logs = [access_row(f"/r{n}", 1.0) for n in range(1000)]
    warehouse.load(batch("wado_access_log", len(logs)), logs)
    assert warehouse.count("dicom_image_meta") == 900
    assert warehouse.statistics("totals")[0]["bytes"] == 900 * 10
    assert warehouse.count("wado_access_log") == 1000


def test_an_older_row_never_replaces_a_newer_one(warehouse: Warehouse) -> None:
    warehouse.load(batch("dicom_image_meta"), [image_row("1.2.6.1", size=500, updated="2026-02-01T00:00:00+00:00")])
    warehouse.load(batch("dicom_image_meta"), [image_row("1.2.6.1", size=100, updated="2026-01-01T00:00:00+00:00")])
    assert warehouse.statistics("totals")[0]["bytes"] == 500


def test_a_refused_row_loads_nothing_and_records_no_label(warehouse: Warehouse) -> None:
    bad = access_row("/a", 1.0)
    bad["route"] = None
    refused = batch("wado_access_log", 2)
    with pytest.raises(InvalidInput):
        warehouse.load(refused, [access_row("/a", 1.0), bad])
    assert warehouse.count("wado_access_log") == 0
    assert warehouse.loaded_until(refused.topic, 0) == -1
    assert warehouse.load(refused, [access_row("/a", 1.0)]) is True


def test_a_value_of_the_wrong_type_is_refused(warehouse: Warehouse) -> None:
    bad = access_row("/a", 1.0)
    bad["status"] = "not a number"
    with pytest.raises(InvalidInput):
        warehouse.load(batch("wado_access_log"), [bad])


def test_stored_statistics_count_studies_series_instances_and_bytes(warehouse: Warehouse) -> None:
    warehouse.load(batch("dicom_state_meta"), [state_row("MR")])
    warehouse.load(batch("dicom_image_meta", 3), [image_row(f"1.2.7.{n}", size=10) for n in range(3)])
    assert warehouse.statistics("totals") == [{"studies": 1, "series": 1, "instances": 3, "bytes": 30}]
    assert warehouse.statistics("modalities") == [
        {"modality": "MR", "studies": 1, "series": 1, "instances": 3, "bytes": 30}
    ]
    assert warehouse.statistics("tenants")[0]["tenant_id"] == "default"
    assert warehouse.statistics("storage")[0] == {
        "tenant_id": "default", "modality": "MR", "studies": 1, "series": 1, "instances": 3, "bytes": 30
    }


def test_log_statistics_rank_senders_reads_endpoints_and_failures(warehouse: Warehouse) -> None:
    warehouse.load(batch("dicom_object_meta", 3), [object_row("1.2.8.1", "BUSY"), object_row("1.2.8.2", "BUSY"),
                                                   object_row("1.2.8.3", "QUIET")])
    warehouse.load(batch("wado_access_log", 3), [access_row("/slow", 90.0), access_row("/fast", 1.0),
                                                 access_row("/fast", 3.0, study="1.2.8.9")])
    warehouse.load(batch("transcode_failure", 2), [failure_row("1.2.8.1"), failure_row("1.2.8.2")])
    warehouse.load(batch("dicom_state_meta"), [state_row("CT")])
    assert [r["calling_ae"] for r in warehouse.statistics("busiest_ae_titles")] == ["BUSY", "QUIET"]
    day = warehouse.statistics("received_per_day")[0]
    assert (day["received_date"], day["studies"], day["instances"], day["objects"]) == ("2026-01-02", 1, 3, 3)
    hour = warehouse.statistics("received_per_hour")[0]
    assert (hour["received_date"], hour["received_hour"], hour["instances"]) == ("2026-01-02", 3, 3)
    assert warehouse.statistics("most_read_studies")[0] == {
        "tenant_id": "default", "study_instance_uid": STUDY, "patient_name": "Doe^Jane", "patient_id": None,
        "study_description": None, "study_date": None, "read_count": 2, "bytes_sent": 2000,
    }
    slowest = warehouse.statistics("slowest_endpoints")
    assert [(r["route"], r["requests"], r["mean_ms"]) for r in slowest] == [("/slow", 1, 90.0), ("/fast", 2, 2.0)]
    (failures,) = warehouse.statistics("transcode_failures")
    assert failures["failures"] == 2 and failures["reason"] == "decoder failed"
    assert (failures["transfer_syntax"], failures["target_syntax"]) == ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1")
    assert str(failures["last_failed_at"]).startswith("2026-01-02")


def test_log_statistics_count_from_since_and_failed_requests_are_not_reads(warehouse: Warehouse) -> None:
    old, new = "2026-01-02T03:04:05+00:00", "2026-03-01T10:00:00+00:00"
    warehouse.load(batch("dicom_object_meta", 3), [
        object_row("1.2.9.1", received_at=old), object_row("1.2.9.2", received_at=new),
        object_row("1.2.9.3", received_at=new),
    ])
    warehouse.load(batch("wado_access_log", 4), [
        access_row("/studies/{study}", 1.0, at=old), access_row("/studies/{study}", 1.0, at=new),
        access_row("/studies/{study}", 1.0, study="1.2.404", status=404, at=new),
        access_row("/studies/{study}", 1.0, study="1.2.500", status=500, at=new),
    ])
    since = datetime(2026, 2, 1)
    received = warehouse.statistics("received", since=since)[0]
    assert (received["instances"], received["bytes"]) == (2, 200)
    assert str(received["first_received_at"]).startswith("2026-03-01")
    assert warehouse.statistics("received")[0]["instances"] == 3
    requests = warehouse.statistics("requests", since=since)
    assert requests == [{"requests": 3, "reads": 1, "failed": 2, "bytes_sent": 3000}]
    assert warehouse.statistics("requests")[0]["reads"] == 2
    reads = warehouse.statistics("most_read_studies", since=since)
    assert [(r["study_instance_uid"], r["read_count"]) for r in reads] == [(STUDY, 1)]
    assert [r["instances"] for r in warehouse.statistics("received_per_day", since=since)] == [2]


def test_dimse_refusals_are_counted_per_peer_address_and_operation(warehouse: Warehouse) -> None:
    rows = [
        refusal_row("INTRUDER", "associate", "2026-01-02T03:04:05.000+00:00"),
        refusal_row("INTRUDER", "associate", "2026-01-02T03:04:06.500+00:00"),
        refusal_row("READER", "store", "2026-01-02T03:04:07.000+00:00"),
    ]
    warehouse.load(batch("dimse_refusal", 3), rows)
    refusals = warehouse.statistics("dimse_refusals")
    assert [(r["calling_ae"], r["client_address"], r["operation"], r["refusals"]) for r in refusals] == [
        ("INTRUDER", "192.0.2.7", "associate", 2),
        ("READER", "192.0.2.7", "store", 1),
    ]
    assert str(refusals[0]["last_refused_at"]).startswith("2026-01-02")


def test_every_statistic_runs_on_an_empty_warehouse(warehouse: Warehouse) -> None:
    for name in STATISTICS:
        assert isinstance(warehouse.statistics(name, limit=5), list)


def test_an_unknown_statistic_or_table_is_invalid_input(warehouse: Warehouse) -> None:
    with pytest.raises(InvalidInput):
        warehouse.statistics("drop table x")
    with pytest.raises(InvalidInput):
        warehouse.count("loaded_batch; --")
